"""Does computing in lockstep slow the compute itself? Two ranks run the same fixed VoxelNet forward+backward
(demo network, a random batch of 32 x 8 x 16^3) in blocks: ``free`` (no communication: each rank at its own
pace, as the independent pair of bench/train_scaling.py) and ``lockstep`` (a barrier before each iteration:
both ranks start every forward together, as synchronous data parallelism does). The timed span excludes the
barrier, so any difference is the compute slowing when both cores do the same phase at the same moment.
Blocks alternate (free, lockstep, ...) so that drift hits both modes alike. Run with
``mpirun -n 2 python bench/lockstep.py``; one JSON line per rank and mode (median ms per iteration), and the
ratio lockstep / free.
Usage: mpirun -n 2 python bench/lockstep.py [--blocks 6] [--iters 40]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    from mpi4py import MPI
    import torch
    from cloudvox.models.voxelnet import VoxelNet
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    torch.manual_seed(comm.rank)
    net = VoxelNet(8, 16, widths=[16, 16], pools=[2, 0], hidden=[32, 8])
    x = torch.randn(32, 8, 16, 16, 16)
    times = {"free": [], "lockstep": []}
    for block in range(2 * args.blocks):
        mode = ("free", "lockstep")[block % 2]
        comm.Barrier()
        for _ in range(args.iters):
            if mode == "lockstep":
                comm.Barrier()
            t = time.perf_counter()
            net.zero_grad()
            net(x).sum().backward()
            times[mode].append(time.perf_counter() - t)
    skip = args.iters // 4  # each block's first iterations: warm-up after a mode change
    med = {m: 1e3 * statistics.median(v[k] for k in range(len(v)) if k % args.iters >= skip) for m, v in times.items()}
    for mode, ms in med.items():
        emit("lockstep", "compute_ms_per_iteration", ms, "ms", mode=mode, rank=comm.rank, ranks=comm.size)
    emit("lockstep", "lockstep_over_free", med["lockstep"] / med["free"], "ratio", rank=comm.rank, ranks=comm.size)


if __name__ == "__main__":
    main()
