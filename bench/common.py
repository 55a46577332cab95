"""Helpers shared by the benchmarks: JSON-line output, the shared data, the reference implementation."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("CLOUDVOX_SHARED_DATA", ROOT.parent / "shared" / "data")).parent


def features(config: str, ranks: int = 2) -> Path:
    """The feature file a featurize config makes (its ``output``), featurized first under ``mpirun -n ranks``
    if absent: every benchmark makes its own inputs. Inputs under ``../shared`` follow
    ``$CLOUDVOX_SHARED_DATA``; a missing shared folder is one clear line."""
    import yaml
    cfg = yaml.safe_load((ROOT / config).read_text())
    output = ROOT / cfg["output"]
    if output.exists():
        return output
    cmd = ["mpirun", "-n", str(ranks), str(Path(sys.executable).parent / "cloudvox"), "featurize", "--config", config]
    inputs = [str(p) for p in cfg.get("input") or []]
    if any(p.startswith("../shared/data/") for p in inputs):
        inputs = [str(shared_dir() / "data" / p[len("../shared/data/"):]) if p.startswith("../shared/data/") else p
                  for p in inputs]
        missing = [p for p in inputs if not Path(p).exists()]
        if missing:
            raise SystemExit(f"{config} reads the shared data, absent here ({missing[0]}): put the shared folder beside "
                             "the project or set CLOUDVOX_SHARED_DATA")
        cmd += ["--input", *inputs]
    env = mpi_env()
    print(f"featurizing {config} -> {output} (once)", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    return output


def mpi_env(**extra) -> dict:
    """The environment for ``mpirun`` from a benchmark: Open MPI as root, oversubscription, one BLAS thread per
    rank, no HDF5 file locking; ``extra`` on top."""
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE", **extra)


def load_reference():
    path = shared_dir() / "bench" / "original_voxelnet_reference.py"
    spec = importlib.util.spec_from_file_location("original_voxelnet_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def emit(bench: str, metric: str, value, unit: str, **extra) -> str:
    """One JSON line per figure on stdout (also returned)."""
    line = {"bench": bench, "metric": metric, "value": round(value, 6) if isinstance(value, float) else value,
            "unit": unit}
    line.update(extra)
    text = json.dumps(line)
    print(text, flush=True)
    return text


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
