"""This process: its place among the ranks (the distributed interface for one process), its device, its heap.

:class:`SingleProcess` is the interface the trainer talks to; :mod:`hpc.distributed` implements it for Horovod
and torch.distributed. Nothing here talks to another process."""
from typing import Callable, Optional

import torch


class SingleProcess:
    """The distributed interface for one process (see hpc.distributed for Horovod and DDP)."""
    rank, size, local_rank = 0, 1, 0
    backend = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shows_progress(self) -> bool:
        """Whether this process draws progress bars: the job's rank 0 only."""
        return self.is_main

    def device(self, requested: str) -> torch.device:
        return pick_device(requested, self.local_rank)

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def progress(self) -> None:
        """A unit of work done outside a collective (a batch predicted): a backend's collective timeout
        then knows this rank is slow, not hung."""

    def reduce_gradients(self, model: torch.nn.Module, meanwhile: Optional[Callable[[], None]] = None) -> None:
        """Average the gradients over the ranks, after the backward and before clipping and the step
        (Horovod and DDP on CPU: one fused allreduce; DDP on GPUs: its reducer has done it during the backward;
        one process: nothing), and call ``meanwhile()`` while the allreduce is in flight (the trainer reads
        the next batch there)."""
        if meanwhile is not None:
            meanwhile()


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(requested)


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Keep large freed blocks in this process's heap instead of returning them to the OS (glibc only).

    glibc serves blocks above its mmap threshold (at most 32 MB by default) with fresh mmap'ed pages and
    unmaps them on free, so a training step whose activations hold such blocks (VoxelNet's first layer
    output: 55 MB at batch 32) page-faults them in again on every step: measured 26 ms for a 55 MB
    ``torch.zeros`` against 7.5 ms when its memory is reused. Raising the mmap and trim thresholds to
    ``limit_bytes`` lets freed blocks be reused (the process keeps its peak heap). Call once at program
    start (``cloudvox train`` does); returns whether it took effect (False off glibc).
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, int(limit_bytes))
        return bool(mmap_ok) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(limit_bytes)))
    except (OSError, AttributeError):
        return False
