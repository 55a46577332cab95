"""Where a training step's time goes."""
import time
from typing import Dict

import torch


class StepTimer:
    """Where a training step's time goes, per phase (``data``: waiting for the batch; ``forward``: to the
    device, binning, model and loss; ``backward`` (with DDP, also the wait for the gradients' allreduce, which
    the reducer overlaps with the backward); ``allreduce``: averaging the gradients when the backend does it
    after the backward (Horovod); ``optimizer``: clipping and the step; ``sync``: metrics, the
    progress bar and the ranks' stop agreement), as milliseconds per step. Costs two clock reads per phase.
    On a GPU, kernels run asynchronously: without ``exact`` a phase's time is the host's (the device's work
    shows up where the host next waits); with ``exact`` the device is synchronised at each mark."""
    PHASES = ("data", "forward", "backward", "allreduce", "optimizer", "sync")

    def __init__(self, device: torch.device, exact: bool = False):
        self.sync = exact and device.type == "cuda"
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self.last = time.perf_counter()

    def mark(self, phase: str) -> float:
        """End ``phase`` now; its seconds."""
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        self.seconds[phase] += elapsed
        self.steps += phase == "data"
        return elapsed

    def per_step_ms(self) -> Dict[str, float]:
        return {f"step_ms_{k}": 1e3 * v / max(self.steps, 1) for k, v in self.seconds.items()}
