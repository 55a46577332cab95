"""Training runs from a YAML config: data, splits, normalisation, model, trainer, evaluation, prediction.

A run directory holds ``config.yaml`` (the resolved config), ``split_{train,val,test}.txt`` (id lists),
``metrics.jsonl`` (one line per epoch), ``checkpoint_{last,best}.pt``, ``learning_curve.png``,
``parity_{train,val,test}.png``, ``evaluation.json`` and ``predictions.csv``.

Config (YAML, read with ``yaml.safe_load``; ``--set a.b=value`` overrides any key)::

    model: voxelnet
    data: {path: out/perovskites.h5, target: enthalpy_atom, split: {by: compound, fractions: [0.8, 0.1, 0.1],
           seed: 0}, normalize: composition, species: null}
    augment: {rotations: true, reflections: true}
    network: {widths: [16, 16, 16], pools: [2, 2, 0], hidden: [32, 8], activation: selu}
    train: {epochs: 50, batch_size: 32, lr: 0.001, ...}      # cloudvox.train.TrainConfig
    run_dir: runs/voxelnet
"""
import copy
import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

from . import properties as K
from .binning import bin_reciprocal
from .data import Normalizer, VoxelDataset, element_counts, load_splits, save_splits, split_indices
from .features import DONE, FeatureFile
from .models.voxelnet import build_voxelnet
from .train import SingleProcess, TrainConfig, Trainer, load_checkpoint, random_rotations

log = logging.getLogger(__name__)

DEFAULTS = {
    "model": "voxelnet",
    "data": {"path": None, "target": "enthalpy_atom", "split": {"by": None, "fractions": [0.8, 0.1, 0.1], "seed": 0},
             "normalize": "mean_std", "species": None},
    "augment": {"rotations": True, "reflections": True},
    "network": {},
    "train": {},
    "run_dir": "runs/voxelnet",
}
DESCRIPTOR_KEYS = ("sigma", "length", "n", "mode", "channels", "properties", "cross")


# --------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------
def merge(base: Dict, over: Dict) -> Dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(cfg: Dict, sets: Sequence[str]) -> Dict:
    """``key.sub=value`` overrides; values are parsed as YAML scalars/lists (``train.lr=3e-4``)."""
    cfg = copy.deepcopy(cfg)
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def load_config(path: Optional[str], sets: Sequence[str] = ()) -> Dict:
    raw = {}
    if path:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    return apply_overrides(merge(DEFAULTS, raw), sets)


# --------------------------------------------------------------------------------------------------------
# the VoxelNet task
# --------------------------------------------------------------------------------------------------------
class VoxelTask:
    """Batch -> (prediction, target) for VoxelNet; bins reciprocal sets under random rotations on the device."""

    def __init__(self, n: int, length: float, mode: str, n_channels: int, per_element: bool,
                 augment: bool = True, reflections: bool = True, channels_last: bool = True, input_scale=None):
        self.n, self.length, self.mode = n, length, mode
        # one factor, or one per channel (fixed channel lists); inputs of order one
        self.input_scale = None if input_scale is None else torch.tensor(input_scale, dtype=torch.float32)
        self.n_channels, self.per_element = n_channels, per_element
        self.augment, self.reflections, self.channels_last = augment, reflections, channels_last

    def inputs(self, batch: Dict, device: torch.device, generator: Optional[torch.Generator], rotate: bool):
        """(B, C or c, N, N, N) voxels on the device (binned under rotations if asked) and channel ids."""
        ids = batch.get(K.CHANNEL_IDS)
        if K.RECIPROCAL in batch:
            rb = batch[K.RECIPROCAL].to(device)
            R = None
            if rotate:  # draw for the global batch and take this rank's rows: any rank count, same rotations
                a, b, total = batch.get(K.GLOBAL_SLICE, (0, rb.n_structures, rb.n_structures))
                R = random_rotations(total, generator, self.reflections)[a:b].to(device)
            c = ids.shape[1] if self.per_element else self.n_channels
            x = bin_reciprocal(rb, c, self.n, self.length, self.mode, R)
        else:
            x = batch[K.VOXELS].to(device, non_blocking=True)
        if self.input_scale is not None:
            scale = self.input_scale.to(device=x.device, dtype=x.dtype)
            x = x * (scale.view(1, -1, 1, 1, 1) if scale.numel() > 1 else scale)
        if device.type == "cuda" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if ids is None:  # fixed channels: every sample has all of them (the first layer then skips empty voxels)
            ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        return x, ids.to(device)

    def forward(self, model, batch: Dict, device: torch.device, generator, train: bool, augment: Optional[bool] = None):
        rotate = (self.augment if augment is None else augment) and train and generator is not None
        x, ids = self.inputs(batch, device, generator, rotate)
        pred = model(x, ids)
        y = batch[K.TARGET].to(device) if K.TARGET in batch else torch.full_like(pred, float("nan"))
        return pred, y


class CloudTask:
    """Batch -> (prediction, target) for AtomCloudNet (invariant by construction: no augmentation)."""

    def forward(self, model, batch: Dict, device: torch.device, generator, train: bool, augment: Optional[bool] = None):
        moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        moved[K.POSITIONS] = moved[K.POSITIONS].to(next(model.parameters()).dtype)
        pred = model(moved, n_structures=len(batch[K.INDEX]))
        y = moved[K.TARGET] if K.TARGET in moved else torch.full_like(pred, float("nan"))
        return pred, y.to(pred.dtype)


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


def build_model(meta: Dict) -> torch.nn.Module:
    if meta["model"] == "voxelnet":
        return build_voxelnet(len(meta["channels"]), int(meta["descriptor"]["n"]), meta["network"], meta["channels"])
    if meta["model"] == "atomcloud":
        from .models.atomcloud import build_atomcloud
        return build_atomcloud(meta["network"])
    raise ValueError(f"unknown model {meta['model']!r}; choose voxelnet or atomcloud")


def make_dataset(meta: Dict, path, indices, targets, reciprocal: bool):
    """The model's dataset: voxels (stored, or reciprocal sets to bin under rotations) or clouds."""
    if meta["model"] == "atomcloud":
        from .data import CloudDataset
        return CloudDataset(path, indices, targets, float(meta["network"].get("cutoff", 3.0)))
    species = meta["channels"] if meta["descriptor"]["channels"] == "element" else None
    return VoxelDataset(path, indices, targets, "reciprocal" if reciprocal else "voxels", species)


def make_task(meta: Dict, cfg_augment: Dict, channels_last: bool = True):
    if meta["model"] == "atomcloud":
        return CloudTask()
    d = meta["descriptor"]
    return VoxelTask(int(d["n"]), float(d["length"]), d["mode"], len(meta["channels"]), d["channels"] == "element",
                     bool(cfg_augment.get("rotations", True)), bool(cfg_augment.get("reflections", True)), channels_last,
                     meta.get("input_scale"))


def input_scale(ff: FeatureFile, indices: np.ndarray, sample: int = 256):
    """1 / RMS of the occupied voxel values of (a sample of) the training structures, per channel for a
    fixed channel list (property channels differ in scale), else one factor: inputs of order one."""
    idx = np.random.default_rng(0).choice(indices, size=min(sample, len(indices)), replace=False)
    if ff.per_element:
        values = np.concatenate([ff.ragged("voxels/values", int(i)) for i in idx]).astype(np.float64)
        rms = float(np.sqrt(np.mean(values ** 2))) if len(values) else 1.0
        return 1.0 / rms if rms > 0 else 1.0
    C = ff.n_channels()
    sq, count = np.zeros(C), np.zeros(C)
    for i in idx:
        ch = ff.channel_index(int(i))
        v = ff.ragged("voxels/values", int(i)).astype(np.float64).reshape(len(ch), -1)
        sq[ch] += (v ** 2).sum(1)
        count[ch] += v.shape[1]
    rms = np.sqrt(sq / np.maximum(count, 1))
    return [1.0 / r if r > 0 else 1.0 for r in rms]


def train_run(cfg: Dict, dist=None, resume: bool = False, on_trainer=None) -> Dict:
    """Train a model as configured; rank 0 then evaluates the best checkpoint and draws the plots.

    dist: the distributed interface (default one process); on_trainer: called with the Trainer before
    training (e.g. to install signal handlers that request a checkpointed stop)."""
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
    channels = model_channels(ff, cfg["data"].get("species"))
    meta = dict(model=cfg["model"], network=dict(cfg["network"]), descriptor={k: ff.params.get(k) for k in DESCRIPTOR_KEYS},
                channels=channels, target=cfg["data"]["target"], normalizer=norm.to_dict(), data=str(ff.path),
                unit=cfg["data"].get("unit") or _unit(ff, cfg["data"]["target"]),
                target_scale=float(cfg["data"].get("scale", 1.0)),
                input_scale=input_scale(ff, splits["train"]) if cfg["model"] == "voxelnet" else None)
    if cfg["model"] == "voxelnet" and ff.per_element and not meta["network"].get("active_channels"):
        counts = np.diff(ff.offsets("channels/index"))[splits["train"]]  # channels per structure
        meta["network"]["active_channels"] = max(1, int(round(float(counts.mean())))) if len(counts) else None
    model = build_model(meta)
    meta["network"] = model.config
    augment = bool(cfg["augment"].get("rotations", True))
    train_set = make_dataset(meta, ff.path, splits["train"], targets["train"], augment)
    val_set = make_dataset(meta, ff.path, splits["val"], targets["val"], False)
    task = make_task(meta, cfg["augment"], tcfg.channels_last)
    trainer = Trainer(model, task, train_set, val_set, tcfg, run_dir, meta, dist, target_scale=norm.std)
    if on_trainer is not None:
        on_trainer(trainer)
    summary = trainer.fit(resume_from)
    dist.barrier()
    if summary["stopped"] or trainer.epoch < tcfg.epochs and not tcfg.patience:
        return summary  # interrupted: resume later; evaluation comes at the end
    if dist.is_main:
        plot_learning_curve(trainer.history, run_dir / "learning_curve.png", meta["unit"])
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
def check_compatible(meta: Dict, ff: FeatureFile) -> None:
    """Refuse data featurized differently from the checkpoint's training data, naming the difference."""
    mine = dict(meta["descriptor"])
    mine.setdefault("cross", False)  # checkpoints from before cross-spectrum channels
    theirs = {k: ff.params.get(k) for k in DESCRIPTOR_KEYS}
    diff = [f"{k}: checkpoint {mine.get(k)!r}, data {theirs.get(k)!r}" for k in DESCRIPTOR_KEYS
            if mine.get(k) != theirs.get(k) and not (k == "properties" and mine.get("channels") != "properties")]
    if diff:
        raise ValueError(f"{ff.path} was featurized with other descriptor parameters than the model was trained on: "
                         + "; ".join(diff))
    if ff.per_element:
        extra = sorted(set(ff.model_channels()) - set(meta["channels"]))
        if extra:
            raise ValueError(f"{ff.path} holds elements {extra} outside the model's species list {meta['channels']}")
    elif list(ff.channel_names) != list(meta["channels"]):
        raise ValueError(f"{ff.path} has channels {ff.channel_names}, the model {meta['channels']}")


def load_model(checkpoint: Path, device: torch.device = torch.device("cpu")):
    ck = load_checkpoint(checkpoint, map_location=device)
    meta = json.loads(ck["meta"])
    model = build_model(meta)
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
    if meta["model"] == "voxelnet":
        check_compatible(meta, ff)
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
    task = make_task(meta, {"rotations": rotations > 0}, cfg.channels_last)
    trainer = Trainer(model, task, [], [], cfg, out_dir, meta, dist, target_scale=norm.std)
    rows, metrics = [], {}
    ids = ff.ids
    for name, idx in splits.items():
        counts = element_counts(ff, idx)
        yn = norm.forward(y_all[idx], counts)
        ds = make_dataset(meta, ff.path, idx, yn, rotations > 0)
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


def predict_structures(checkpoint, structures, batch_size: int = 64) -> np.ndarray:
    """Predictions (target units) for in-memory structures, featurized with the checkpoint's descriptor."""
    from .descriptors import ReciprocalVoxelizer, without_cross
    model, meta, _ = load_model(_resolve_checkpoint(checkpoint))
    norm = Normalizer(**meta["normalizer"])
    if meta["model"] == "atomcloud":
        from .data import cloud_item, collate_clouds
        cutoff = float(meta["network"].get("cutoff", 3.0))
        out = []
        with torch.no_grad():
            for a in range(0, len(structures), batch_size):
                chunk = structures[a:a + batch_size]
                batch = collate_clouds([cloud_item(k, s.cart_coords, s.numbers, s.lattice, cutoff) for k, s in enumerate(chunk)])
                pred, _ = CloudTask().forward(model, batch, torch.device("cpu"), None, False)
                counts = np.zeros((len(chunk), 119))
                for k, s in enumerate(chunk):
                    np.add.at(counts[k], s.numbers, 1)
                out.append(norm.inverse(pred.numpy(), counts))
        return np.concatenate(out) if out else np.zeros(0)
    d = meta["descriptor"]
    per_element = d["channels"] == "element"
    vox = ReciprocalVoxelizer(sigma=d["sigma"], length=d["length"], n=d["n"], mode=d["mode"],
                              species=without_cross(meta["channels"]) if per_element else None, channels=d["channels"],
                              cross=bool(d.get("cross")),
                              **({"properties": tuple(d["properties"])} if d["channels"] == "properties" else {}))
    out = []
    with torch.no_grad():
        for a in range(0, len(structures), batch_size):
            chunk = structures[a:a + batch_size]
            x = torch.from_numpy(vox.batch(chunk))
            scale = meta.get("input_scale")
            if scale is not None:
                s = torch.tensor(scale, dtype=x.dtype)
                x = x * (s.view(1, -1, 1, 1, 1) if s.numel() > 1 else s)
            pred = model(x).numpy()
            counts = np.zeros((len(chunk), 119))
            for k, s in enumerate(chunk):
                np.add.at(counts[k], s.numbers, 1)
            out.append(norm.inverse(pred, counts))
    return np.concatenate(out) if out else np.zeros(0)


# --------------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curve(history: List[Dict], path: Path, unit: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["train_mae"] for r in history], label="train MAE")
    val = [(r["epoch"], r["val_mae"]) for r in history if "val_mae" in r]
    if val:
        ax.plot(*zip(*val), label="validation MAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({unit})" if unit else "MAE")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_parity(y: np.ndarray, pred: np.ndarray, path: Path, title: str, unit: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=4, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    lab = f" ({unit})" if unit else ""
    ax.set_xlabel("target" + lab)
    ax.set_ylabel("prediction" + lab)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
