"""Figures of a run: learning curve and parity plots (matplotlib, Agg backend, imported when drawing)."""
from pathlib import Path
from typing import Dict, List

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curve(history: List[Dict], path: Path, unit: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["train_mae"] for r in history], label="train MAE")
    val = [(r["epoch"], r["val_mae"]) for r in history if "val_mae" in r]
    if val:
        ax.plot(*zip(*val), label="validation MAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE ({unit})" if unit else "MAE")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_parity(y: np.ndarray, pred: np.ndarray, path: Path, title: str, unit: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=4, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    lab = f" ({unit})" if unit else ""
    ax.set_xlabel("target" + lab)
    ax.set_ylabel("prediction" + lab)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
