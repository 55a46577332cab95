"""Inference: one path from a trained run to predictions in the target's units.

``evaluate`` (a feature file) and ``predict`` (structures) both go through :class:`Predictor`:

    run or checkpoint --load--> TrainedModel per member (network + task + normaliser: target units)
    structures --featurize_block--> temporary feature file --+
    feature file ----------------------------------------------+--> the model's dataset --> batches
        --> every member on each batch --> (M, n) predictions --> mean, ensemble std, flags, uncertainty

Structures are featurized by :func:`cloudvox.featurefile.featurize_block`, the feature file's own code, into a
temporary file of at most :data:`CHUNK` structures, and read by the model's dataset as in training: a
prediction on structures equals the evaluation of the feature file of the same structures.
"""
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import Normalizer, element_counts
from .elements import MAX_Z, SYMBOLS
from .errors import DataError
from .featurefile import DONE, FeatureFile, featurize_block, root_attributes, write_features
from .models.registry import get_model
from .uncertainty import CALIBRATION_FORMAT, DomainReference, uncertainty
from .training.checkpoint import load_checkpoint
from .training.loaders import InProcessBatches, epoch_batches, shard
from .training.process import SingleProcess
from .training.step import predict_dataset

log = logging.getLogger(__name__)

CHUNK = 4096  # structures featurized into one temporary file: memory and disk stay flat in their number
UNCERTAINTY_FILE = "uncertainty.json"  # a run's uncertainty calibration: floor, slope, flag threshold
MEMBER = "member-{}"  # an ensemble's members: RUN/member-0, RUN/member-1, ...


# --------------------------------------------------------------------------------------------------------
# a loaded model
# --------------------------------------------------------------------------------------------------------
class TrainedModel(torch.nn.Module):
    """A trained network that answers in the target's units: the task builds its inputs from a batch (the
    input scale applied there), and the normaliser's mean, std and per-element baseline are buffers.

    forward(batch, counts, generator=None) -> (B,) predictions in target units (float64), where counts is
    (B, MAX_Z + 1) atoms of each element of the batch's structures (the composition baseline) and a generator
    asks for the task's augmentation (random rotations for VoxelNet)."""

    def __init__(self, network: torch.nn.Module, meta: Dict, channels_last: bool = True):
        super().__init__()
        self.network, self.meta = network, meta
        self.spec = get_model(meta["model"])
        self.task = self.spec.task(meta, {"rotations": True}, channels_last)
        norm = Normalizer(**meta["normalizer"])
        self.normalizer = norm
        self.register_buffer("mean", torch.tensor(float(norm.mean), dtype=torch.float64))
        self.register_buffer("std", torch.tensor(float(norm.std), dtype=torch.float64))
        per = np.zeros(MAX_Z + 1) if norm.per_element is None else np.asarray(norm.per_element, dtype=np.float64)
        self.register_buffer("per_element", torch.from_numpy(per))
        self.extensive = bool(norm.extensive)

    @classmethod
    def load(cls, checkpoint: Path, device: torch.device = torch.device("cpu"), channels_last: bool = True):
        ck = load_checkpoint(checkpoint, map_location=device)
        meta = json.loads(ck["meta"])
        network = get_model(meta["model"]).build(meta)
        network.load_state_dict(ck["model"])
        return cls(network, meta, channels_last).to(device).eval()

    def baseline(self, counts: torch.Tensor) -> torch.Tensor:
        """(B,) the composition baseline (target units) of (B, MAX_Z + 1) element counts."""
        counts = counts.to(self.per_element)
        x = counts if self.extensive else counts / counts.sum(1, keepdim=True).clamp_min(1e-300)
        return x @ self.per_element

    def forward(self, batch: Dict, counts: torch.Tensor, generator: Optional[torch.Generator] = None):
        device = self.mean.device
        rotate = generator is not None
        pred, _ = self.task.forward(self.network, batch, device, generator, rotate, augment=rotate)
        return pred.double() * self.std + self.mean + self.baseline(counts.to(device))


# --------------------------------------------------------------------------------------------------------
# predictions, flags and uncertainty
# --------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """What a :class:`Predictor` returns for n structures, in target units (NaN where not predicted)."""
    prediction: np.ndarray  # (n,) the members' mean
    ensemble_std: np.ndarray  # (n,) the members' standard deviation (0 for one model)
    rotation_spread: np.ndarray  # (n,) std over test-time rotations, averaged over the members (0 without)
    usable: np.ndarray  # (n,) bool: the model can represent the structure (else not predicted)
    flags: List[str]  # (n,) reasons to distrust a prediction, "; "-joined, empty for none
    distance: Optional[np.ndarray]  # (n,) composition distance to the training set (None: no reference)
    extrapolation: np.ndarray  # (n,) the composition baseline's uncertainty from elements it did not fit
    uncertainty: Optional[np.ndarray] = None  # (n,) calibrated 1-sigma (Predictor.finish)


def elements_of(counts: np.ndarray) -> List[str]:
    """The sorted element symbols present in (n, MAX_Z + 1) element counts."""
    return [SYMBOLS[z] for z in np.flatnonzero(np.asarray(counts).sum(0) > 0) if z > 0]


def domain_distance(meta: Dict, counts: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """(n,) composition-descriptor distance of each structure to the training set (:mod:`cloudvox.uncertainty`),
    or None for checkpoints without a domain reference."""
    ref = DomainReference.from_dict(meta["domain"])
    if ref is None or counts is None or not len(counts):
        return None
    return ref.distance(counts)


def domain_flags(spec, meta: Dict, elements: Sequence[Sequence[str]], distance: Optional[np.ndarray] = None):
    """Per structure (its element symbols; its :func:`domain_distance`): a flag (empty: none; reasons joined
    by "; ") and whether the model can predict it.

    Flagged: elements the model has no input for (not predicted); elements absent from the training set
    (predicted through what the model shares across elements: property-based channel weights, the
    composition baseline's property fit; less reliable); a composition farther from the training set than
    the validation set's 99th percentile (:mod:`cloudvox.uncertainty`)."""
    seen = set(meta["train_elements"])
    flags, usable = [], np.ones(len(elements), dtype=bool)
    for k, els in enumerate(elements):
        missing = spec.unrepresentable(meta, els)
        if missing:
            usable[k] = False
            flags.append(f"element(s) {' '.join(missing)} outside the model's channels: not predicted")
            continue
        new = sorted(set(els) - seen)
        flags.append(f"element(s) {' '.join(new)} never seen in training" if new else "")
    if distance is not None:
        threshold = meta["domain"]["threshold"]
        for k in np.flatnonzero(usable & (distance > threshold)):
            flags[k] = _join(flags[k],
                             f"composition unlike the training set (distance {distance[k]:.2f} > {threshold:.2f})")
    return flags, usable


def uncertainty_flags(flags: List[str], sigma: np.ndarray, threshold: float) -> List[str]:
    """Add a flag (in place) where the uncertainty exceeds ``threshold`` (target units)."""
    for k in np.flatnonzero(np.nan_to_num(sigma, nan=-np.inf) > threshold):
        flags[k] = _join(flags[k], f"uncertainty {sigma[k]:.3g} > {threshold:.3g}")
    return flags


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


# --------------------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------------------
def ensemble_members(run_dir: Path) -> List[Path]:
    """The member run directories of an ensemble run (empty for a single model)."""
    members, k = [], 0
    while (Path(run_dir) / MEMBER.format(k)).is_dir():
        members.append(Path(run_dir) / MEMBER.format(k))
        k += 1
    return members


def resolve_checkpoint(run_or_checkpoint) -> Path:
    """A checkpoint file, or a run directory's best (else last) checkpoint."""
    p = Path(run_or_checkpoint)
    if p.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p} holds no checkpoint_best.pt or checkpoint_last.pt")
    return p


class Predictor:
    """A run (its best checkpoint), a checkpoint, or an ensemble run's members, ready to predict.

    Args:
        members: the :class:`TrainedModel` of each member (one for a single model); they share the inputs'
            settings (descriptor, channels, cutoff) of the first.
        home: the folder of the run (its calibration file, :data:`UNCERTAINTY_FILE`).
        batch_size: structures per batch. dist: the distributed interface (evaluation over ranks).
    """

    def __init__(self, members: Sequence[TrainedModel], home: Path, batch_size: int = 64, dist=None,
                 amp: bool = False):
        self.members = list(members)
        self.home = Path(home)
        self.batch_size, self.dist, self.amp = int(batch_size), dist or SingleProcess(), bool(amp)
        self.meta = self.members[0].meta
        self.spec = self.members[0].spec
        self.checkpoints: List[Path] = []
        cal_file = self.home / UNCERTAINTY_FILE
        self.calibration: Optional[Dict] = json.loads(cal_file.read_text()) if cal_file.exists() else None
        if self.calibration is not None and self.calibration.get("format", 1) > CALIBRATION_FORMAT:
            raise DataError(f"{cal_file} has calibration format {self.calibration['format']}, newer than this "
                            f"cloudvox reads ({CALIBRATION_FORMAT}): upgrade cloudvox, or re-evaluate the run to "
                            "recalibrate")

    @classmethod
    def load(cls, run_or_checkpoint, device: torch.device = torch.device("cpu"), batch_size: int = 64,
             dist=None, amp: bool = False, channels_last: bool = True) -> "Predictor":
        members = ensemble_members(Path(run_or_checkpoint)) if Path(run_or_checkpoint).is_dir() else []
        ckpts = [resolve_checkpoint(m) for m in members] or [resolve_checkpoint(run_or_checkpoint)]
        home = Path(run_or_checkpoint) if len(ckpts) > 1 else ckpts[0].parent
        device = torch.device(device)
        out = cls([TrainedModel.load(c, device, channels_last) for c in ckpts], home, batch_size, dist,
                  amp and device.type == "cuda")  # autocast on a CPU would be bfloat16
        out.checkpoints = ckpts
        return out

    @property
    def device(self) -> torch.device:
        return self.members[0].mean.device

    # --- feature files -------------------------------------------------------------------------------------
    def on_file(self, ff: FeatureFile, indices: np.ndarray, rotations: int = 0, seed: int = 0,
                counts: Optional[np.ndarray] = None) -> Predictions:
        """Predictions for structures ``indices`` of a feature file (failed ones refused by the dataset)."""
        indices = np.asarray(indices, dtype=np.int64)
        self.spec.check_data(self.meta, ff)
        counts = element_counts(ff, indices) if counts is None else counts
        distance = domain_distance(self.meta, counts)
        flags, usable = domain_flags(self.spec, self.meta, [elements_of(c[None]) for c in counts], distance)
        n = len(indices)
        pred, rot, std = (np.full(n, np.nan) for _ in range(3))
        if usable.any():  # structures the model cannot represent are reported, not predicted
            take = np.flatnonzero(usable)
            each, spreads = self._run(ff, indices[take], counts[take], rotations, seed)
            pred[take], std[take], rot[take] = each.mean(0), each.std(0), spreads.mean(0)
        extrap = self.members[0].normalizer.extrapolation_std(counts)
        return Predictions(pred, std, rot, usable, flags, distance, extrap)

    def _run(self, ff: FeatureFile, indices: np.ndarray, counts: np.ndarray, rotations: int, seed: int):
        """(M, n) predictions and rotation spreads of every member for structures the model represents."""
        ds = self.spec.dataset(self.meta, ff.path, indices, None, rotations > 0)
        dist = self.dist
        batches = epoch_batches(len(ds), self.batch_size, 0, 0, shuffle=False)
        loader = InProcessBatches(ds, batches, lambda b: shard(np.arange(len(b)), dist.rank, dist.size))
        counts_t = torch.from_numpy(counts)

        def forward_of(member):
            def forward(batch, pos, generator):
                return member(batch, counts_t[torch.from_numpy(pos)], generator), None
            return forward
        each, spreads, _ = predict_dataset([forward_of(m) for m in self.members], loader, batches, len(ds), dist,
                                           rotations, seed, self.amp, self.device.type)
        return each, spreads

    # --- structures ----------------------------------------------------------------------------------------
    def on_structures(self, structures: Sequence) -> Predictions:
        """Predictions for in-memory structures, featurized by the feature file's own code into a temporary
        file, :data:`CHUNK` structures at a time, and read as the training loader reads them."""
        from .io.records import Record
        from .descriptors import ReciprocalVoxelizer
        d = self.meta["descriptor"]
        vox = ReciprocalVoxelizer(sigma=d["sigma"], length=d["length"], n=d["n"], mode=d["mode"],
                                  channels=d["channels"], cross=bool(d["cross"]),
                                  **({"properties": tuple(d["properties"])} if d["channels"] == "properties" else {}))
        structures = list(structures)
        parts = []
        with tempfile.TemporaryDirectory(prefix="cloudvox-predict-") as tmp:
            for a in range(0, len(structures), CHUNK):
                chunk = structures[a:a + CHUNK]
                records = [Record("<memory>", a + k + 1, s.id, s) for k, s in enumerate(chunk)]
                block = featurize_block(records, 0, vox, ["<memory>"])
                path = Path(tmp) / f"chunk-{a}.h5"
                write_features(path, block, root_attributes(vox, ["<memory>"], "memory", "predict"))
                ff = FeatureFile(path)
                try:
                    parts.append(self._chunk(ff, len(chunk)))
                finally:
                    ff.close()
                path.unlink()
        return _concatenate(parts)

    def _chunk(self, ff: FeatureFile, n: int) -> Predictions:
        """The n structures of a temporary feature file: those featurization refused (resource limits) are
        reported with its reason, not predicted."""
        done = np.flatnonzero(ff.status == DONE)
        p = self.on_file(ff, done)  # the composition read from the stored clouds, as evaluate reads it
        if len(done) == n:
            return p
        out = Predictions(*(np.full(n, np.nan) for _ in range(3)), np.zeros(n, dtype=bool), [""] * n,
                          None if p.distance is None else np.full(n, np.nan), np.zeros(n))
        for field in ("prediction", "ensemble_std", "rotation_spread", "usable", "distance", "extrapolation"):
            if getattr(out, field) is not None:
                getattr(out, field)[done] = getattr(p, field)
        for f in ff.failures():
            out.flags[f["index"]] = f["reason"]
        for j, k in enumerate(done):
            out.flags[k] = p.flags[j]
        return out

    # --- uncertainty ---------------------------------------------------------------------------------------
    def finish(self, p: Predictions, calibration: Optional[Dict] = None) -> Predictions:
        """Add the 1-sigma uncertainty (:func:`cloudvox.uncertainty.uncertainty`: the ensemble std combined with
        the distance to the training set as calibrated; the std alone without a calibration) and flag those
        above the calibration's threshold."""
        cal = calibration if calibration is not None else self.calibration
        p.uncertainty = uncertainty(p.ensemble_std, p.distance, cal, p.extrapolation)
        if cal is not None:
            uncertainty_flags(p.flags, p.uncertainty, cal["threshold"])
        return p


def _concatenate(parts: Sequence[Predictions]) -> Predictions:
    if not parts:
        return Predictions(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), [], None, np.zeros(0))
    cat = np.concatenate
    distance = None if any(p.distance is None for p in parts) else cat([p.distance for p in parts])
    return Predictions(cat([p.prediction for p in parts]), cat([p.ensemble_std for p in parts]),
                       cat([p.rotation_spread for p in parts]), cat([p.usable for p in parts]),
                       [f for p in parts for f in p.flags], distance, cat([p.extrapolation for p in parts]))


__all__ = ["TrainedModel", "Predictor", "Predictions", "domain_flags", "domain_distance",
           "uncertainty_flags", "elements_of", "ensemble_members", "resolve_checkpoint",
           "UNCERTAINTY_FILE", "MEMBER", "CHUNK"]
