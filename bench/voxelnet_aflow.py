"""VoxelNet on the shared AFLOW perovskites: test MAE of enthalpy_atom (eV/atom) on a compound-grouped
80/10/10 split (seed 0), trained with rotation augmentation, next to a composition-only ridge regression on
the same split, in one run.

Trains, each with the same split, target normalisation and rotation augmentation:
  cross      per-element moduli and cross-spectra on the spherical grid, 1x1x1 stack, radial readout
             (jobs/configs/voxelnet_cross.yaml, the recommended setting)
  elements   the original per-element moduli and the original VoxelNet (jobs/configs/voxelnet_perovskites.yaml
             on out/perovskites.h5)
  properties property-weighted channels and the original VoxelNet (jobs/configs/voxelnet_perovskites.yaml)
and reports for each the test MAE, epochs, wall time and training samples/s. Featurizes the data first if needed.
Usage: python bench/voxelnet_aflow.py [--epochs 60] [--element-epochs 20] [--property-epochs 20] [--ranks 2]
(an epoch count of 0 skips that run).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features  # noqa: E402

import numpy as np  # noqa: E402


def ridge_composition(data: str, run_dir: Path) -> float:
    """Composition-only ridge: atom fractions of each element -> enthalpy_atom, fitted on train."""
    from cloudvox.data import element_counts, load_splits
    from cloudvox.featurefile import FeatureFile
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
    from cloudvox.config import load_run_config as load_config
    from cloudvox.runs import train_run
    cfg = load_config(str(ROOT / config), sets)
    cfg.run_dir = str(ROOT / cfg.run_dir)
    cfg.data.path = str(ROOT / cfg.data.path)
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


RUNS = {  # name -> (featurization config, training config, overrides, descriptor label)
    "cross": ("jobs/configs/perovskites_cross.yaml", "jobs/configs/voxelnet_cross.yaml", [],
              "per-element moduli + cross-spectra, spherical grid, radial readout"),
    "elements": ("jobs/configs/perovskites.yaml", "jobs/configs/voxelnet_perovskites.yaml",
                 ["data.path=out/perovskites.h5", "run_dir=runs/voxelnet_perovskites_elements"],
                 "per-element moduli (original descriptor and network)"),
    "properties": ("jobs/configs/perovskites_properties.yaml", "jobs/configs/voxelnet_perovskites.yaml", [],
                   "property-weighted moduli, original network"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the cross-spectrum run")
    ap.add_argument("--element-epochs", type=int, default=20)
    ap.add_argument("--property-epochs", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for featurization")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    epochs = {"cross": args.epochs, "elements": args.element_epochs, "properties": args.property_epochs}
    ridge_done = False
    for name, (feat, config, sets, label) in RUNS.items():
        if not epochs[name]:
            continue
        features(feat, args.ranks)
        cfg = train(config, sets + [f"train.epochs={epochs[name]}"], label)
        if not ridge_done:  # the same split for every run (compound-grouped, seed 0): the baseline once
            emit("voxelnet_aflow", "ridge_composition_test_mae",
                 ridge_composition(cfg.data.path, Path(cfg.run_dir)), "eV/atom",
                 descriptor="composition fractions")
            ridge_done = True
    emit("voxelnet_aflow", "total_wall_time", time.perf_counter() - t0, "s")


if __name__ == "__main__":
    main()
