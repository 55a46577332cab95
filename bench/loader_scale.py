"""Training input at scale: random batches read and prepared from a large feature file (the AFLOW-like file of
bench/featurize_scale.py --keep), with 0 and 2 DataLoader workers, per model input:

* ``voxelnet_voxels``: voxels binned on the CPU from the stored reciprocal sets (dense batch, no rotation);
* ``voxelnet_reciprocal``: reciprocal sets collated for binning on the device under random rotations;
* ``atomcloud``: atom clouds with neighbour lists (cutoff 5 A, vesin).

Each configuration reads ``--batches`` random batches of ``--batch-size`` from the whole file, twice (epoch 1:
cold; epoch 2: the same batches again, with each worker's item cache kept across epochs by persistent workers,
which is what a data set that fits in memory gets). Figures: samples/s, samples/s per core used (the main
process plus the workers, on this 2-core machine at most 2), and the cores per GPU the rate implies at the
training rates of issue 18's goals (VoxelNet 10,000 and AtomCloudNet 5,000 samples/s on one H100).

Usage: python bench/loader_scale.py --data out/scale/aflow_like_1000000_s0.h5 [--batches 20] [--batch-size 128]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, single_core  # noqa: E402

single_core()
import numpy as np  # noqa: E402

GPU_RATE = {"voxelnet_voxels": 10_000, "voxelnet_reciprocal": 10_000, "atomcloud": 5_000}  # samples/s per H100


def dataset(kind: str, path: str, indices):
    from cloudvox.data import CloudDataset, VoxelDataset
    if kind == "atomcloud":
        return CloudDataset(path, indices, None, cutoff=5.0, cache=True)
    return VoxelDataset(path, indices, None, source=kind.split("_")[1], cache=True)


def run(kind: str, path: str, workers: int, batches: int, batch_size: int, seed: int) -> None:
    import torch
    from cloudvox.featurefile import DONE, FeatureFile
    ff = FeatureFile(path)
    good = np.flatnonzero(ff.status == DONE)
    ff.close()
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(good), size=batches * batch_size, replace=False)
    ds = dataset(kind, path, good[np.sort(picks)])
    order = rng.permutation(len(picks)).reshape(batches, batch_size).tolist()  # random batches over the file
    loader = torch.utils.data.DataLoader(ds, batch_sampler=order, collate_fn=ds.collate, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    cores = min(os.cpu_count() or 1, 1 + workers) if workers else 1
    for epoch, label in ((1, "cold"), (2, "cached")):
        t = time.perf_counter()
        for _ in loader:
            pass
        dt = time.perf_counter() - t
        rate = batches * batch_size / dt
        common = dict(input=kind, workers=workers, epoch=label, batch_size=batch_size, batches=batches,
                      structures_in_file=int(len(good)))
        emit("loader_scale", "samples_per_s", rate, "samples/s", **common)
        emit("loader_scale", "samples_per_s_per_core", rate / cores, "samples/s/core", cores=cores, **common)
        if label == "cold":
            emit("loader_scale", "cores_per_gpu_needed", GPU_RATE[kind] / (rate / cores), "cores",
                 gpu_rate=GPU_RATE[kind], **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--inputs", nargs="+", default=list(GPU_RATE))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for kind in args.inputs:
        for w in args.workers:
            run(kind, args.data, w, args.batches, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
