"""What a step computes: the seeded randomness of a step, and the one prediction loop over a dataset (the
trainer's validation and :mod:`cloudvox.inference` share it)."""
from typing import Callable, Sequence

import numpy as np
import torch

from .process import SingleProcess


def step_generator(seed: int, epoch: int, step: int, device: torch.device = torch.device("cpu")) -> torch.Generator:
    """The CPU generator of a step's random draws (rotations), seeded by (seed, epoch, step): the same on every
    rank and after a resume."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0]))
    return g


@torch.no_grad()
def predict_dataset(forwards: Sequence[Callable], loader, batches: Sequence[np.ndarray], n: int, dist=None,
                    rotations: int = 0, seed: int = 0, amp: bool = False, device_type: str = "cpu"):
    """Every model of ``forwards`` on every batch of a dataset, in dataset order on every rank.

    forwards: M callables ``f(batch, positions, generator) -> (pred (b,), target (b,) or None)``, positions the
    batch's dataset positions; loader: yields (rows, batch) for each of ``batches`` (the global batches,
    this rank's rows); n: the dataset's length. With ``rotations`` each model is averaged over that many
    random rotations (the same for every model), and their standard deviation is the spread.

    Returns (M, n) predictions, (M, n) spreads (zeros without rotations) and (n,) targets (NaN where the
    models give none), float64."""
    dist = dist or SingleProcess()
    M = len(forwards)
    out = torch.zeros(2 * M + 1, n, dtype=torch.float64)
    out[2 * M] = float("nan") if dist.size == 1 else 0.0
    for step, (rows, batch) in enumerate(loader):
        pos = np.asarray(batches[step])[rows]
        where = torch.from_numpy(pos)
        for m, forward in enumerate(forwards):
            with torch.autocast(device_type, enabled=amp):
                if rotations:  # one generator per model, seeded alike: every model sees the same rotations
                    gen = step_generator(seed + 7919, 0, step)
                    runs = [forward(batch, pos, gen) for _ in range(rotations)]
                    preds = torch.stack([p.double() for p, _ in runs])
                    pred = preds.mean(0)
                    spread = preds.std(0) if rotations > 1 else torch.zeros_like(pred)
                    y = runs[0][1]
                else:
                    pred, y = forward(batch, pos, None)
                    spread = torch.zeros_like(pred)
            out[m, where] = pred.double().cpu()
            out[M + m, where] = spread.double().cpu()
            if m == 0:
                out[2 * M, where] = (y.double().cpu() if y is not None
                                     else torch.full((len(pos),), float("nan"), dtype=torch.float64))
        dist.progress()
    out = dist.allreduce_sum(out)
    return out[:M].numpy(), out[M:2 * M].numpy(), out[2 * M].numpy()
