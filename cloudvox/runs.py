"""Workflows of a training run: prepare the data, train, evaluate a checkpoint, predict new structures.

A run directory holds ``config.yaml`` (the resolved config), ``split_{train,val,test}.txt`` (id lists),
``metrics.jsonl`` (one line per epoch), ``checkpoint_{last,best}.pt``, ``learning_curve.png``,
``parity_{train,val,test}.png``, ``evaluation.json`` and ``predictions.csv``.

The config and its defaults: :mod:`cloudvox.config`; what differs between models: :mod:`cloudvox.models.registry`
(the registry); the optimisation loop: :mod:`cloudvox.train`; figures: :mod:`cloudvox.plots`.
"""
import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

from .config import load_run_config
from .data import HOLDOUT, Normalizer, element_counts, load_splits, save_splits, split_indices
from .uncertainty import DomainReference, fit_uncertainty, uncertainty
from .features import DONE, FeatureFile
from .plots import plot_learning_curve, plot_parity
from .models.registry import DESCRIPTOR_KEYS, get_model
from .train import MemberProcess, SingleProcess, TrainConfig, Trainer, load_checkpoint
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)
__all__ = ["load_run_config", "prepare", "build_trainer", "train_run", "evaluate", "predict_structures",
           "predict_report", "domain_flags", "load_model"]


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
        raise DataError(f"cannot group by {by!r}: {ff.path} has no metadata field of that name")
    return [values[i] for i in indices]


def holds_elements(ff: FeatureFile, indices: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """(n,) whether each structure holds any of ``elements`` (symbols)."""
    if not len(elements):
        return np.zeros(len(indices), dtype=bool)
    from .elements import atomic_numbers
    return element_counts(ff, indices)[:, atomic_numbers(elements)].sum(1) > 0


def prepare(cfg: Dict, run_dir: Path, reuse_splits: bool):
    """Feature file, usable indices, splits (saved or reused), normaliser and datasets of a run."""
    data = cfg["data"]
    if not data.get("path"):
        raise ConfigError("data.path (the featurized .h5 file) is required")
    ff = FeatureFile(data["path"])
    y_all = ff.prop(data["target"]) * float(data.get("scale", 1.0))  # e.g. 23.0605: eV -> kcal/mol
    usable = np.flatnonzero((ff.status == DONE) & np.isfinite(y_all))
    ids = ff.ids
    if reuse_splits and (run_dir / "split_train.txt").exists():
        splits = load_splits(run_dir, ids)
    else:
        sp = data["split"]
        held = holds_elements(ff, usable, sp.get("hold_out") or ())
        rest = usable[~held]
        local = split_indices(len(rest), sp.get("fractions", [0.8, 0.1, 0.1]), int(sp.get("seed", 0)),
                              _groups(ff, sp.get("by"), rest), sp.get("sizes"))
        splits = {k: rest[v] for k, v in local.items()}
        if sp.get("hold_out"):
            splits[HOLDOUT] = usable[held]
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
        ff, splits, norm, targets, counts = prepare(cfg, run_dir, reuse_splits=False)
    dist.barrier()
    if not (dist.is_main and not resume_from):
        ff, splits, norm, targets, counts = prepare(cfg, run_dir, reuse_splits=True)
    counts_train = counts["train"]
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    spec = get_model(cfg["model"])
    channels = model_channels(ff, cfg["data"].get("species"))
    meta = dict(model=cfg["model"], network=dict(cfg["network"]), descriptor={k: ff.params.get(k) for k in DESCRIPTOR_KEYS},
                channels=channels, target=cfg["data"]["target"], normalizer=norm.to_dict(), data=str(ff.path),
                unit=cfg["data"].get("unit") or _unit(ff, cfg["data"]["target"]),
                target_scale=float(cfg["data"].get("scale", 1.0)), input_scale=None)
    meta["train_elements"] = elements_of(counts_train)  # the domain checks of evaluate / predict
    domain = DomainReference.fit(counts_train, counts["val"])
    meta["domain"] = domain.to_dict() if domain else None
    spec.prepare_meta(meta, ff, splits["train"])
    model = spec.build(meta)
    meta["network"] = model.config
    augment = bool(cfg["augment"].get("rotations", True))
    train_set = spec.dataset(meta, ff.path, splits["train"], targets["train"], augment)
    val_set = spec.dataset(meta, ff.path, splits["val"], targets["val"], False)
    task = spec.task(meta, cfg["augment"], tcfg.channels_last)
    trainer = Trainer(model, task, train_set, val_set, tcfg, run_dir, meta, dist, target_scale=norm.std)
    return trainer, ff, resume_from


MEMBER = "member-{}"  # an ensemble's members: RUN/member-0, RUN/member-1, ...


def ensemble_members(run_dir: Path) -> List[Path]:
    """The member run directories of an ensemble run (empty for a single model)."""
    members, k = [], 0
    while (Path(run_dir) / MEMBER.format(k)).is_dir():
        members.append(Path(run_dir) / MEMBER.format(k))
        k += 1
    return members


STOPPED_RANK = "stopped-rank-{}"  # members over ranks: rank r was stopped before its members were done


def _wait_for_members(run_dir: Path, k_members: int, poll_s: float = 2.0) -> bool:
    """Members over ranks: wait, reading the run directory, until every member is evaluated (True) or a rank
    was stopped (False). A file system wait, not a collective: ranks whose members end hours apart would
    outlast a process group's timeout (DDP's 30 minutes) in a barrier; once all are done they meet within
    ``poll_s``."""
    import time
    while True:
        if any(run_dir.glob(STOPPED_RANK.format("*"))):
            return False
        if all((run_dir / MEMBER.format(k) / "evaluation.json").exists() for k in range(k_members)):
            return True
        time.sleep(poll_s)


def _train_ensemble(cfg: Dict, dist, resume: bool, on_trainer, k_members: int) -> Dict:
    """K members (each a complete run: seed + k, the same split), then the ensemble evaluated in the parent run
    directory (mean and standard deviation of the members' predictions). By default the members train one
    after the other, each data-parallel over every rank; with ``train.members_over_ranks`` member k trains
    alone on rank k % ranks (:class:`cloudvox.train.MemberProcess`), and the ranks meet once, when all are done."""
    import copy
    run_dir = Path(cfg["run_dir"])
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    spread = bool(cfg["train"].get("members_over_ranks")) and dist.size > 1
    if spread:
        if k_members % dist.size:
            log.warning("%d members over %d ranks: some ranks train one member more, the others wait for them",
                        k_members, dist.size)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOPPED_RANK.format(dist.rank)).unlink(missing_ok=True)  # an earlier job's
        dist.barrier()  # the ranks start together: no rank can see another's stale marker
    stopped = None
    for k in range(k_members):
        if spread and k % dist.size != dist.rank:
            continue
        member = copy.deepcopy(cfg)
        member["run_dir"] = str(run_dir / MEMBER.format(k))
        member["train"] = dict(cfg["train"], seed=int(cfg["train"].get("seed", 0)) + k, ensemble=1)
        if resume and (Path(member["run_dir"]) / "evaluation.json").exists():
            continue  # finished before the interruption
        summary = train_run(member, MemberProcess(dist.rank, dist.local_rank) if spread else dist, resume=resume,
                            on_trainer=on_trainer)
        if summary.get("stopped"):
            stopped = summary  # interrupted: --resume continues with this member
            break
    if spread and stopped is not None:  # the others learn of it from the marker, when their members are done
        (run_dir / STOPPED_RANK.format(dist.rank)).write_text(f"{stopped.get('epoch', '')}\n")
    if stopped is not None:
        return stopped
    if spread and not _wait_for_members(run_dir, k_members):
        return dict(stopped=True, history=[])  # another rank was stopped: --resume continues its member
    if dist.is_main:
        for split in (run_dir / MEMBER.format(0)).glob("split_*.txt"):  # the members' common split
            shutil.copyfile(split, run_dir / split.name)
    dist.barrier()
    result = evaluate(run_dir, cfg["data"]["path"], dist=dist)
    return dict(result, members=k_members, stopped=False, history=[])


def train_run(cfg: Dict, dist=None, resume: bool = False, on_trainer=None) -> Dict:
    """Train a model as configured; rank 0 then evaluates the best checkpoint and draws the plots.
    ``train.ensemble`` K > 1 trains K members (:func:`_train_ensemble`).

    dist: the distributed interface (default one process); on_trainer: called with the Trainer before
    training (e.g. to install signal handlers that request a checkpointed stop)."""
    dist = dist or SingleProcess()
    k_members = int(cfg["train"].get("ensemble", 1) or 1)
    if k_members > 1:
        return _train_ensemble(cfg, dist, resume, on_trainer, k_members)
    trainer, ff, resume_from = build_trainer(cfg, dist, resume)
    tcfg, run_dir = trainer.cfg, trainer.run_dir
    if on_trainer is not None:
        on_trainer(trainer)
    summary = trainer.fit(resume_from)
    dist.barrier()
    if summary["stopped"] or trainer.epoch < tcfg.epochs and not (tcfg.patience or summary["budget_reached"]):
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


def _checkpoints(run_or_checkpoint) -> List[Path]:
    """The checkpoint of a run or the checkpoints of an ensemble's members."""
    members = ensemble_members(Path(run_or_checkpoint)) if Path(run_or_checkpoint).is_dir() else []
    return [_resolve_checkpoint(m) for m in members] or [_resolve_checkpoint(run_or_checkpoint)]


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
    ckpts = _checkpoints(run_or_checkpoint)
    ckpt = ckpts[0]
    run_dir = Path(run_dir) if run_dir else (Path(run_or_checkpoint) if len(ckpts) > 1 else ckpt.parent)
    out_dir = Path(out_dir) if out_dir else run_dir
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    members = [load_model(c)[:2] for c in ckpts]  # (model, meta) of each member
    meta = members[0][1]
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
    trainers = [(Trainer(m, task, [], [], cfg, out_dir, mm, dist, target_scale=norm.std), Normalizer(**mm["normalizer"]))
                for m, mm in members]
    results, extrap = {}, {}
    for name, idx in splits.items():
        counts = element_counts(ff, idx)
        distance = domain_distance(meta, counts)
        flags, usable = domain_flags(spec, meta, [elements_of(c[None]) for c in counts], distance)
        extrap[name] = norm.extrapolation_std(counts)
        pred, spread, std = (np.full(len(idx), np.nan) for _ in range(3))
        if usable.any():  # structures the model cannot represent are reported, not predicted
            yn = norm.forward(y_all[idx[usable]], counts[usable])
            ds = spec.dataset(meta, ff.path, idx[usable], yn, rotations > 0)
            each, spreads = [], []
            for trainer, member_norm in trainers:  # one model, or the ensemble's members
                pred_n, _, spread_n = trainer.predict(ds, rotations)
                each.append(member_norm.inverse(pred_n, counts[usable]))
                spreads.append(spread_n * member_norm.std)
            pred[usable], spread[usable] = np.mean(each, 0), np.mean(spreads, 0)
            std[usable] = np.std(each, 0)
        results[name] = (idx, flags, usable, pred, spread, std, distance)
    cal_file = (Path(run_or_checkpoint) if len(ckpts) > 1 else ckpt.parent) / UNCERTAINTY_FILE
    cal = None
    if "val" in results:  # the run's own data: calibrate on its validation split, keep it for predict
        idx, _, usable, pred, _, std, distance = results["val"]
        ok = usable & np.isfinite(pred) & np.isfinite(y_all[idx])
        if ok.sum() >= 10 and distance is not None:
            known = np.sqrt(np.nan_to_num(std[ok]) ** 2 + extrap["val"][ok] ** 2)
            cal = fit_uncertainty((pred - y_all[idx])[ok], known, distance[ok])
            cal.update(threshold=float(np.quantile(uncertainty(std[ok], distance[ok], cal, extrap["val"][ok]),
                                                   UNCERTAINTY_QUANTILE)),
                       quantile=UNCERTAINTY_QUANTILE)
            if dist.is_main:
                cal_file.write_text(json.dumps(cal))
    elif cal_file.exists():
        cal = json.loads(cal_file.read_text())
    rows, metrics = [], {}
    ids = ff.ids
    for name, (idx, flags, usable, pred, spread, std, distance) in results.items():
        sigma = uncertainty(std, distance, cal, extrap[name])
        if cal is not None:
            uncertainty_flags(flags, sigma, cal["threshold"])
        y = y_all[idx]
        err = pred - y
        ok = np.isfinite(y) & np.isfinite(pred)
        m = dict(n=int(len(idx)), flagged=int(sum(bool(f) for f in flags)), not_predicted=int((~usable).sum()))
        if ok.any():
            m.update(mae=float(np.abs(err[ok]).mean()), rmse=float(np.sqrt((err[ok] ** 2).mean())),
                     r2=float(1 - (err[ok] ** 2).sum() / max(((y[ok] - y[ok].mean()) ** 2).sum(), 1e-300)))
        if rotations:
            m.update(rotations=rotations, mean_spread=float(np.nanmean(spread)) if usable.any() else float("nan"))
        if len(trainers) > 1 and usable.any():
            m.update(members=len(trainers), mean_ensemble_std=float(np.nanmean(std)))
        if usable.any():
            m.update(mean_uncertainty=float(np.nanmean(sigma)))
        metrics[name] = m
        rows += [(name, ids[i], float(y[k]), float(pred[k]), float(spread[k]), float(std[k]), float(sigma[k]),
                  flags[k]) for k, i in enumerate(idx)]
        if dist.is_main and ok.any():
            plot_parity(y[ok], pred[ok], out_dir / f"parity_{name}.png", f"{name}: MAE {m['mae']:.3f} {meta.get('unit', '')}",
                        meta.get("unit", ""))
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["split", "id", "target", "prediction", "rotation_spread", "ensemble_std", "uncertainty", "flag"])
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


def elements_of(counts: np.ndarray) -> List[str]:
    """The sorted element symbols present in (n, MAX_Z + 1) element counts."""
    from .elements import SYMBOLS
    return [SYMBOLS[z] for z in np.flatnonzero(np.asarray(counts).sum(0) > 0) if z > 0]


def domain_flags(spec, meta: Dict, elements: Sequence[Sequence[str]], distance: Optional[np.ndarray] = None):
    """Per structure (its element symbols; its :func:`domain_distance` for the composition check): a flag
    (empty: none; reasons joined by "; ") and whether the model can predict it.

    Flagged: elements the model has no input for (not predicted); elements absent from the training set
    (predicted through whatever the model shares across elements: property-based channel weights, the
    composition baseline's property fit; less reliable); a composition descriptor farther from the training
    set than the validation set's 99th percentile (:mod:`cloudvox.uncertainty`). Checkpoints from before
    ``train_elements`` / ``domain`` were recorded skip those checks."""
    seen = set(meta.get("train_elements") or ())
    flags, usable = [], np.ones(len(elements), dtype=bool)
    for k, els in enumerate(elements):
        missing = spec.unrepresentable(meta, els)
        if missing:
            usable[k] = False
            flags.append(f"element(s) {' '.join(missing)} outside the model's channels: not predicted")
            continue
        new = sorted(set(els) - seen) if seen else []
        flags.append(f"element(s) {' '.join(new)} never seen in training" if new else "")
    if distance is not None:
        threshold = meta["domain"]["threshold"]
        for k in np.flatnonzero(usable & (distance > threshold)):
            flags[k] = _join(flags[k],
                             f"composition unlike the training set (distance {distance[k]:.2f} > {threshold:.2f})")
    return flags, usable


def domain_distance(meta: Dict, counts: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """(n,) composition-descriptor distance of each structure to the training set (:mod:`cloudvox.uncertainty`), or
    None for checkpoints without a domain reference."""
    ref = DomainReference.from_dict(meta.get("domain"))
    if ref is None or counts is None or not len(counts):
        return None
    return ref.distance(counts)


UNCERTAINTY_FILE = "uncertainty.json"  # a run's uncertainty calibration: floor, slope, flag threshold
UNCERTAINTY_QUANTILE = 0.95


def uncertainty_flags(flags: List[str], sigma: np.ndarray, threshold: float) -> List[str]:
    """Add a flag (in place) where the uncertainty exceeds ``threshold`` (target units: the validation split's
    :data:`UNCERTAINTY_QUANTILE` quantile of it)."""
    for k in np.flatnonzero(np.nan_to_num(sigma, nan=-np.inf) > threshold):
        flags[k] = _join(flags[k], f"uncertainty {sigma[k]:.3g} > {threshold:.3g}")
    return flags


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def predict_report(checkpoint, structures, batch_size: int = 64):
    """For in-memory structures, computed as the checkpoint's model reads them (a run, a checkpoint or an
    ensemble run): predictions in target units (the members' mean; NaN where the model cannot represent a
    structure), their uncertainty (the members' standard deviation combined with the distance to the training
    set as calibrated on the validation split, :func:`cloudvox.uncertainty.uncertainty`; the standard deviation
    alone, 0 for one model, without a calibration) and one flag per structure (:func:`domain_flags`)."""
    ckpts = _checkpoints(checkpoint)
    members = [load_model(c)[:2] for c in ckpts]
    structures = list(structures)
    spec = get_model(members[0][1]["model"])
    all_counts = element_count_matrix(structures)
    distance = domain_distance(members[0][1], all_counts)
    flags, usable = domain_flags(spec, members[0][1], [s.elements for s in structures], distance)
    pred, std = np.full(len(structures), np.nan), np.full(len(structures), np.nan)
    take = [s for s, u in zip(structures, usable) if u]
    if take:
        counts = all_counts[usable]
        # the members of an ensemble run share one config: each batch's inputs are computed once for all
        normed = spec.predict([m for m, _ in members], members[0][1], take, batch_size)  # (M, S)
        each = [Normalizer(**meta["normalizer"]).inverse(p, counts) for (_, meta), p in zip(members, normed)]
        pred[usable], std[usable] = np.mean(each, 0), np.std(each, 0)
    cal_file = (Path(checkpoint) if len(ckpts) > 1 else ckpts[0].parent) / UNCERTAINTY_FILE
    cal = json.loads(cal_file.read_text()) if cal_file.exists() else None
    extrap = Normalizer(**members[0][1]["normalizer"]).extrapolation_std(all_counts)
    sigma = uncertainty(std, distance, cal, extrap)
    if cal is not None:
        uncertainty_flags(flags, sigma, cal["threshold"])
    return pred, sigma, flags


def predict_structures(checkpoint, structures, batch_size: int = 64) -> np.ndarray:
    """Predictions (target units) for in-memory structures, NaN where the model cannot represent one (see
    :func:`predict_report` for the reasons)."""
    return predict_report(checkpoint, structures, batch_size)[0]
