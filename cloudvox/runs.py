"""Workflows of a training run: prepare the data, train, evaluate a checkpoint, predict new structures.

A run directory holds ``config.yaml`` (the resolved config), ``split_{train,val,test}.txt`` (id lists),
``metrics.jsonl`` (one line per epoch), ``checkpoint_{last,best}.pt``, ``learning_curve.png``,
``parity_{train,val,test}.png``, ``evaluation.json`` and ``predictions.csv``.

The config and its defaults: :mod:`cloudvox.config`; what differs between models: :mod:`cloudvox.models.registry`
(the registry); the optimisation loop: :mod:`cloudvox.training`; predictions: :mod:`cloudvox.inference`; figures: :mod:`cloudvox.viz.runs`.
"""
import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from .calibration import read_fold_residuals, train_folds
from .config import RunConfig, load_run_config
from .data import HOLDOUT, Normalizer, element_counts, load_splits, save_splits, split_indices
from .inference import MEMBER, UNCERTAINTY_FILE, Predictions, Predictor, elements_of
from .uncertainty import CALIBRATION_FORMAT, DomainReference, fit_uncertainty, fit_uncertainty_folds, uncertainty
from .featurefile import DONE, FeatureFile
from .viz.runs import plot_learning_curve, plot_parity
from .models.registry import DESCRIPTOR_KEYS, get_model
from .training import SingleProcess, TrainConfig, Trainer
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)
__all__ = ["load_run_config", "prepare", "build_trainer", "train_run", "evaluate", "calibrate", "predict_structures",
           "predict_report"]


# --------------------------------------------------------------------------------------------------------
# building a run
# --------------------------------------------------------------------------------------------------------
def _groups(ff: FeatureFile, by: Optional[str], indices: np.ndarray) -> Optional[List[str]]:
    if not by:
        return None
    if f"structures/meta/{by}" in ff.h5:
        values = ff.meta(by)
    elif by == "formula":
        from .featurefile import decode
        values = decode(ff.h5["structures/formula"][...])
    else:
        raise DataError(f"cannot group by {by!r}: {ff.path} has no metadata field of that name")
    return [values[i] for i in indices]


def holds_elements(ff: FeatureFile, indices: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """(n,) whether each structure holds any of ``elements`` (symbols)."""
    if not len(elements):
        return np.zeros(len(indices), dtype=bool)
    from .elements import atomic_numbers
    return element_counts(ff, indices)[:, atomic_numbers(elements)].sum(1) > 0


def prepare(cfg: RunConfig, run_dir: Path, reuse_splits: bool, given: Optional[Dict[str, np.ndarray]] = None):
    """Feature file, usable indices, splits (saved or reused; ``given``: these, saved), normaliser and datasets
    of a run."""
    data = cfg.data
    if not data.path:
        raise ConfigError("data.path (the featurized .h5 file) is required")
    ff = FeatureFile(data.path)
    y_all = ff.prop(data.target) * float(data.scale)  # e.g. 23.0605: eV -> kcal/mol
    usable = np.flatnonzero((ff.status == DONE) & np.isfinite(y_all))
    ids = ff.ids
    if reuse_splits and (run_dir / "split_train.txt").exists():
        splits = load_splits(run_dir, ids)
    elif given is not None:  # a calibration fold's (cloudvox.calibration)
        splits = {k: np.asarray(v, dtype=np.int64) for k, v in given.items()}
        save_splits(run_dir, ids, splits)
    else:
        sp = data.split
        held = holds_elements(ff, usable, sp.hold_out or ())
        rest = usable[~held]
        local = split_indices(len(rest), sp.fractions, int(sp.seed), _groups(ff, sp.by, rest), sp.sizes)
        splits = {k: rest[v] for k, v in local.items()}
        if sp.hold_out:
            splits[HOLDOUT] = usable[held]
        save_splits(run_dir, ids, splits)
    counts = {k: element_counts(ff, v) for k, v in splits.items()}
    norm = Normalizer.fit(y_all[splits["train"]], counts["train"], data.normalize, extensive=data.extensive)
    targets = {k: norm.forward(y_all[v], counts[k]) for k, v in splits.items()}
    return ff, splits, norm, targets, counts


def model_channels(ff: FeatureFile, species: Optional[Sequence[str]]) -> List[str]:
    """The model's input channel list: species (element channels, with their cross-spectrum channels for a
    ``cross`` descriptor) or the file's fixed channels."""
    return ff.model_channels(species or None)


def build_trainer(cfg: Union[RunConfig, Dict], dist=None, resume: bool = False,
                  splits: Optional[Dict[str, np.ndarray]] = None):
    """The run's data, splits (``splits``: these), normaliser, model and :class:`Trainer`, ready to train (rank 0
    writes the resolved config and the splits of a new run). Returns (trainer, feature file, the checkpoint to
    resume from or None)."""
    dist = dist or SingleProcess()
    cfg = RunConfig.of(cfg)
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    last = run_dir / "checkpoint_last.pt"
    resume_from = last if (resume and last.exists()) else None
    if dist.is_main and not resume_from:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        ff, splits, norm, targets, counts = prepare(cfg, run_dir, reuse_splits=False, given=splits)
    dist.barrier()
    if not (dist.is_main and not resume_from):
        ff, splits, norm, targets, counts = prepare(cfg, run_dir, reuse_splits=True)
    counts_train = counts["train"]
    tcfg = cfg.train
    torch.manual_seed(tcfg.seed)
    spec = get_model(cfg.model)
    channels = model_channels(ff, cfg.data.species)
    meta = dict(model=cfg.model, network=dict(cfg.network), descriptor={k: ff.params.get(k) for k in DESCRIPTOR_KEYS},
                channels=channels, target=cfg.data.target, normalizer=norm.to_dict(), data=str(ff.path),
                unit=cfg.data.unit or _unit(ff, cfg.data.target), target_scale=float(cfg.data.scale), input_scale=None)
    meta["train_elements"] = elements_of(counts_train)  # the domain checks of evaluate / predict
    domain = DomainReference.fit(counts_train, counts["val"])
    meta["domain"] = domain.to_dict() if domain else None
    spec.prepare_meta(meta, ff, splits["train"])
    model = spec.build(meta)
    meta["network"] = model.config
    augment = cfg.augment.rotations
    train_set = spec.dataset(meta, ff.path, splits["train"], targets["train"], augment)
    val_set = spec.dataset(meta, ff.path, splits["val"], targets["val"], False)
    task = spec.task(meta, dataclasses.asdict(cfg.augment), tcfg.channels_last)
    trainer = Trainer(model, task, train_set, val_set, tcfg, run_dir, meta, dist, target_scale=norm.std)
    return trainer, ff, resume_from


def member_config(cfg: RunConfig, k: int) -> RunConfig:
    """Member k of an ensemble run: a complete run in RUN/member-k, seed + k, the same split (calibration folds,
    if any, belong to the ensemble: :func:`finish_ensemble`)."""
    return dataclasses.replace(cfg, run_dir=str(Path(cfg.run_dir) / MEMBER.format(k)),
                               train=dataclasses.replace(cfg.train, seed=cfg.train.seed + k, ensemble=1,
                                                         uncertainty="validation"))


def start_ensemble(cfg: RunConfig, dist) -> None:
    """Rank 0 writes the ensemble run's directory and resolved config; every rank waits for it."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    dist.barrier()


def train_members(cfg: RunConfig, dist, resume: bool, on_trainer, members: Sequence[int]) -> Optional[Dict]:
    """Train the given members one after the other (each over ``dist``); members already evaluated are skipped
    on ``resume``. Returns the summary of an interrupted member (``--resume`` continues it), else None."""
    for k in members:
        member = member_config(cfg, k)
        if resume and (Path(member.run_dir) / "evaluation.json").exists():
            continue  # finished before the interruption
        summary = train_run(member, dist, resume=resume, on_trainer=on_trainer)
        if summary.get("stopped"):
            return summary
    return None


def finish_ensemble(cfg: RunConfig, dist, resume: bool = False, on_trainer=None) -> Dict:
    """Every member done: the members' common split copied up, the calibration folds trained
    (``train.uncertainty: folds``), the ensemble evaluated in the parent run directory (mean and standard
    deviation of the members' predictions). Returns the summary of an interrupted fold instead."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        for split in (run_dir / MEMBER.format(0)).glob("split_*.txt"):
            shutil.copyfile(split, run_dir / split.name)
    dist.barrier()
    if cfg.train.uncertainty == "folds":
        stopped = train_folds(cfg, dist, train_run, resume, on_trainer)
        if stopped is not None:
            return stopped
    result = evaluate(run_dir, cfg.data.path, dist=dist)
    return dict(result, members=cfg.train.ensemble, stopped=False, history=[])


def _train_ensemble(cfg: RunConfig, dist, resume: bool, on_trainer) -> Dict:
    """K members one after the other, each data-parallel over every rank, then the ensemble evaluated
    (``train.members_over_ranks`` spreads them over the ranks instead: :mod:`hpc.ensemble`)."""
    start_ensemble(cfg, dist)
    stopped = train_members(cfg, dist, resume, on_trainer, range(cfg.train.ensemble))
    return stopped if stopped is not None else finish_ensemble(cfg, dist, resume, on_trainer)


def train_run(cfg: Union[RunConfig, Dict], dist=None, resume: bool = False, on_trainer=None,
              splits: Optional[Dict[str, np.ndarray]] = None) -> Dict:
    """Train a model as configured; rank 0 then evaluates the best checkpoint and draws the plots.
    ``train.ensemble`` K > 1 trains K members (:func:`_train_ensemble`); ``train.uncertainty: folds`` also
    trains the calibration folds (:mod:`cloudvox.calibration`) before the evaluation.

    dist: the distributed interface (default one process); on_trainer: called with the Trainer before
    training (e.g. to install signal handlers that request a checkpointed stop); splits: the run's splits
    (indices into the feature file, by split name) instead of the configured split (a calibration fold's)."""
    dist = dist or SingleProcess()
    cfg = RunConfig.of(cfg)
    if cfg.train.ensemble > 1:
        return _train_ensemble(cfg, dist, resume, on_trainer)
    trainer, ff, resume_from = build_trainer(cfg, dist, resume, splits)
    tcfg, run_dir = trainer.cfg, trainer.run_dir
    if on_trainer is not None:
        on_trainer(trainer)
    summary = trainer.fit(resume_from)
    dist.barrier()
    if summary["stopped"] or trainer.epoch < tcfg.epochs and not (tcfg.patience or summary["budget_reached"]):
        return summary  # interrupted: resume later; evaluation comes at the end
    if dist.is_main:
        plot_learning_curve(trainer.history, run_dir / "learning_curve.png", trainer.meta["unit"])
    if cfg.train.uncertainty == "folds":
        stopped = train_folds(cfg, dist, train_run, resume, on_trainer)
        if stopped is not None:
            return stopped
    result = evaluate(run_dir / "checkpoint_best.pt", ff.path, run_dir=run_dir, dist=dist, trainer_cfg=tcfg)
    summary.update(result)
    return summary


def _unit(ff: FeatureFile, target: str) -> str:
    try:
        return str(ff.h5[f"structures/props/{target}"].attrs.get("unit", ""))
    except KeyError:
        return ""


# --------------------------------------------------------------------------------------------------------
# evaluation and prediction (both through cloudvox.inference.Predictor)
# --------------------------------------------------------------------------------------------------------
def evaluate(run_or_checkpoint, data_path, run_dir: Optional[Path] = None, rotations: int = 0, dist=None,
             trainer_cfg: Optional[TrainConfig] = None, out_dir: Optional[Path] = None) -> Dict:
    """MAE / RMSE / R2 per split (the run's splits if the data is the run's, else one split "all"),
    a predictions CSV and parity plots; optional test-time rotation averaging over ``rotations`` random
    rotations, with the mean spread (std) of the predictions over them. On the run's own data the
    uncertainty is calibrated on the validation split and saved for ``predict`` (:data:`UNCERTAINTY_FILE`)."""
    dist = dist or SingleProcess()
    cfg = trainer_cfg or TrainConfig(batch_size=64)
    predictor = Predictor.load(run_or_checkpoint, dist.device(cfg.device), cfg.batch_size, dist,
                               amp=cfg.amp, channels_last=cfg.channels_last)
    ckpt, meta = predictor.checkpoints[0], predictor.meta
    run_dir = Path(run_dir) if run_dir else predictor.home
    out_dir = Path(out_dir) if out_dir else run_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ff = FeatureFile(data_path)
    y_all = ff.prop(meta["target"]) * meta["target_scale"] if meta["target"] in ff.prop_names \
        else np.full(ff.n, np.nan)
    done = np.flatnonzero(ff.status == DONE)
    try:
        splits = load_splits(run_dir, ff.ids) if (run_dir / "split_train.txt").exists() and \
            Path(meta["data"]).resolve() == Path(data_path).resolve() else {"all": done}
    except ValueError:
        splits = {"all": done}
    results = {name: predictor.on_file(ff, idx, rotations, seed=cfg.seed) for name, idx in splits.items()}
    cal = None
    if "val" in results:  # the run's own data: calibrate on its validation split (and folds), keep it for predict
        cal = calibrate(results["val"], y_all[splits["val"]], read_fold_residuals(run_dir))
        if cal is not None and dist.is_main:
            (predictor.home / UNCERTAINTY_FILE).write_text(json.dumps(cal))
    rows, metrics = [], {}
    ids = ff.ids
    unit = meta["unit"]
    for name, p in results.items():
        predictor.finish(p, cal)
        idx, y = splits[name], y_all[splits[name]]
        err = p.prediction - y
        ok = np.isfinite(y) & np.isfinite(p.prediction)
        m = dict(n=int(len(idx)), flagged=int(sum(bool(f) for f in p.flags)), not_predicted=int((~p.usable).sum()))
        if ok.any():
            m.update(mae=float(np.abs(err[ok]).mean()), rmse=float(np.sqrt((err[ok] ** 2).mean())),
                     r2=float(1 - (err[ok] ** 2).sum() / max(((y[ok] - y[ok].mean()) ** 2).sum(), 1e-300)))
        if rotations:
            m.update(rotations=rotations,
                     mean_spread=float(np.nanmean(p.rotation_spread)) if p.usable.any() else float("nan"))
        if len(predictor.members) > 1 and p.usable.any():
            m.update(members=len(predictor.members), mean_ensemble_std=float(np.nanmean(p.ensemble_std)))
        if p.usable.any():
            m.update(mean_uncertainty=float(np.nanmean(p.uncertainty)))
        metrics[name] = m
        rows += [(name, ids[i], float(y[k]), float(p.prediction[k]), float(p.rotation_spread[k]),
                  float(p.ensemble_std[k]), float(p.uncertainty[k]), p.flags[k]) for k, i in enumerate(idx)]
        if dist.is_main and ok.any():
            plot_parity(y[ok], p.prediction[ok], out_dir / f"parity_{name}.png", f"{name}: MAE {m['mae']:.3f} {unit}",
                        unit)
    if dist.is_main:
        with open(out_dir / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "id", "target", "prediction", "rotation_spread", "ensemble_std", "uncertainty", "flag"])
            w.writerows(rows)
        (out_dir / "evaluation.json").write_text(json.dumps(dict(checkpoint=str(ckpt), data=str(data_path),
                                                                 unit=unit, metrics=metrics), indent=1))
    return dict(metrics=metrics, unit=unit)


UNCERTAINTY_QUANTILE = 0.95  # the flag threshold: this quantile of the validation split's uncertainty


def calibrate(val: Predictions, y: np.ndarray, folds: Optional[Dict] = None) -> Optional[Dict]:
    """The uncertainty calibration from the validation split's predictions and targets, with the flag threshold:
    on the validation split alone (:func:`cloudvox.uncertainty.fit_uncertainty`), or with the calibration
    folds' held-out residuals (``folds``, :func:`cloudvox.calibration.read_fold_residuals`;
    :func:`cloudvox.uncertainty.fit_uncertainty_folds`). None with fewer than 10 usable validation structures
    or without a domain reference."""
    ok = val.usable & np.isfinite(val.prediction) & np.isfinite(y)
    if ok.sum() < 10 or val.distance is None:
        return None
    if folds is None or not len(folds["residual"]):
        known = np.sqrt(np.nan_to_num(val.ensemble_std[ok]) ** 2 + val.extrapolation[ok] ** 2)
        cal = fit_uncertainty((val.prediction - y)[ok], known, val.distance[ok])
        cal.update(method="validation")
    else:
        n = len(folds["residual"])
        cal = fit_uncertainty_folds(
            ((val.prediction - y)[ok], np.nan_to_num(val.ensemble_std[ok]), val.distance[ok], val.extrapolation[ok]),
            (folds["residual"], np.zeros(n), folds["distance"], folds["extrapolation"]))
        cal.update(method="folds", folds=folds["folds"])
    sigma = uncertainty(val.ensemble_std[ok], val.distance[ok], cal, val.extrapolation[ok])
    cal.update(threshold=float(np.quantile(sigma, UNCERTAINTY_QUANTILE)), quantile=UNCERTAINTY_QUANTILE,
               format=CALIBRATION_FORMAT)
    return cal


def predict_report(checkpoint, structures, batch_size: int = 64):
    """For in-memory structures (a run, a checkpoint or an ensemble run): predictions in target units (the
    members' mean; NaN where the model cannot represent a structure), their uncertainty (calibrated 1-sigma,
    :meth:`Predictor.finish`) and one flag per structure (:func:`cloudvox.inference.domain_flags`)."""
    predictor = Predictor.load(checkpoint, batch_size=batch_size)
    p = predictor.finish(predictor.on_structures(structures))
    return p.prediction, p.uncertainty, p.flags


def predict_structures(checkpoint, structures, batch_size: int = 64) -> np.ndarray:
    """Predictions (target units) for in-memory structures, NaN where the model cannot represent one (see
    :func:`predict_report` for the reasons)."""
    return predict_report(checkpoint, structures, batch_size)[0]
