"""Indexing line-based input: one process against every rank indexing a share of the bytes.

Generates N AFLOW-like entries (bench/aflow_like.py) once, then times, interleaved ``--repeats`` times
(medians): the index made by one process (:meth:`cloudvox.io.sources.LineIndex.serial`, one pass) and by
K ranks under ``mpirun -n K`` (:func:`hpc.featurize.index_in_pieces`: two passes over each rank's share,
then the entries exchanged). Reports seconds, input MB/s, the index's bytes per record, and the bytes a
per-record index would hold (22 per record: what every rank held before).
Usage: python bench/line_index.py [--n 300000] [--ranks 1 2] [--repeats 3] [--workdir out/line_index]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, mpi_env  # noqa: E402


def rank_job(path: str, stride: int) -> None:
    """Under mpirun: index ``path`` in pieces; rank 0 prints seconds (the slowest rank's) and entries."""
    from mpi4py import MPI

    from hpc.featurize import index_in_pieces
    comm = MPI.COMM_WORLD
    comm.Barrier()
    t = time.perf_counter()
    index = index_in_pieces(comm, stride, [Path(path)], False, None)
    seconds = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
    if comm.Get_rank() == 0:
        print(json.dumps(dict(seconds=seconds, n=index.n, entries=len(index.start))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "line_index"))
    ap.add_argument("--rank-job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_job:
        return rank_job(args.rank_job, args.stride)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"aflow_like_{args.n}.jsonl"
    if not src.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "aflow_like.py"), "--n", str(args.n), "--out", str(src)],
                       check=True)
    from cloudvox.io.sources import LineIndex
    mb = src.stat().st_size / 1e6
    serial, pieces = [], {k: [] for k in args.ranks}
    for _ in range(args.repeats):
        t = time.perf_counter()
        index = LineIndex.serial([src], False, None, args.stride)
        serial.append(time.perf_counter() - t)
        for k in args.ranks:
            cmd = ["mpirun", "-n", str(k), sys.executable, __file__, "--rank-job", str(src), "--stride", str(args.stride)]
            out = subprocess.run(cmd, env=mpi_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            assert got["n"] == index.n and got["entries"] == len(index.start)
            pieces[k].append(got["seconds"])
    common = dict(n=index.n, input_MB=round(mb, 1), stride=args.stride, repeats=args.repeats)
    emit("line_index", "one_process", statistics.median(serial), "s", MBps=mb / statistics.median(serial), **common)
    for k, times in pieces.items():
        emit("line_index", "in_pieces", statistics.median(times), "s", ranks=k, MBps=mb / statistics.median(times),
             **common)
    nbytes = index.file_of.nbytes + index.start.nbytes + index.number.nbytes
    emit("line_index", "index_bytes_per_record", nbytes / index.n, "B", per_record_index=22, **common)


if __name__ == "__main__":
    main()
