"""Parallel featurization: throughput at 1 and 2 ranks on the shared perovskites, in one run.

Runs ``mpirun -n K cloudvox featurize`` (the real job, fresh output each time) for K = 1 and 2,
interleaved ``--repeats`` times, and reports median wall times, throughput, parallel efficiency
T1 / (K T_K) end to end and of the featurize phase alone (busy seconds), the load imbalance, the output
size against the raw dense size, and the write throughput of the parallel merge next to a serial h5py
write of the same datasets (same chunking and compression) in this process.
Usage: python bench/featurize_mpi.py [--repeats 3] [--copies 1]
(--copies C lists the input C times: a C-times larger job with the same structures.)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, shared_dir  # noqa: E402

import h5py  # noqa: E402


def env():
    e = dict(os.environ)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
             HDF5_USE_FILE_LOCKING="FALSE", OMP_NUM_THREADS="1")
    return e


def run(ranks, inputs, out, block_size):
    cmd = ["mpirun", "-n", str(ranks), str(Path(sys.executable).parent / "cloudvox"), "featurize", "--format", "aflow",
           "--output", str(out), "--block-size", str(block_size), "--overwrite", "--input", *inputs]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def serial_write_seconds(path, repeats=3):
    """Time a serial h5py write of every dataset of ``path`` with the same chunks and compression."""
    with h5py.File(path, "r") as f:
        items = []
        f.visititems(lambda n, o: items.append((n, o[...], o.chunks, o.compression, o.compression_opts, o.shuffle))
                     if isinstance(o, h5py.Dataset) else None)
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=Path(path).parent) as d:
            t = time.perf_counter()
            with h5py.File(Path(d) / "serial.h5", "w") as g:
                for name, data, chunks, comp, opts, shuffle in items:
                    g.create_dataset(name, data=data, chunks=chunks, compression=comp, compression_opts=opts,
                                     shuffle=shuffle)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=128)
    args = ap.parse_args()
    src = shared_dir() / "data" / "aflow" / "oxide_perovskites_cP5.jsonl"
    inputs = [str(src)] * args.copies
    work = Path(tempfile.mkdtemp(prefix="cloudvox-bench-", dir=ROOT / "out" if (ROOT / "out").is_dir() else None))
    results = {1: [], 2: []}
    try:
        for _ in range(args.repeats):
            for k in (1, 2):
                results[k].append(run(k, inputs, work / f"p{k}.h5", args.block_size))
        n = results[1][0][1]["structures"]
        med = {k: statistics.median(w for w, _ in results[k]) for k in results}
        busy = {k: statistics.median(sum(s["busy_seconds"]) for _, s in results[k]) for k in results}
        phase = {k: statistics.median(max(s["busy_seconds"]) for _, s in results[k]) for k in results}
        merge = {k: statistics.median(s["merge_seconds"] for _, s in results[k]) for k in results}
        common = dict(n=n, repeats=args.repeats, copies=args.copies)
        for k in (1, 2):
            emit("featurize_mpi", f"throughput_{k}_ranks", n / med[k], "structures/s", wall_s=round(med[k], 3), **common)
        emit("featurize_mpi", "parallel_efficiency_end_to_end", med[1] / (2 * med[2]), "fraction", **common)
        emit("featurize_mpi", "parallel_efficiency_featurize_phase", phase[1] / (2 * phase[2]), "fraction", **common)
        emit("featurize_mpi", "load_imbalance_2_ranks",
             statistics.median(s["load_imbalance"] for _, s in results[2]), "max/mean busy", **common)
        size = (work / "p2.h5").stat().st_size
        with h5py.File(work / "p2.h5", "r") as f:
            n_species = len(json.loads(f.attrs["species"]))
            N = json.loads(f.attrs["descriptor"])["n"]
        dense = n * n_species * N ** 3 * 4
        emit("featurize_mpi", "file_size_fraction_of_dense", size / dense, "fraction", bytes=size, dense_bytes=dense,
             channels=n_species, **common)
        serial = serial_write_seconds(work / "p2.h5")
        for k in (1, 2):
            emit("featurize_mpi", f"merge_write_throughput_{k}_ranks", size / merge[k] / 1e6, "MB/s", **common)
        emit("featurize_mpi", "serial_h5py_write_throughput", size / serial / 1e6, "MB/s", **common)
        emit("featurize_mpi", "busy_seconds_total", busy[2], "s", ranks=2, **common)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
