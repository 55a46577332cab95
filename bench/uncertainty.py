"""Leave-chemistry-out: does the uncertainty flag what the model gets wrong?

Trains an ensemble (``--config``, default jobs/configs/voxelnet_demo.yaml's VoxelNet; ``--members`` seeds) on
the shared perovskites with every compound of the held-out elements (``--hold-out``, default the group-4 and group-5
B-site elements Ti Zr Hf Nb Ta) removed from training (``data.split.hold_out``: a "holdout" split next to
the compound-grouped train/val/test), evaluates all four splits, and reports per split: MAE, mean ensemble
standard deviation, mean uncertainty (``predictions.csv``'s calibrated ``uncertainty``, cloudvox.uncertainty), the
Spearman rank correlation between the uncertainty and the absolute error, and the share of large errors
(> ``--large`` eV/atom) that were flagged, by each check (an element never seen in training, a composition
unlike the training set, an uncertainty above the validation split's 95th percentile) and by any.
Usage: python bench/uncertainty.py [--config CONFIG] [--members 5] [--epochs 30] [--hold-out Ti Zr Hf Nb Ta]
"""
import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features  # noqa: E402

import numpy as np  # noqa: E402

CHECKS = {"element": "never seen in training", "composition": "composition unlike", "uncertainty": "uncertainty"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="jobs/configs/voxelnet_demo.yaml",
                    help="the training config (e.g. jobs/configs/atomcloud_perovskites.yaml)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hold-out", nargs="+", default=["Ti", "Zr", "Hf", "Nb", "Ta"])
    ap.add_argument("--large", type=float, default=0.3, help="a large error, eV/atom")
    ap.add_argument("--run-dir", default="runs/bench_uncertainty")
    ap.add_argument("--report-only", action="store_true", help="the figures of an existing --run-dir")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    from cloudvox.config import load_run_config
    from cloudvox.runs import train_run
    run = ROOT / args.run_dir
    if args.report_only:  # the run's own settings, not this script's defaults
        import yaml
        used = yaml.safe_load((run / "config.yaml").read_text())
        return report(run, args, dict(run_dir=args.run_dir, members=used["train"].get("ensemble", 1),
                                      hold_out=used["data"].get("split", {}).get("hold_out") or []))
    common = dict(config=args.config, members=args.members, epochs=args.epochs, hold_out=args.hold_out)
    data = features("bench/configs/perovskites_16_all.yaml")
    cfg = load_run_config(str(ROOT / args.config),
                          [f"data.path={data}", f"run_dir={run}", f"train.epochs={args.epochs}",
                           f"train.ensemble={args.members}"])
    cfg.data.split.hold_out = list(args.hold_out)
    t = time.perf_counter()
    train_run(cfg)
    emit("uncertainty", "train_wall_time", time.perf_counter() - t, "s", **common)
    report(run, args, common)


def report(run: Path, args, common):
    """The figures, from the ensemble's predictions.csv."""
    from scipy.stats import spearmanr
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    for split in ("test", "holdout"):
        r = [x for x in rows if x["split"] == split]
        if not r:  # a run without a held-out chemistry (e.g. bench/peers' ensembles): its test split only
            continue
        err = np.abs(np.array([float(x["prediction"]) - float(x["target"]) for x in r]))
        std = np.array([float(x["ensemble_std"]) for x in r])
        sigma = np.array([float(x["uncertainty"]) for x in r])
        ok = np.isfinite(err) & np.isfinite(sigma)
        err, std, sigma, flags = err[ok], std[ok], sigma[ok], [x["flag"] for x, o in zip(r, ok) if o]
        large = err > args.large
        info = dict(common, split=split, n=int(ok.sum()), n_large=int(large.sum()))
        emit("uncertainty", "mae", float(err.mean()), "eV/atom", **info)
        emit("uncertainty", "mean_ensemble_std", float(std.mean()), "eV/atom", **info)
        emit("uncertainty", "mean_uncertainty", float(sigma.mean()), "eV/atom", **info)
        emit("uncertainty", "spearman_uncertainty_vs_abs_error", float(spearmanr(sigma, err).statistic), "", **info)
        for name, text in list(CHECKS.items()) + [("any", "")]:
            hit = np.array([(text in f) if text else bool(f) for f in flags])
            emit("uncertainty", f"flagged_share_{name}", float(hit.mean()), "fraction", **info)
            if large.any():
                emit("uncertainty", f"large_errors_flagged_share_{name}", float(hit[large].mean()), "fraction", **info)
    if not any(x["split"] == "holdout" for x in rows):
        return
    both = [x for x in rows if x["split"] in ("test", "holdout")]
    err = np.abs(np.array([float(x["prediction"]) - float(x["target"]) for x in both]))
    sigma = np.array([float(x["uncertainty"]) for x in both])
    ok = np.isfinite(err) & np.isfinite(sigma)
    emit("uncertainty", "spearman_uncertainty_vs_abs_error", float(spearmanr(sigma[ok], err[ok]).statistic), "",
         split="test+holdout", **common)


if __name__ == "__main__":
    main()
