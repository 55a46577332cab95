"""An exponential moving average of a model's parameters, as a module with its own state."""
import contextlib
from typing import Dict, List

import torch


class EMA:
    """ema <- d ema + (1 - d) params after each optimiser step, d = min(decay, (1 + n) / (10 + n)) at the n-th
    update (the average follows the fast early changes, then settles to ``decay``).

    Args:
        model: whose parameters are averaged (the average is kept on their device and dtype).
        decay: per step, in (0, 1) (0.99-0.999 typical).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.decay = model, float(decay)
        self.shadow: List[torch.Tensor] = [p.detach().clone() for p in model.parameters()]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.model.parameters()], alpha=1.0 - d)

    @contextlib.contextmanager
    def averaged(self):
        """Within: the model holds the averaged weights; its own ones after."""
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.shadow):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    def restart_from_model(self, steps: int) -> None:
        """Take the model's current parameters as the average (a resumed run loads the average into the model
        first), with ``steps`` updates behind it."""
        self.shadow = [p.detach().clone() for p in self.model.parameters()]
        self.steps = int(steps)

    def state_dict(self) -> Dict[str, object]:
        return dict(steps=self.steps)
