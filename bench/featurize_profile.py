"""Where a featurize job's time goes, per stage and per structure size, on one core.

Generates N AFLOW-like entries (bench/aflow_like.py: the realistic mix, 1% malformed) once and runs the
stages of the job's per-block work in this process, block by block as a rank does (``--block-size``), timing
each: reading the block's lines through the line index, JSON parsing, validation and structure building
(``cloudvox.io.aflow``), the resource check, the compiled descriptor pass (``stored_values_many``, one call
a block), the rest of the block's assembly, and writing the shard. Medians over ``--repeats`` passes; per size
class (atoms per cell) the parsing's milliseconds per structure and the median number of reciprocal points (the
descriptor per size class: bench/featurize_kernel.py). The merge is measured by bench/featurize_scale.py and
bench/merge_nodes.py.
Usage: python bench/featurize_profile.py [--n 20000] [--repeats 3] [--block-size 256] [--workdir out/profile]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SIZE_CLASSES, aflow_like_input, emit, single_core, size_class  # noqa: E402

single_core()
import numpy as np  # noqa: E402

from cloudvox.config import FeaturizeConfig  # noqa: E402
from cloudvox.descriptors import ReciprocalVoxelizer  # noqa: E402
from cloudvox.featurefile import channel_names, featurize_block, root_attributes, write_features  # noqa: E402
from cloudvox.io.aflow import _record  # noqa: E402
from cloudvox.io.records import Record  # noqa: E402
from cloudvox.io.sources import LineIndex  # noqa: E402

def one_pass(index: LineIndex, vox: ReciprocalVoxelizer, block: int, folder: Path, compression):
    """Seconds per stage over every block, and (class, parse s, descriptor s, points) per good structure."""
    stage = defaultdict(float)
    per_structure = []
    parse_of = {}
    timed(vox, stage, per_structure, parse_of)
    src = str(index.files[0])
    attrs = root_attributes(vox, [src], "aflow", "bench")
    for a in range(0, index.n, block):
        b = min(a + block, index.n)
        t = time.perf_counter()
        lines = list(index.lines(a, b))
        stage["read"] += time.perf_counter() - t
        records, parse_s = [], []
        for _, line, raw in lines:
            t0 = time.perf_counter()
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as e:
                records.append(Record(src, line, "", error=f"invalid JSON: {e.msg}"))
                stage["json"] += time.perf_counter() - t0
                parse_s.append(0.0)
                continue
            t1 = time.perf_counter()
            records.append(_record(src, line, entry))
            t2 = time.perf_counter()
            stage["json"] += t1 - t0
            stage["validate_build"] += t2 - t1
            parse_s.append(t2 - t0)
        parse_of.clear()
        parse_of.update({id(r.structure): r_parse for r, r_parse in zip(records, parse_s) if r.structure is not None})
        t = time.perf_counter()
        block_data = featurize_block(records, a, vox, [src])
        stage["block_total"] += time.perf_counter() - t
        t = time.perf_counter()
        write_features(folder / f"block-{a:010d}-{b:010d}.h5", block_data, attrs, compression=compression)
        stage["shard"] += time.perf_counter() - t
    stage["assembly"] = stage.pop("block_total") - stage["descriptor"] - stage["limits"]
    return stage, per_structure


def timed(vox: ReciprocalVoxelizer, stage: dict, per_structure: list, parse_of: dict) -> None:
    """Time the voxelizer's resource check and compiled pass where featurize_block calls them (instance
    attributes over the methods: the same calls, once each)."""
    cls = type(vox)

    def check_cost(s):
        t = time.perf_counter()
        try:
            return cls.check_cost(vox, s)
        finally:
            stage["limits"] += time.perf_counter() - t

    def stored_values_many(crystals, names):  # the block's one call (per crystal: bench/featurize_kernel.py)
        t = time.perf_counter()
        out = cls.stored_values_many(vox, crystals, names)
        stage["descriptor"] += time.perf_counter() - t
        per_structure.extend((size_class(len(s)), parse_of.get(id(s), float("nan")), values.shape[-1])
                             for s, (_, values, _) in zip(crystals, out))
        return out
    vox.check_cost, vox.stored_values_many = check_cost, stored_values_many


def warm_up(src: Path) -> None:
    """The compiled pass's first call loads it (~0.9 s): once before anything is timed."""
    vox = ReciprocalVoxelizer()
    for k, raw in enumerate(open(src, "rb")):
        try:
            s = _record(str(src), k + 1, json.loads(raw)).structure
        except ValueError:
            continue
        if s is not None and s.is_periodic and len(s) < 10:
            vox.stored_values(s, channel_names(vox))
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "profile"))
    ap.add_argument("--shard-compression", choices=["none", "lzf"], default=FeaturizeConfig.shard_compression,
                    help="the shards' filter (default: the job's)")
    args = ap.parse_args()
    work = Path(args.workdir)
    src, _ = aflow_like_input(args.n, args.seed, work)
    warm_up(src)
    stages, structures = [], None
    for _ in range(args.repeats):
        vox = ReciprocalVoxelizer()
        t = time.perf_counter()
        index = LineIndex.serial([src], False, None, args.block_size)
        index_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory(dir=work) as folder:
            stage, structures = one_pass(index, vox, args.block_size, Path(folder),
                                         None if args.shard_compression == "none" else args.shard_compression)
        stage["index"] = index_s
        stages.append(stage)
    n = index.n
    common = dict(n=n, repeats=args.repeats, block_size=args.block_size, shard_compression=args.shard_compression)
    total = statistics.median(sum(s.values()) for s in stages)
    for name in ("index", "read", "json", "validate_build", "limits", "descriptor", "assembly", "shard"):
        sec = statistics.median(s[name] for s in stages)
        emit("featurize_profile", f"stage_{name}", sec / n * 1e3, "ms/structure", share=sec / total, **common)
    emit("featurize_profile", "one_core_total", total / n * 1e3, "ms/structure", structures_per_s=n / total, **common)
    by_class = defaultdict(list)
    for cls, parse_s, points in structures:
        by_class[cls].append((parse_s, points))
    for lo, hi in SIZE_CLASSES:
        cls = size_class(lo)
        rows = by_class.get(cls, [])
        if rows:
            emit("featurize_profile", "by_size", float(np.median([r[0] for r in rows]) * 1e3), "ms/structure (parsing)",
                 atoms=cls, structures=len(rows), share_of_structures=len(rows) / n,
                 points_median=int(np.median([r[1] for r in rows])), **common)


if __name__ == "__main__":
    main()
