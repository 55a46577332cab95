"""Partitions of n items, as pure functions (no MPI): contiguous ranges (:func:`blockdist`, used by
:mod:`hpc.partition` for work blocks and merge spans) and cost-balanced shards (:func:`balanced_shards`, a
rank's share of a global training batch)."""
from typing import Tuple

import numpy as np

Range = Tuple[int, int]


def blockdist(n: int, parts: int, index: int) -> Range:
    """The index-th of ``parts`` contiguous, near-equal ranges of n items (sizes differ by at most one)."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"bad partition index {index} of {parts}")
    q, r = divmod(n, parts)
    start = index * q + min(index, r)
    return start, start + q + (1 if index < r else 0)


def balanced_shards(costs, parts: int, weights=None) -> "np.ndarray":
    """(n,) the part (rank) of each of n items of cost ``costs`` (n,), so that every part finishes at about
    the same time. Without ``weights`` the parts are equally fast: near-equal counts (at most ceil(n / parts)
    each) and near-equal total cost. ``weights`` (parts,), the parts' relative speeds (cost per second,
    any scale), give part p about a share weights[p] / sum(weights) of the count and of the cost, so that
    a slower part gets less to do. Items go by decreasing cost (ties: lower index first), each to the part
    that would finish it first among those not full (ties: lower part). Deterministic: every rank computes
    the same assignment from the same inputs. A global batch's samples of very different cost (crystals of
    5 and 200 atoms), or a rank on a slower core, then cost every rank about the same time, and no rank
    waits long for another at the gradients' allreduce."""
    costs = np.asarray(costs, dtype=np.float64)
    n = len(costs)
    if parts < 1:
        raise ValueError(f"bad part count {parts}")
    if weights is None:
        speed = [1.0] * parts
        cap = [-(-n // parts)] * parts
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (parts,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"weights must be {parts} positive numbers, got {weights!r}")
        speed = (w / w.sum()).tolist()
        cap = [int(np.ceil(n * s - 1e-9)) for s in speed]
        cap[int(np.argmax(w))] += max(0, n - sum(cap))  # rounding can leave the caps one short of n
    load, count = [0.0] * parts, [0] * parts
    out = np.empty(n, dtype=np.int64)
    for k in np.argsort(-costs, kind="stable"):
        c = costs[k]
        r = min((p for p in range(parts) if count[p] < cap[p]), key=lambda p: ((load[p] + c) / speed[p], p))
        out[k] = r
        load[r] += c
        count[r] += 1
    return out
