"""Single-process training in pieces: :mod:`.config` (the ``train`` section), :mod:`.process` (this process:
the distributed interface's one-process case, its device, its heap), :mod:`.loaders` (an epoch's batches, each
rank's rows, reading), :mod:`.step` (a step's randomness, the prediction loop), :mod:`.losses`, :mod:`.ema`,
:mod:`.checkpoint`, :mod:`.timing` and :mod:`.loop` (the :class:`Trainer`)."""
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import StopTraining, Trainer
from .process import SingleProcess, keep_freed_memory, pick_device

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint", "TrainConfig", "StopTraining", "Trainer",
           "SingleProcess", "keep_freed_memory", "pick_device"]
