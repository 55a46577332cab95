"""Checkpoint files: written atomically, read without unpickling, versioned (:data:`CHECKPOINT_FORMAT`).

A checkpoint holds ``format``, ``model`` (the weights to evaluate: the average with ``ema``), ``trained`` (the
optimiser's own weights, with ``ema`` only), ``optimizer``, ``plateau``, ``scaler``, ``epoch``, ``step_in_epoch``,
``best``, ``best_epoch``, ``history`` (JSON), ``meta`` (JSON: model, network, descriptor, channels, normaliser,
domain, ...), ``train_config`` (JSON), ``rng`` and ``world_size``; ``ema_steps`` with ``ema``."""
import os
from pathlib import Path
from typing import Dict

import torch

from ..errors import FormatError

CHECKPOINT_FORMAT = 2  # moves when what a checkpoint holds changes (2: meta always holds the
#                        descriptor's "cross", "train_elements" and "domain"; AtomCloudNet's embedding is "free" + "prior")


def save_checkpoint(path: Path, payload: Dict) -> None:
    """torch.save to ``path.tmp``, flushed to the file system (fsync), then renamed: a checkpoint is never half
    written, and a node lost while writing leaves the previous one complete (the .tmp is never read)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> Dict:
    """A checkpoint, loaded without unpickling arbitrary objects (``weights_only=True``)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    version = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(version, int):
        raise FormatError(f"{path} is not a cloudvox checkpoint (no format version)")
    if version > CHECKPOINT_FORMAT:
        raise FormatError(f"{path} has checkpoint format {version}, newer than this cloudvox's "
                          f"({CHECKPOINT_FORMAT}): upgrade cloudvox")
    if version < CHECKPOINT_FORMAT:
        raise FormatError(f"{path} has checkpoint format {version}, which this cloudvox no longer reads "
                          f"(it reads {CHECKPOINT_FORMAT}): retrain, or use the cloudvox that wrote it")
    return payload
