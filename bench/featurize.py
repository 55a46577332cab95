"""Featurization throughput on one core: cloudvox next to the original VoxelNet algorithm, same structures.

For each shared AFLOW file: the reference's ``featurize`` (one channel per element of the structure) and
cloudvox's compact descriptor (the structure's own elements, sparse voxels) run interleaved, ``--repeats``
times each, on the same in-memory entries; medians are reported, and every structure's voxels are
compared. Structure construction (parsing the AFLOW dict and validating) is timed separately and also
reported end to end. Usage: python bench/featurize.py [--repeats 3] [--limit N]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, load_reference, median_time, shared_dir, single_core  # noqa: E402

single_core()
import json  # noqa: E402

import numpy as np  # noqa: E402

from cloudvox.descriptors import ReciprocalVoxelizer  # noqa: E402
from cloudvox.io import structure_from_aflow  # noqa: E402


def run(path: Path, repeats: int, limit: int) -> None:
    ref = load_reference()
    entries = [json.loads(line) for line in open(path)][:limit or None]
    name = path.stem
    n = len(entries)
    structures = [structure_from_aflow(e) for e in entries]
    vox = ReciprocalVoxelizer(sigma=0.1, length=12.8, n=32, mode="cartesian")
    names = vox.channel_names(structures)
    results = {}

    def reference():
        results["ref"] = [ref.featurize(e, sorted(e["species"])) for e in entries]

    def ours():
        results["ours"] = vox.compact(structures, names=names)

    def build():
        [structure_from_aflow(e) for e in entries]

    t_ref, t_ours, t_build = [], [], []
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        t_ref.append(median_time(reference, 1))
        t_ours.append(median_time(ours, 1))
        t_build.append(median_time(build, 1))
    t_ref, t_ours, t_build = (float(np.median(t)) for t in (t_ref, t_ours, t_build))
    worst = 0.0
    for e, expected, sv in zip(entries, results["ref"], results["ours"]):
        order = [names.index(x) for x in sorted(e["species"])]
        got = sv.dense(len(names), 32)[order]
        worst = max(worst, float(np.abs(got - np.swapaxes(expected, 1, 2)).max()))
    common = dict(n=n, file=name, repeats=repeats)
    emit("featurize", "reference_throughput", n / t_ref, "structures/s", **common)
    emit("featurize", "cloudvox_throughput", n / t_ours, "structures/s", **common)
    emit("featurize", "speedup", t_ref / t_ours, "x", **common)
    emit("featurize", "speedup_including_structure_parsing", t_ref / (t_ours + t_build), "x", **common)
    emit("featurize", "structure_parsing_throughput", n / t_build, "structures/s", **common)
    emit("featurize", "max_abs_difference", worst, "1/A^3", **common)
    voxels = sum(sv.index.size for sv in results["ours"])
    emit("featurize", "occupied_voxel_fraction", voxels / (n * 32 ** 3), "fraction", **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="first N entries of each file (0: all)")
    args = ap.parse_args()
    for f in ("O-Sr-Ti.jsonl", "oxide_perovskites_cP5.jsonl"):
        run(shared_dir() / "data" / "aflow" / f, args.repeats, args.limit)


if __name__ == "__main__":
    main()
