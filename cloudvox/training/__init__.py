"""Single-process training in pieces: :mod:`.config` (the ``train`` section), :mod:`.process` (this process:
the distributed interface's one-process case, its device, its heap), :mod:`.loaders` (an epoch's batches, each
rank's rows, reading), :mod:`.step` (a step's randomness, the prediction loop), :mod:`.losses`, :mod:`.ema`,
:mod:`.checkpoint`, :mod:`.timing` and :mod:`.loop` (the :class:`Trainer`).

The names below load their module on first use: reading the config schema does not import torch."""
import importlib

_WHERE = {"CHECKPOINT_FORMAT": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
          "TrainConfig": "config", "StopTraining": "loop", "Trainer": "loop", "SingleProcess": "process",
          "keep_freed_memory": "process", "pick_device": "process"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
