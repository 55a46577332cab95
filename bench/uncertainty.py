"""Leave-chemistry-out: is the stated uncertainty a calibrated 1-sigma, on the test split and on new chemistry?

For each outer fold (``--outer``, one quoted element list each; default three chemistries of the shared
perovskites: the group 4-5 B-site metals, the alkaline earths, the halogens with N), trains an ensemble
(``--config``, ``--members`` seeds, ``--epochs``) on the shared perovskites with every compound of those elements
held out (``data.split.hold_out``: a "holdout" split next to the compound-grouped train/val/test) and
``train.uncertainty=folds`` (its calibration folds inside its own training data, ``--folds``, ``--fold-epochs``;
the outer fold is never seen by them). Then, for the same members, two calibrations: ``validation`` (the
validation split alone: the calibration before) and ``folds`` (with the folds' held-out residuals), and per
split (test, holdout) one JSON line per figure: coverage (share with |error| <= uncertainty), the median of
|error| / uncertainty, MAE, mean uncertainty, the Spearman rank correlation of uncertainty and |error|, the
flagged share and the share of large errors (> ``--large`` eV/atom) flagged; and the training time of the
members and of the folds. Usage:
python bench/uncertainty.py [--config CONFIG] [--members 3] [--epochs 20] [--outer "Ti Zr Hf Nb Ta" ...]
python bench/uncertainty.py --report-only --run-dir runs/bench_uncertainty   (the figures of trained runs; a
    --run-dir that is one run, e.g. runs/peers/atomcloud_ensemble6, reports that run)
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features  # noqa: E402

import numpy as np  # noqa: E402

OUTER = ["Ti Zr Hf Nb Ta", "Be Mg Ca Sr Ba", "F Cl Br I N"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="jobs/configs/voxelnet_demo.yaml",
                    help="the training config (e.g. jobs/configs/atomcloud_perovskites.yaml)")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=5, help="calibration folds (train.uncertainty_folds)")
    ap.add_argument("--fold-epochs", type=int, default=0, help="train.uncertainty_epochs (0: half of --epochs)")
    ap.add_argument("--outer", nargs="+", default=OUTER, help="outer folds: one quoted element list each")
    ap.add_argument("--large", type=float, default=0.3, help="a large error, eV/atom")
    ap.add_argument("--run-dir", default="runs/bench_uncertainty")
    ap.add_argument("--report-only", action="store_true", help="the figures of the runs already in --run-dir")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    from cloudvox.config import load_run_config
    from cloudvox.runs import train_run
    data = features("bench/configs/perovskites_16_all.yaml")
    if args.report_only and (ROOT / args.run_dir / "config.yaml").exists():  # one run (e.g. bench/peers' ensembles)
        import yaml
        used = yaml.safe_load((ROOT / args.run_dir / "config.yaml").read_text())
        return report(ROOT / args.run_dir, Path(used["data"]["path"]), args, dict(run=args.run_dir))
    for k, outer in enumerate(args.outer):
        run = ROOT / args.run_dir / f"outer-{k}"
        common = dict(config=args.config, members=args.members, epochs=args.epochs, folds=args.folds,
                      outer=outer)
        if not args.report_only:
            cfg = load_run_config(str(ROOT / args.config),
                                  [f"data.path={data}", f"run_dir={run}", f"train.epochs={args.epochs}",
                                   f"train.ensemble={args.members}", "train.uncertainty=folds",
                                   f"train.uncertainty_folds={args.folds}",
                                   f"train.uncertainty_epochs={args.fold_epochs}"])
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=dataclasses.replace(
                cfg.data.split, hold_out=outer.split())))
            t = time.perf_counter()
            train_run(cfg)
            emit("uncertainty", "train_wall_time", time.perf_counter() - t, "s", **common)
        report(run, data, args, common)


def _seconds(run: Path) -> float:
    """A finished run's training time: from its resolved config to its evaluation (file times)."""
    return (run / "evaluation.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime


def report(run: Path, data: Path, args, common):
    """The figures of one outer fold's run, for both calibrations of its members."""
    from scipy.stats import spearmanr
    from cloudvox.calibration import read_fold_residuals
    from cloudvox.data import load_splits
    from cloudvox.featurefile import FeatureFile
    from cloudvox.inference import Predictor
    from cloudvox.runs import calibrate
    emit("uncertainty", "members_train_time", sum(_seconds(m) for m in run.glob("member-*")), "s", **common)
    emit("uncertainty", "folds_train_time", sum(_seconds(f) for f in run.glob("fold-*")), "s", **common)
    ff = FeatureFile(data)
    predictor = Predictor.load(run)
    meta = predictor.meta
    splits = load_splits(run, ff.ids)
    y_all = ff.prop(meta["target"]) * meta["target_scale"]
    raw = {s: predictor.on_file(ff, splits[s]) for s in ("val", "test", "holdout") if s in splits}
    folds = read_fold_residuals(run)
    methods = [("validation", None)] + ([("folds", folds)] if folds is not None else [])
    for method, cal in ((m, calibrate(raw["val"], y_all[splits["val"]], f)) for m, f in methods):
        emit("uncertainty", "calibration", json.dumps({k: v for k, v in cal.items() if k != "folds"}), "",
             method=method, **common)
        for split in (s for s in ("test", "holdout") if s in raw):
            p = predictor.finish(dataclasses.replace(raw[split], flags=list(raw[split].flags)), cal)
            err = np.abs(p.prediction - y_all[splits[split]])
            ok = np.isfinite(err) & np.isfinite(p.uncertainty)
            err, sigma, flags = err[ok], p.uncertainty[ok], [f for f, o in zip(p.flags, ok) if o]
            large, flagged = err > args.large, np.array([bool(f) for f in flags])
            info = dict(common, method=method, split=split, n=int(ok.sum()), n_large=int(large.sum()))
            emit("uncertainty", "coverage", float((err <= sigma).mean()), "fraction", **info)
            emit("uncertainty", "median_error_over_uncertainty", float(np.median(err / sigma)), "", **info)
            emit("uncertainty", "mae", float(err.mean()), "eV/atom", **info)
            emit("uncertainty", "mean_uncertainty", float(sigma.mean()), "eV/atom", **info)
            emit("uncertainty", "spearman_uncertainty_vs_abs_error", float(spearmanr(sigma, err).statistic), "",
                 **info)
            emit("uncertainty", "flagged_share", float(flagged.mean()), "fraction", **info)
            if large.any():
                emit("uncertainty", "large_errors_flagged_share", float(flagged[large].mean()), "fraction", **info)


if __name__ == "__main__":
    main()
