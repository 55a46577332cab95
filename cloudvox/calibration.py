"""The uncertainty calibrated on held-out chemistry: leave-chemistry-out folds of a run's own training data.

With ``train.uncertainty: folds`` a run (one model or an ensemble) also trains ``train.uncertainty_folds`` small
runs, RUN/fold-k: fold k is the run's config with the elements of group k held out
(:func:`cloudvox.uncertainty.element_folds`: neighbouring periodic-table families, about equal structure counts),
trained for ``train.uncertainty_epochs`` (default half the run's) on the run's training structures without
those elements, validated on its validation structures without them. Each fold then predicts the run's
training and validation structures that hold its elements: errors on chemistry its training never saw, with
its own distance to its training set and its own baseline's extrapolation term. Those residuals
(RUN/fold_residuals.json) and the run's validation residuals together calibrate the uncertainty
(:func:`cloudvox.uncertainty.fit_uncertainty_folds`: 68.3 % of each covered), so its growth off the training
set is learned from extrapolation. The run's test split is never used, nor any held-out split of the run.

Cost: each fold trains on about 60 % of the training set for half the epochs: five folds took 1.3-2.3 times a
member's training time (0.43-0.77 of three members', docs/accuracy.md).
"""
import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import RunConfig
from .data import HOLDOUT, element_counts, load_splits
from .elements import atomic_numbers
from .errors import DataError
from .featurefile import FeatureFile
from .inference import Predictor
from .uncertainty import element_folds

log = logging.getLogger(__name__)

FOLD = "fold-{}"  # fold k's run directory, inside the run's
FOLD_RESIDUALS = "fold_residuals.json"  # the folds' held-out residuals, inside the run's directory
FOLD_RESIDUALS_FORMAT = 1


def fold_splits(held: np.ndarray, splits: Dict[str, np.ndarray], held_val: np.ndarray) -> Dict[str, np.ndarray]:
    """A fold's splits from the run's: training and validation structures without the fold's elements (``held``,
    ``held_val``: (n_train,), (n_val,) bool, whether each holds one), and the rest of them held out. A fold is
    not reported: its test split is its validation split."""
    train, val = splits["train"], splits["val"]
    return {"train": train[~held], "val": val[~held_val], "test": val[~held_val],
            HOLDOUT: np.concatenate([train[held], val[held_val]])}


def fold_config(cfg: RunConfig, k: int, elements: List[str]) -> RunConfig:
    """Fold k of a run: its config with ``elements`` held out, one model (seed + 1000 + k), the fold's epochs,
    calibrated on its validation split alone (no folds of its own), in RUN/fold-k."""
    t = cfg.train
    epochs = t.uncertainty_epochs or max(1, t.epochs // 2)
    return dataclasses.replace(
        cfg, run_dir=str(Path(cfg.run_dir) / FOLD.format(k)),
        data=dataclasses.replace(cfg.data, split=dataclasses.replace(cfg.data.split, hold_out=list(elements))),
        train=dataclasses.replace(t, seed=t.seed + 1000 + k, ensemble=1, epochs=epochs, uncertainty="validation",
                                  members_over_ranks=False))


def train_folds(cfg: RunConfig, dist, train_run, resume: bool = False, on_trainer=None) -> Optional[Dict]:
    """Train the run's folds one after the other with ``train_run`` (:func:`cloudvox.runs.train_run`, each over
    ``dist``; folds already evaluated are skipped on ``resume``), then rank 0 writes their held-out residuals
    (:data:`FOLD_RESIDUALS`). The run's splits must be saved in its directory. Returns the summary of an
    interrupted fold (``--resume`` continues it), else None."""
    run_dir = Path(cfg.run_dir)
    ff = FeatureFile(cfg.data.path)
    splits = load_splits(run_dir, ff.ids)
    counts = {k: element_counts(ff, splits[k]) for k in ("train", "val")}
    groups = element_folds(counts["train"], cfg.train.uncertainty_folds)
    if len(groups) < 2:
        raise DataError(f"train.uncertainty: folds needs elements to hold out; the training set of {cfg.run_dir} "
                        f"has {len(groups)} group(s) (set train.uncertainty: validation)")
    folds = []
    for k, elements in enumerate(groups):
        zs = atomic_numbers(elements)
        held = {s: counts[s][:, zs].sum(1) > 0 for s in ("train", "val")}
        fs = fold_splits(held["train"], splits, held["val"])
        fcfg = fold_config(cfg, k, elements)
        fdir = Path(fcfg.run_dir)
        if not (resume and (fdir / "evaluation.json").exists()):
            log.info("uncertainty fold %d of %d: %s held out (%d structures), %d training structures",
                     k + 1, len(groups), " ".join(elements), len(fs[HOLDOUT]), len(fs["train"]))
            summary = train_run(fcfg, dist, resume=resume, on_trainer=on_trainer, splits=fs)
            if summary.get("stopped"):
                return summary
        folds.append((fdir, elements, fs[HOLDOUT]))
    if dist.is_main:
        write_fold_residuals(run_dir, ff, folds, cfg.data.target)
    dist.barrier()
    return None


def write_fold_residuals(run_dir: Path, ff: FeatureFile, folds, target: str) -> Dict:
    """Each fold's predictions of its held-out structures: residual (prediction - target, target units), the
    distance to the fold's training set and the fold's baseline extrapolation term, in :data:`FOLD_RESIDUALS`."""
    out = dict(format=FOLD_RESIDUALS_FORMAT, folds=[], residual=[], distance=[], extrapolation=[])
    for fdir, elements, idx in folds:
        predictor = Predictor.load(fdir)
        p = predictor.on_file(ff, idx)
        y = ff.prop(target)[idx] * predictor.meta["target_scale"]
        ok = p.usable & np.isfinite(p.prediction) & np.isfinite(y)
        distance = p.distance if p.distance is not None else np.zeros(len(idx))
        out["folds"].append(dict(run=fdir.name, elements=list(elements), n=int(ok.sum()),
                                 mae=float(np.abs(p.prediction - y)[ok].mean()) if ok.any() else None))
        for key, v in (("residual", p.prediction - y), ("distance", distance), ("extrapolation", p.extrapolation)):
            out[key] += np.round(v[ok], 6).tolist()
    (Path(run_dir) / FOLD_RESIDUALS).write_text(json.dumps(out))
    return out


def read_fold_residuals(run_dir: Path) -> Optional[Dict[str, np.ndarray]]:
    """The folds' held-out residuals of a run (:data:`FOLD_RESIDUALS`), or None without folds."""
    path = Path(run_dir) / FOLD_RESIDUALS
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    if d.get("format") != FOLD_RESIDUALS_FORMAT:
        raise DataError(f"{path} has format {d.get('format')}, this cloudvox reads {FOLD_RESIDUALS_FORMAT}: "
                        "retrain the folds (cloudvox train ... --set train.uncertainty=folds)")
    return dict(folds=d["folds"], **{k: np.asarray(d[k], dtype=np.float64)
                                     for k in ("residual", "distance", "extrapolation")})


__all__ = ["FOLD", "FOLD_RESIDUALS", "fold_splits", "fold_config", "train_folds", "read_fold_residuals"]
