"""Workflows of a training run: prepare the data, train, evaluate a checkpoint, predict new structures.

A run directory holds ``config.yaml`` (the resolved config), ``split_{train,val,test}.txt`` (id lists),
``metrics.jsonl`` (one line per epoch), ``checkpoint_{last,best}.pt``, ``learning_curve.png``,
``parity_{train,val,test}.png``, ``evaluation.json`` and ``predictions.csv``.

The config and its defaults: :mod:`cloudvox.config`; what differs between models: :mod:`cloudvox.tasks`
(the registry); the optimisation loop: :mod:`cloudvox.train`; figures: :mod:`cloudvox.plots`.
"""
import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

from .config import load_run_config
from .data import Normalizer, element_counts, load_splits, save_splits, split_indices
from .features import DONE, FeatureFile
from .plots import plot_learning_curve, plot_parity
from .tasks import DESCRIPTOR_KEYS, get_model
from .train import SingleProcess, TrainConfig, Trainer, load_checkpoint

log = logging.getLogger(__name__)
__all__ = ["load_run_config", "prepare", "build_trainer", "train_run", "evaluate", "predict_structures", "load_model"]


# --------------------------------------------------------------------------------------------------------
# building a run
# --------------------------------------------------------------------------------------------------------
def _groups(ff: FeatureFile, by: Optional[str], indices: np.ndarray) -> Optional[List[str]]:
    if not by:
        return None
    if f"structures/meta/{by}" in ff.h5:
        values = ff.meta(by)
    elif by == "formula":
        from .features import decode
        values = decode(ff.h5["structures/formula"][...])
    else:
        raise ValueError(f"cannot group by {by!r}: {ff.path} has no metadata field of that name")
    return [values[i] for i in indices]


def prepare(cfg: Dict, run_dir: Path, reuse_splits: bool):
    """Feature file, usable indices, splits (saved or reused), normaliser and datasets of a run."""
    data = cfg["data"]
    if not data.get("path"):
        raise ValueError("data.path (the featurized .h5 file) is required")
    ff = FeatureFile(data["path"])
    y_all = ff.prop(data["target"]) * float(data.get("scale", 1.0))  # e.g. 23.0605: eV -> kcal/mol
    usable = np.flatnonzero((ff.status == DONE) & np.isfinite(y_all))
    ids = ff.ids
    if reuse_splits and (run_dir / "split_train.txt").exists():
        splits = load_splits(run_dir, ids)
    else:
        sp = data["split"]
        local = split_indices(len(usable), sp.get("fractions", [0.8, 0.1, 0.1]), int(sp.get("seed", 0)),
                              _groups(ff, sp.get("by"), usable), sp.get("sizes"))
        splits = {k: usable[v] for k, v in local.items()}
        save_splits(run_dir, ids, splits)
    counts = {k: element_counts(ff, v) for k, v in splits.items()}
    norm = Normalizer.fit(y_all[splits["train"]], counts["train"], data.get("normalize", "mean_std"),
                          extensive=bool(data.get("extensive", False)))
    targets = {k: norm.forward(y_all[v], counts[k]) for k, v in splits.items()}
    return ff, splits, norm, targets, counts


def model_channels(ff: FeatureFile, species: Optional[Sequence[str]]) -> List[str]:
    """The model's input channel list: species (element channels, with their cross-spectrum channels for a
    ``cross`` descriptor) or the file's fixed channels."""
    return ff.model_channels(species or None)


def build_trainer(cfg: Dict, dist=None, resume: bool = False):
    """The run's data, splits, normaliser, model and :class:`Trainer`, ready to train (rank 0 writes the
    resolved config and the splits of a new run). Returns (trainer, feature file, the checkpoint to resume
    from or None)."""
    dist = dist or SingleProcess()
    run_dir = Path(cfg["run_dir"])
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    last = run_dir / "checkpoint_last.pt"
    resume_from = last if (resume and last.exists()) else None
    if dist.is_main and not resume_from:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        ff, splits, norm, targets, _ = prepare(cfg, run_dir, reuse_splits=False)
    dist.barrier()
    if not (dist.is_main and not resume_from):
        ff, splits, norm, targets, _ = prepare(cfg, run_dir, reuse_splits=True)
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    spec = get_model(cfg["model"])
    channels = model_channels(ff, cfg["data"].get("species"))
    meta = dict(model=cfg["model"], network=dict(cfg["network"]), descriptor={k: ff.params.get(k) for k in DESCRIPTOR_KEYS},
                channels=channels, target=cfg["data"]["target"], normalizer=norm.to_dict(), data=str(ff.path),
                unit=cfg["data"].get("unit") or _unit(ff, cfg["data"]["target"]),
                target_scale=float(cfg["data"].get("scale", 1.0)), input_scale=None)
    spec.prepare_meta(meta, ff, splits["train"])
    model = spec.build(meta)
    meta["network"] = model.config
    augment = bool(cfg["augment"].get("rotations", True))
    train_set = spec.dataset(meta, ff.path, splits["train"], targets["train"], augment)
    val_set = spec.dataset(meta, ff.path, splits["val"], targets["val"], False)
    task = spec.task(meta, cfg["augment"], tcfg.channels_last)
    trainer = Trainer(model, task, train_set, val_set, tcfg, run_dir, meta, dist, target_scale=norm.std)
    return trainer, ff, resume_from


def train_run(cfg: Dict, dist=None, resume: bool = False, on_trainer=None) -> Dict:
    """Train a model as configured; rank 0 then evaluates the best checkpoint and draws the plots.

    dist: the distributed interface (default one process); on_trainer: called with the Trainer before
    training (e.g. to install signal handlers that request a checkpointed stop)."""
    dist = dist or SingleProcess()
    trainer, ff, resume_from = build_trainer(cfg, dist, resume)
    tcfg, run_dir = trainer.cfg, trainer.run_dir
    if on_trainer is not None:
        on_trainer(trainer)
    summary = trainer.fit(resume_from)
    dist.barrier()
    if summary["stopped"] or trainer.epoch < tcfg.epochs and not tcfg.patience:
        return summary  # interrupted: resume later; evaluation comes at the end
    if dist.is_main:
        plot_learning_curve(trainer.history, run_dir / "learning_curve.png", trainer.meta["unit"])
    result = evaluate(run_dir / "checkpoint_best.pt", ff.path, run_dir=run_dir, dist=dist, trainer_cfg=tcfg)
    summary.update(result)
    return summary


def _unit(ff: FeatureFile, target: str) -> str:
    try:
        return str(ff.h5[f"structures/props/{target}"].attrs.get("unit", ""))
    except KeyError:
        return ""


# --------------------------------------------------------------------------------------------------------
# evaluation and prediction
# --------------------------------------------------------------------------------------------------------
def load_model(checkpoint: Path, device: torch.device = torch.device("cpu")):
    ck = load_checkpoint(checkpoint, map_location=device)
    meta = json.loads(ck["meta"])
    model = get_model(meta["model"]).build(meta)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), meta, ck


def _resolve_checkpoint(run_or_checkpoint) -> Path:
    p = Path(run_or_checkpoint)
    if p.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p} holds no checkpoint_best.pt or checkpoint_last.pt")
    return p


def evaluate(run_or_checkpoint, data_path, run_dir: Optional[Path] = None, rotations: int = 0, dist=None,
             trainer_cfg: Optional[TrainConfig] = None, out_dir: Optional[Path] = None) -> Dict:
    """MAE / RMSE / R2 per split (the run's splits if the data is the run's, else one split "all"),
    a predictions CSV and parity plots; optional test-time rotation averaging over ``rotations`` random
    rotations, with the mean spread (std) of the predictions over them."""
    dist = dist or SingleProcess()
    ckpt = _resolve_checkpoint(run_or_checkpoint)
    run_dir = Path(run_dir) if run_dir else ckpt.parent
    out_dir = Path(out_dir) if out_dir else run_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    model, meta, _ = load_model(ckpt)
    ff = FeatureFile(data_path)
    spec = get_model(meta["model"])
    spec.check_data(meta, ff)
    norm = Normalizer(**meta["normalizer"])
    y_all = ff.prop(meta["target"]) * meta.get("target_scale", 1.0) if meta["target"] in ff.prop_names \
        else np.full(ff.n, np.nan)
    done = np.flatnonzero(ff.status == DONE)
    try:
        splits = load_splits(run_dir, ff.ids) if (run_dir / "split_train.txt").exists() and \
            Path(meta["data"]).resolve() == Path(data_path).resolve() else {"all": done}
    except ValueError:
        splits = {"all": done}
    cfg = trainer_cfg or TrainConfig(batch_size=64)
    task = spec.task(meta, {"rotations": rotations > 0}, cfg.channels_last)
    trainer = Trainer(model, task, [], [], cfg, out_dir, meta, dist, target_scale=norm.std)
    rows, metrics = [], {}
    ids = ff.ids
    for name, idx in splits.items():
        counts = element_counts(ff, idx)
        yn = norm.forward(y_all[idx], counts)
        ds = spec.dataset(meta, ff.path, idx, yn, rotations > 0)
        pred_n, _, spread_n = trainer.predict(ds, rotations)
        pred = norm.inverse(pred_n, counts)
        y = y_all[idx]
        err = pred - y
        ok = np.isfinite(y)
        m = dict(n=int(len(idx)))
        if ok.any():
            m.update(mae=float(np.abs(err[ok]).mean()), rmse=float(np.sqrt((err[ok] ** 2).mean())),
                     r2=float(1 - (err[ok] ** 2).sum() / max(((y[ok] - y[ok].mean()) ** 2).sum(), 1e-300)))
        if rotations:
            m.update(rotations=rotations, mean_spread=float((spread_n * norm.std).mean()))
        metrics[name] = m
        rows += [(name, ids[i], float(y[k]), float(pred[k]), float(spread_n[k] * norm.std)) for k, i in enumerate(idx)]
        if dist.is_main and ok.any():
            plot_parity(y[ok], pred[ok], out_dir / f"parity_{name}.png", f"{name}: MAE {m['mae']:.3f} {meta.get('unit', '')}",
                        meta.get("unit", ""))
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "id", "target", "prediction", "rotation_spread"])
            w.writerows(rows)
        (out_dir / "evaluation.json").write_text(json.dumps(dict(checkpoint=str(ckpt), data=str(data_path),
                                                                 unit=meta.get("unit", ""), metrics=metrics), indent=1))
    return dict(metrics=metrics, unit=meta.get("unit", ""))


def element_count_matrix(structures) -> np.ndarray:
    """(n, 119) atoms of each element per structure (the composition baseline's input)."""
    counts = np.zeros((len(structures), 119))
    for k, s in enumerate(structures):
        np.add.at(counts[k], s.numbers, 1)
    return counts


def predict_structures(checkpoint, structures, batch_size: int = 64) -> np.ndarray:
    """Predictions (target units) for in-memory structures, computed as the checkpoint's model reads them."""
    model, meta, _ = load_model(_resolve_checkpoint(checkpoint))
    norm = Normalizer(**meta["normalizer"])
    pred = get_model(meta["model"]).predict(model, meta, list(structures), batch_size)
    return norm.inverse(pred, element_count_matrix(structures)) if len(structures) else np.zeros(0)
