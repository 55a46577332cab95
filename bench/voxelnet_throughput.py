"""VoxelNet training throughput on CPU: cloudvox's pipeline next to a dense-channel pipeline that re-bins
every sample with the original reference code, in the same run, same model and batch size.

cloudvox: stored reciprocal sets of each structure's own elements, binned for the whole batch under random
rotations with torch (cloudvox.binning), first layer over the present channels and occupied voxels only
(SparseChannelConv3d: on CPU the compiled kernel scatters each sample into a cache-resident buffer and max-pools
it in the same pass; the backward works from the pooled gradient and the argmax).
dense reference: every sample re-featurized by ../shared/bench/original_voxelnet_reference.py (one channel
per element of the data set, float32), then the same VoxelNet with a dense first layer.
Timed in alternating rounds (median step time of each). Threads: torch's default, or OMP_NUM_THREADS.
Like ``cloudvox train``, the process first keeps large freed blocks for reuse (cloudvox.training.process.keep_freed_memory),
which both pipelines share; ``--no-keep-freed-memory`` leaves glibc's default.
Usage: python bench/voxelnet_throughput.py [--data out/perovskites.h5] [--rounds 5] [--batch-size 32]
The feature file must be the per-element featurization of the shared perovskites (jobs/configs/perovskites.yaml).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, features, load_reference, shared_dir  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cloudvox import properties as K  # noqa: E402
from cloudvox.data import VoxelDataset  # noqa: E402
from cloudvox.models.voxelnet import VoxelNet  # noqa: E402
from cloudvox.models.registry import VoxelTask  # noqa: E402
from cloudvox.training.process import keep_freed_memory
from cloudvox.training.step import step_generator  # noqa: E402


def time_rounds(steps, counts, rounds):
    """Median seconds per step of each pipeline, timed in alternating rounds (this machine is shared and noisy:
    both see the same background load). The first step of each pipeline warms up and is not timed."""
    for step in steps:
        step(0)
    times = [[] for _ in steps]
    k = 1
    for _ in range(rounds):
        for j, (step, count) in enumerate(zip(steps, counts)):
            for _ in range(count):
                t = time.perf_counter()
                step(k)
                times[j].append(time.perf_counter() - t)
                k += 1
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="default: jobs/configs/perovskites.yaml's output, made if absent")
    ap.add_argument("--steps", type=int, default=8, help="cloudvox steps per round")
    ap.add_argument("--reference-steps", type=int, default=2, help="reference steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false")
    args = ap.parse_args()
    args.data = args.data or str(features("jobs/configs/perovskites.yaml"))
    kept = keep_freed_memory() if args.keep_freed_memory else False
    torch.manual_seed(0)
    ds = VoxelDataset(args.data, np.arange(len(VoxelDataset(args.data, [], None).ff.ids)), None, "reciprocal")
    ff = ds.ff
    species = list(ff.species)
    d = ff.params
    entries = [json.loads(line) for line in open(shared_dir() / "data" / "aflow" / "oxide_perovskites_cP5.jsonl")]
    by_id = {e["auid"]: e for e in entries}
    ids = ff.ids
    B = args.batch_size
    rng = np.random.default_rng(0)
    n_batches = 1 + args.rounds * (args.steps + args.reference_steps)
    batches = [rng.choice(len(ds), B, replace=False) for _ in range(n_batches)]
    y = torch.zeros(B)

    ours = VoxelNet(len(species), int(d["n"]))
    opt = torch.optim.Adam(ours.parameters(), 1e-3)
    task = VoxelTask(int(d["n"]), float(d["length"]), d["mode"], len(species), True, augment=True)

    def our_step(k):
        batch = ds.collate([ds[int(i)] for i in batches[k]])
        pred, _ = task.forward(ours, dict(batch, **{K.TARGET: y}), torch.device("cpu"), step_generator(0, 0, k), True)
        loss = (pred - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    ref = load_reference()
    dense = VoxelNet(len(species), int(d["n"]))
    opt2 = torch.optim.Adam(dense.parameters(), 1e-3)

    def reference_step(k):
        x = np.stack([np.swapaxes(ref.featurize(by_id[ids[int(i)]], species, d["sigma"], d["length"], d["n"]), 1, 2)
                      for i in batches[k]])
        pred = dense(torch.from_numpy(x))
        loss = (pred - y).abs().mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    for k in range(len(batches)):  # read every item once, so both time compute, not the first file read
        for i in batches[k]:
            ds[int(i)]
    t_ref, t_ours = time_rounds([reference_step, our_step], [args.reference_steps, args.steps], args.rounds)
    common = dict(batch_size=B, channels=len(species), n=int(d["n"]), threads=torch.get_num_threads(),
                  steps=args.rounds * args.steps, reference_steps=args.rounds * args.reference_steps,
                  keep_freed_memory=kept)
    emit("voxelnet_throughput", "cloudvox_samples_per_s", B / t_ours, "samples/s", **common)
    emit("voxelnet_throughput", "dense_reference_samples_per_s", B / t_ref, "samples/s", **common)
    emit("voxelnet_throughput", "speedup", t_ref / t_ours, "x", **common)


if __name__ == "__main__":
    main()
