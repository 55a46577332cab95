"""AFLOW at scale: featurize N AFLOW-like entries (bench/aflow_like.py) under mpirun and measure what a
cluster user needs to know: wall time, structures/s, bytes per structure, peak RSS per rank, merge MB/s,
failures by reason, and the projection to all of AFLOW (3.5 million entries).

Usage: python bench/featurize_scale.py --n 100000 [--ranks 2] [--workdir out/scale] [--keep]
The input is generated once per (n, seed) in the work folder; the featurize command is the one a user runs
(``mpirun -n R cloudvox featurize --input X --format aflow --output Y``), each rank under ``/usr/bin/time``
for its peak RSS. Prints one JSON line per figure.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, aflow_like_input, emit  # noqa: E402

AFLOW_ENTRIES = 3_500_000
NODE_CORES = 128
WRITER_BANDWIDTH = 1e9  # bytes/s: assumed rate at which rank 0 receives and writes the merged chunks (stated)

# failure reasons, grouped by the words that name them (the first match wins)
REASON_KINDS = [("duplicate id", "duplicate id"), ("far outside the cell", "coordinates far outside the cell"),
                ("MAX_BOX_BYTES", "reciprocal box over the limit"), ("MAX_ATOMS", "too many atoms"),
                ("invalid JSON", "truncated or invalid JSON"), ("missing keyword", "missing keys"),
                ("non-finite", "NaN or inf coordinates"), ("not an (n, 3)", "non-numeric coordinates"),
                ("unknown element", "unknown element"), ("expected", "composition does not match positions"),
                ("do not form a cell", "zero volume (degenerate angles)"), ("must be > 0", "negative cell length"),
                ("apart", "overlapping atoms")]


def reason_kind(reason: str) -> str:
    for words, kind in REASON_KINDS:
        if words in reason:
            return kind
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "scale"))
    ap.add_argument("--keep", action="store_true", help="keep the feature file (the loader benchmark reads it)")
    args = ap.parse_args()
    work = Path(args.workdir)
    src, gen_s = aflow_like_input(args.n, args.seed, work)
    out = work / f"aflow_like_{args.n}_s{args.seed}.h5"
    rss = work / "rss"
    for old in work.glob("rss.*"):
        old.unlink()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
    cloudvox = str(Path(sys.executable).parent / "cloudvox")
    rank_cmd = (f'exec /usr/bin/time -f %M -o {rss}.$OMPI_COMM_WORLD_RANK {cloudvox} featurize --input {src} '
                f'--format aflow --output {out} --overwrite')
    t = time.perf_counter()
    proc = subprocess.run(["mpirun", "-n", str(args.ranks), "sh", "-c", rank_cmd], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"featurize failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    peaks = [int(Path(f"{rss}.{r}").read_text().split()[-1]) * 1024 for r in range(args.ranks)]
    size = out.stat().st_size
    n = summary["structures"]
    common = dict(n=args.n, ranks=args.ranks, seed=args.seed)
    emit("featurize_scale", "input_generation", gen_s, "s", **common)
    emit("featurize_scale", "input_bytes_per_entry", src.stat().st_size / args.n, "B", **common)
    emit("featurize_scale", "wall", wall, "s", **common)
    emit("featurize_scale", "throughput", n / wall, "structures/s", **common)
    emit("featurize_scale", "throughput_per_rank_busy", n / sum(summary["busy_seconds"]), "structures/s", **common)
    emit("featurize_scale", "bytes_per_structure", size / n, "B", **common)
    emit("featurize_scale", "file_size", size / 1e9, "GB", **common)
    for r, p in enumerate(peaks):
        emit("featurize_scale", "peak_rss", p / 2 ** 30, "GiB", rank=r, **common)
    emit("featurize_scale", "merge_seconds", summary["merge_seconds"], "s", **common)
    emit("featurize_scale", "merge_output_rate", size / 1e6 / summary["merge_seconds"], "MB/s", **common)
    emit("featurize_scale", "load_imbalance", summary["load_imbalance"], "max/mean busy", **common)
    from cloudvox.featurefile import FeatureFile
    ff = FeatureFile(out)
    kinds = Counter(reason_kind(f["reason"]) for f in ff.failures())
    ff.close()
    emit("featurize_scale", "failures", sum(kinds.values()), "structures", by_reason=dict(sorted(kinds.items())),
         **common)
    # projections: this machine scales linearly in N; a cluster of 128-core nodes runs the compute at the
    # measured per-rank rate and the merge's compression at the measured per-rank rate, and rank 0 writes
    # every chunk at WRITER_BANDWIDTH
    per_rank = n / sum(summary["busy_seconds"])  # structures per busy second of one rank
    merge_rate = size / summary["merge_seconds"] / args.ranks  # bytes/s of output per writing rank
    scale = AFLOW_ENTRIES / n
    emit("featurize_scale", "projection_aflow_this_machine", wall * scale / 3600, "h", **common)
    emit("featurize_scale", "projection_aflow_bytes", size * scale / 1e9, "GB", **common)
    for nodes in (1, 8, 64):
        ranks = nodes * NODE_CORES
        compute = AFLOW_ENTRIES / (per_rank * ranks)
        merge = max(size * scale / (merge_rate * ranks), size * scale / WRITER_BANDWIDTH)
        emit("featurize_scale", "projection_aflow_cluster", (compute + merge) / 60, "min", nodes=nodes,
             cores_per_node=NODE_CORES, assumed_writer_GBps=WRITER_BANDWIDTH / 1e9, **common)
    if not args.keep:
        out.unlink()


if __name__ == "__main__":
    main()
