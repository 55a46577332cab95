"""The descriptor's floor: the compiled pass alone on the same crystals the featurize job sees, per size class.

Generates N AFLOW-like entries (bench/aflow_like.py, the realistic mix), keeps the crystals that pass the job's
validation and resource check, and times per structure, on one core (medians over ``--repeats`` passes):
``call``, the job's call (``ReciprocalVoxelizer.stored_values``: weights, ball parameters, tensors, the kernel);
``kernel``, the compiled pass alone on prepared inputs (enumeration, structure factors, envelope, float16);
``enumeration``, the half ball alone. ``kernel`` is the floor the job is compared with
(bench/featurize_profile.py gives the job's per-structure total). Prints one JSON line per figure.
Usage: python bench/featurize_kernel.py [--n 4000] [--repeats 5] [--workdir out/profile]
"""
import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SIZE_CLASSES, aflow_like_input, emit, single_core, size_class  # noqa: E402

single_core()
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cloudvox import kernel  # noqa: E402
from cloudvox.descriptors import ReciprocalVoxelizer  # noqa: E402
from cloudvox.featurefile import channel_names  # noqa: E402
from cloudvox.io.aflow import _record  # noqa: E402

def crystals(src: Path, vox: ReciprocalVoxelizer):
    out = []
    for k, raw in enumerate(open(src, "rb")):
        try:
            s = _record(str(src), k + 1, json.loads(raw)).structure
            if s is None or not s.is_periodic:
                continue
            vox.check_cost(s)
        except ValueError:
            continue
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "profile"))
    args = ap.parse_args()
    native = kernel.native()
    if native is None:
        sys.exit("the compiled kernel is not built: pip install -e . (setup.py build_ext --inplace)")
    src, _ = aflow_like_input(args.n, args.seed, Path(args.workdir))
    vox = ReciprocalVoxelizer()
    names = channel_names(vox)
    structures = crystals(src, vox)
    prepared = []
    for s in structures:  # the kernel's inputs for one crystal, as ReciprocalVoxelizer.stored_values_many makes them
        W, _ = vox._weights(s, names)
        recip, (e0, e1, e2), r2 = s.cell.ball_params(vox.ball_radius)
        prepared.append((torch.from_numpy(recip.copy()[None]), torch.tensor([[e0, e1, e2]]), r2,
                         torch.from_numpy(np.array(s.frac_coords, dtype=np.float64, order="C")),
                         torch.tensor([len(s)]), torch.from_numpy(np.array(W, dtype=np.float64).ravel()),
                         torch.tensor([len(W)]), vox.sigma, torch.tensor([float(s.volume)], dtype=torch.float64),
                         vox.cross))
    timings = {name: np.zeros((args.repeats, len(structures))) for name in ("call", "kernel", "enumeration")}
    points = np.zeros(len(structures), dtype=np.int64)
    clock = time.perf_counter
    for r in range(args.repeats):
        for k, (s, p) in enumerate(zip(structures, prepared)):
            t0 = clock()
            vox.stored_values(s, names)
            t1 = clock()
            _, count, _ = native.stored_values_many(*p)
            t2 = clock()
            native.half_ball(p[0][0], int(p[1][0, 0]), int(p[1][0, 1]), int(p[1][0, 2]), p[2])
            t3 = clock()
            timings["call"][r, k], timings["kernel"][r, k], timings["enumeration"][r, k] = t1 - t0, t2 - t1, t3 - t2
            points[k] = int(count[0])
    per = {name: np.median(t, axis=0) for name, t in timings.items()}  # per structure, median over the passes
    common = dict(n=args.n, crystals=len(structures), repeats=args.repeats)
    for name, t in per.items():
        emit("featurize_kernel", f"{name}_mean", float(t.mean() * 1e3), "ms/structure", **common)
    atoms = np.array([len(s) for s in structures])
    emit("featurize_kernel", "kernel_ns_per_point_atom", float(per["kernel"].sum() / (points * atoms).sum() * 1e9),
         "ns", **common)
    by = defaultdict(list)
    for k, s in enumerate(structures):
        by[size_class(len(s))].append(k)
    for lo, hi in SIZE_CLASSES:
        ks = by.get(size_class(lo), [])
        if not ks:
            continue
        emit("featurize_kernel", "by_size", float(np.median(per["kernel"][ks]) * 1e3), "ms/structure (kernel)",
             atoms=size_class(lo), structures=len(ks), share=len(ks) / len(structures),
             call_ms=float(np.median(per["call"][ks]) * 1e3),
             enumeration_ms=float(np.median(per["enumeration"][ks]) * 1e3),
             kernel_mean_ms=float(np.mean(per["kernel"][ks]) * 1e3),
             points_median=int(np.median(points[ks])), atoms_median=float(statistics.median(atoms[ks])), **common)


if __name__ == "__main__":
    main()
