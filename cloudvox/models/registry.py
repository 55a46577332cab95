"""Declarative tasks: what each model needs from the data, and the one registry of models.

A :class:`ModelSpec` says, for one model name, how to build the network from a run's ``meta`` (the resolved
config saved in every checkpoint), which dataset feeds it, which task turns a batch into (prediction,
target), what it records at the start of a run and what it requires of a feature file. Workflows
(:mod:`cloudvox.runs`, :mod:`cloudvox.inference`) and the config schema (:mod:`cloudvox.config`) only ever ask
:func:`get_model`; adding a model is one :func:`register` call.
"""
import inspect
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import properties as K
from ..data import VoxelDataset
from ..errors import ConfigError, DataError, nearest
from ..featurefile import FeatureFile
from ..binning import bin_reciprocal, random_rotations


# --------------------------------------------------------------------------------------------------------
# tasks: batch -> (prediction, target)
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

    def inputs(self, batch: Dict, device: torch.device, generator: Optional[torch.Generator], rotate: bool,
               rows: Optional[Tuple[np.ndarray, int]] = None):
        """(B, C or c, N, N, N) voxels on the device (binned under rotations if asked) and channel ids.

        rows: (this batch's rows of the global batch, the global batch's size): the rotations are drawn for the
        global batch and these rows taken, so that any rank count and micro-batching draws the same ones;
        None: the batch is the whole global batch."""
        ids = batch.get(K.CHANNEL_IDS)
        if K.RECIPROCAL in batch:
            rb = batch[K.RECIPROCAL].to(device)
            R = None
            if rotate:
                mine, total = rows if rows is not None else (np.arange(rb.n_structures), rb.n_structures)
                R = random_rotations(total, generator, self.reflections)[torch.as_tensor(mine)].to(device)
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

    def forward(self, model, batch: Dict, device: torch.device, generator, train: bool, augment: Optional[bool] = None,
                rows: Optional[Tuple[np.ndarray, int]] = None):
        rotate = (self.augment if augment is None else augment) and train and generator is not None
        x, ids = self.inputs(batch, device, generator, rotate, rows)
        pred = model(x, ids)
        y = batch[K.TARGET].to(device) if K.TARGET in batch else torch.full_like(pred, float("nan"))
        return pred, y


class CloudTask:
    """Batch -> (prediction, target) for AtomCloudNet (invariant by construction: no augmentation)."""

    def forward(self, model, batch: Dict, device: torch.device, generator, train: bool, augment: Optional[bool] = None,
                rows=None):
        moved = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        moved[K.POSITIONS] = moved[K.POSITIONS].to(next(model.parameters()).dtype)
        pred = model(moved, n_structures=len(batch[K.INDEX]))
        y = moved[K.TARGET] if K.TARGET in moved else torch.full_like(pred, float("nan"))
        return pred, y.to(pred.dtype)


# --------------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------------
class ModelSpec:
    """One model: override the hooks; ``name`` is the key of the registry and of ``cloudvox train MODEL``."""
    name = ""
    summary = ""

    def constructor(self) -> Callable:
        """The model class; its keyword arguments (and their defaults) are the ``network`` config keys."""
        raise NotImplementedError

    def network_defaults(self) -> Dict[str, object]:
        skip = ("self", "in_channels", "n", "channel_names")
        return {k: p.default for k, p in inspect.signature(self.constructor().__init__).parameters.items()
                if k not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def prepare_meta(self, meta: Dict, ff: FeatureFile, train_indices: np.ndarray) -> None:
        """Record in ``meta`` what the model needs from the training data (at the start of a run)."""

    def build(self, meta: Dict) -> torch.nn.Module:
        raise NotImplementedError

    def dataset(self, meta: Dict, path, indices, targets, augment: bool):
        raise NotImplementedError

    def task(self, meta: Dict, augment: Dict, channels_last: bool = True):
        raise NotImplementedError

    def check_data(self, meta: Dict, ff: FeatureFile) -> None:
        """Refuse a feature file the model cannot read (named difference)."""

    def unrepresentable(self, meta: Dict, elements: Sequence[str]) -> List[str]:
        """The elements of one structure that the model has no input for (it is then not predicted); empty
        when it can take the structure."""
        return []


MODELS: Dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: {nearest(str(name), list(MODELS), 'models')}")
    return MODELS[name]


DESCRIPTOR_KEYS = ("sigma", "length", "n", "mode", "channels", "properties", "cross")


def check_descriptor(meta: Dict, ff: FeatureFile) -> None:
    """Refuse data featurized differently from the checkpoint's training data, naming the difference."""
    mine = dict(meta["descriptor"])
    theirs = {k: ff.params.get(k) for k in DESCRIPTOR_KEYS}
    diff = [f"{k}: checkpoint {mine.get(k)!r}, data {theirs.get(k)!r}" for k in DESCRIPTOR_KEYS
            if mine.get(k) != theirs.get(k) and not (k == "properties" and mine.get("channels") != "properties")]
    if diff:
        raise DataError(f"{ff.path} was featurized with other descriptor parameters than the model was trained on: "
                         + "; ".join(diff))
    # element channels: structures with elements outside the model's list are reported one by one
    # (ModelSpec.unrepresentable), the others predicted
    if not ff.per_element and list(ff.channel_names) != list(meta["channels"]):
        raise DataError(f"{ff.path} has channels {ff.channel_names}, the model {meta['channels']}")


def input_scale(ff: FeatureFile, indices: np.ndarray, sample: int = 256):
    """1 / RMS of the occupied voxel values of (a sample of) the training structures, per channel for a
    fixed channel list (property channels differ in scale), else one factor: inputs of order one."""
    idx = np.random.default_rng(0).choice(indices, size=min(sample, len(indices)), replace=False)
    if ff.per_element:
        values = np.concatenate([ff.sparse_voxels(int(i)).values.ravel() for i in idx]).astype(np.float64)
        rms = float(np.sqrt(np.mean(values ** 2))) if len(values) else 1.0
        return 1.0 / rms if rms > 0 else 1.0
    C = ff.n_channels()
    sq, count = np.zeros(C), np.zeros(C)
    for i in idx:
        sv = ff.sparse_voxels(int(i))
        ch, v = sv.channels, sv.values.astype(np.float64)
        sq[ch] += (v ** 2).sum(1)
        count[ch] += v.shape[1]
    rms = np.sqrt(sq / np.maximum(count, 1))
    return [1.0 / r if r > 0 else 1.0 for r in rms]




class VoxelNetSpec(ModelSpec):
    name = "voxelnet"
    summary = "3D CNN on the binned reciprocal-space density (cloudvox.models.voxelnet)"

    def constructor(self):
        from .voxelnet import VoxelNet
        return VoxelNet

    def prepare_meta(self, meta, ff, train_indices):
        meta["input_scale"] = input_scale(ff, train_indices)
        if ff.per_element and not meta["network"].get("active_channels"):
            counts = np.diff(ff.offsets("channels/index"))[train_indices]  # channels per structure
            meta["network"]["active_channels"] = max(1, int(round(float(counts.mean())))) if len(counts) else None

    def build(self, meta):
        from .voxelnet import build_voxelnet
        return build_voxelnet(len(meta["channels"]), int(meta["descriptor"]["n"]), meta["network"], meta["channels"])

    def dataset(self, meta, path, indices, targets, augment):
        species = meta["channels"] if meta["descriptor"]["channels"] == "element" else None
        return VoxelDataset(path, indices, targets, "reciprocal" if augment else "voxels", species)

    def task(self, meta, augment, channels_last=True):
        d = meta["descriptor"]
        return VoxelTask(int(d["n"]), float(d["length"]), d["mode"], len(meta["channels"]), d["channels"] == "element",
                         bool(augment.get("rotations", True)), bool(augment.get("reflections", True)), channels_last,
                         meta.get("input_scale"))

    def check_data(self, meta, ff):
        check_descriptor(meta, ff)

    def unrepresentable(self, meta, elements):
        if meta["descriptor"]["channels"] != "element":
            return []  # total and property channels take any element
        from ..descriptors import without_cross
        return sorted(set(elements) - set(without_cross(meta["channels"])))


class AtomCloudSpec(ModelSpec):
    name = "atomcloud"
    summary = "equivariant point convolutions on the atoms' neighbour clouds (cloudvox.models.atomcloud)"

    def constructor(self):
        from .atomcloud import AtomCloudNet
        return AtomCloudNet

    def build(self, meta):
        from .atomcloud import build_atomcloud
        return build_atomcloud(meta["network"])

    def dataset(self, meta, path, indices, targets, augment):
        from ..data import CloudDataset
        return CloudDataset(path, indices, targets, float(meta["network"].get("cutoff", 3.0)))

    def task(self, meta, augment, channels_last=True):
        return CloudTask()


register(VoxelNetSpec())
register(AtomCloudSpec())
