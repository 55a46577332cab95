"""Per-sample losses on normalised targets, by config name."""
import torch

from ..errors import ConfigError

BERHU_THRESHOLD = 0.5  # in normalised target units (the training residual's std)


def berhu(p: torch.Tensor, y: torch.Tensor, c: float = BERHU_THRESHOLD) -> torch.Tensor:
    """Reverse Huber loss per sample, (B,) normalised predictions and targets -> (B,): |x| for |x| <= c and
    (x^2 + c^2) / (2 c) above, continuous with a continuous gradient at c. Small errors keep L1's equal weight
    (the MAE that is reported); a structure the network misses by more than c pulls in proportion to its error,
    as under MSE, so a rare outlier of the training set is fitted sooner. On the perovskites it was worse than L1 on
    validation (docs/accuracy.md; the runs: docs/notebook/2026-11-30_accuracy_experiments.md)."""
    x = (p - y).abs()
    return torch.where(x <= c, x, (x * x + c * c) / (2 * c))


def loss_fn(name: str):
    """The per-sample loss ``f(pred (B,), target (B,)) -> (B,)`` of a config name: l1, mse, huber or berhu."""
    if name == "l1":
        return lambda p, y: (p - y).abs()
    if name == "mse":
        return lambda p, y: (p - y) ** 2
    if name == "huber":
        return lambda p, y: torch.nn.functional.huber_loss(p, y, reduction="none", delta=1.0)
    if name == "berhu":
        return berhu
    raise ConfigError(f"unknown loss {name!r}")
