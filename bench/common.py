"""Helpers shared by the benchmarks: JSON-line output, the shared data, the reference implementation."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

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


def ensemble_sets(minutes: float, ranks: int = 1, members: int = 1) -> list:
    """Config overrides for a training budget of ``minutes`` (0: none) on ``ranks`` cores: one model, or
    ``members`` > 1 ensemble members spread over the ranks, each with ``minutes`` x ranks / members."""
    sets = [f"train.ensemble={members}", "train.members_over_ranks=true"] if members > 1 else []
    if minutes:
        sets.append(f"train.max_minutes={minutes * ranks / members if members > 1 else minutes}")
    return sets


def train_config(model: str, cfg, ranks: int = 1) -> float:
    """Train the resolved run config ``cfg`` in this process, or with ``ranks`` > 1 under ``mpirun -n ranks
    cloudvox train MODEL`` (DDP; the config written to RUN/bench_config.yaml): an ensemble with
    ``train.members_over_ranks`` spreads its members over the ranks. The wall time, s."""
    run = Path(cfg.run_dir)
    t = time.perf_counter()
    if ranks > 1:
        import yaml
        run.mkdir(parents=True, exist_ok=True)
        path = run / "bench_config.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        subprocess.run(["mpirun", "-n", str(ranks), str(Path(sys.executable).parent / "cloudvox"), "train", model,
                        str(path), "--backend", "ddp"], env=mpi_env(), cwd=ROOT, check=True)
    else:
        from cloudvox.runs import train_run
        train_run(cfg)
    return time.perf_counter() - t


def run_figures(run: Path) -> dict:
    """A finished run's figures from its files, for one model or an ensemble (RUN/member-k): ``metrics`` (split ->
    evaluation metrics), ``epochs`` (per member), ``best_member_val_mae`` and ``samples_per_s`` (the median
    over every member's epochs after the first)."""
    members = sorted(Path(run).glob("member-*")) or [Path(run)]
    hists = [[json.loads(x) for x in (m / "metrics.jsonl").read_text().splitlines()] for m in members]
    rates = [r["samples_per_s"] for h in hists for r in (h[1:] or h)]
    return dict(metrics=json.loads((Path(run) / "evaluation.json").read_text())["metrics"],
                epochs=[len(h) for h in hists],
                best_member_val_mae=min(r["val_mae"] for h in hists for r in h if "val_mae" in r),
                samples_per_s=statistics.median(rates))


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


SIZE_CLASSES = [(1, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 10**6)]  # atoms per cell, for per-size figures


def size_class(natoms: int) -> str:
    """The label of the :data:`SIZE_CLASSES` class of a cell of ``natoms`` atoms ("failed" for none)."""
    for lo, hi in SIZE_CLASSES:
        if lo <= natoms <= hi:
            return f"{lo}-{hi}" if hi < 10**6 else f">={lo}"
    return "failed"


def aflow_like_input(n: int, seed: int, folder: Path) -> Tuple[Path, float]:
    """The AFLOW-like input of ``n`` entries (bench/aflow_like.py, ``seed``) in ``folder``, generated once: its
    path and the seconds its generation took now (0 if it was there)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"aflow_like_{n}_s{seed}.jsonl"
    if path.exists():
        return path, 0.0
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "bench" / "aflow_like.py"), "--n", str(n), "--seed", str(seed),
                    "--out", str(path)], check=True)
    return path, time.perf_counter() - t
