"""Helpers shared by the benchmarks: JSON-line output, the shared data, the reference implementation."""
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("CLOUDVOX_SHARED_DATA", ROOT.parent / "shared" / "data")).parent


def load_reference():
    path = shared_dir() / "bench" / "original_voxelnet_reference.py"
    spec = importlib.util.spec_from_file_location("original_voxelnet_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def emit(bench: str, metric: str, value, unit: str, **extra) -> None:
    """One JSON line per figure on stdout."""
    line = {"bench": bench, "metric": metric, "value": round(value, 6) if isinstance(value, float) else value,
            "unit": unit}
    line.update(extra)
    print(json.dumps(line), flush=True)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def single_core() -> None:
    """Pin BLAS/OpenMP to one thread (call before numpy is imported)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if "numpy" in sys.modules:
        print("warning: numpy imported before single_core()", file=sys.stderr)
