"""VoxelNet on the shared AFLOW perovskites: test MAE of enthalpy_atom (eV/atom) on a compound-grouped
80/10/10 split (seed 0), trained with rotation augmentation, next to a composition-only ridge regression on
the same split, in one run.

Trains two descriptors: the property-weighted channels (jobs/configs/voxelnet_perovskites.yaml) and the
original per-element moduli (same network and schedule, fewer epochs by default), and reports for each
the test MAE, epochs, wall time and training samples/s. Featurizes the data first if needed.
Usage: python bench/voxelnet_aflow.py [--epochs 60] [--element-epochs 20] [--ranks 2]
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

import numpy as np  # noqa: E402


def featurize(config: str, ranks: int) -> None:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
    cmd = ["mpirun", "-n", str(ranks), str(Path(sys.executable).parent / "cloudvox"), "featurize", "--config", config]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)


def ridge_composition(data: str, run_dir: Path) -> float:
    """Composition-only ridge: atom fractions of each element -> enthalpy_atom, fitted on train."""
    from cloudvox.data import element_counts, load_splits
    from cloudvox.features import FeatureFile
    ff = FeatureFile(data)
    splits = load_splits(run_dir, ff.ids)
    y = ff.prop("enthalpy_atom")
    X = {k: element_counts(ff, v) for k, v in splits.items()}
    X = {k: v / v.sum(1, keepdims=True) for k, v in X.items()}
    used = np.flatnonzero(X["train"].sum(0) > 0)
    A = np.c_[X["train"][:, used], np.ones(len(X["train"]))]
    w = np.linalg.solve(A.T @ A + 1e-3 * np.eye(A.shape[1]), A.T @ y[splits["train"]])
    At = np.c_[X["test"][:, used], np.ones(len(X["test"]))]
    return float(np.abs(At @ w - y[splits["test"]]).mean())


def train(config: str, sets, tag: str):
    from cloudvox.runs import load_config, train_run
    cfg = load_config(str(ROOT / config), sets)
    cfg["run_dir"] = str(ROOT / cfg["run_dir"])
    cfg["data"]["path"] = str(ROOT / cfg["data"]["path"])
    t = time.perf_counter()
    summary = train_run(cfg)
    wall = time.perf_counter() - t
    hist = summary["history"]
    rate = float(np.median([r["samples_per_s"] for r in hist[1:]] or [hist[0]["samples_per_s"]]))
    common = dict(descriptor=tag, epochs=summary["epochs"], n_test=summary["metrics"]["test"]["n"])
    emit("voxelnet_aflow", "test_mae", summary["metrics"]["test"]["mae"], "eV/atom", **common)
    emit("voxelnet_aflow", "val_mae_best", summary["best_val_mae"], "eV/atom", best_epoch=summary["best_epoch"], **common)
    emit("voxelnet_aflow", "wall_time", wall, "s", **common)
    emit("voxelnet_aflow", "train_samples_per_s", rate, "samples/s", **common)
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--element-epochs", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for featurization")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    if not (ROOT / "out" / "perovskites_properties.h5").exists():
        featurize("jobs/configs/perovskites_properties.yaml", args.ranks)
    if not (ROOT / "out" / "perovskites.h5").exists():
        featurize("jobs/configs/perovskites.yaml", args.ranks)
    cfg = train("jobs/configs/voxelnet_perovskites.yaml", [f"train.epochs={args.epochs}"], "properties")
    emit("voxelnet_aflow", "ridge_composition_test_mae", ridge_composition(cfg["data"]["path"], Path(cfg["run_dir"])),
         "eV/atom", descriptor="composition fractions")
    if args.element_epochs:
        train("jobs/configs/voxelnet_perovskites.yaml",
              [f"train.epochs={args.element_epochs}", "data.path=out/perovskites.h5",
               "run_dir=runs/voxelnet_perovskites_elements"], "per-element moduli (original)")


if __name__ == "__main__":
    main()
