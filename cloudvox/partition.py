"""Partitions of n items, as pure functions (no MPI): contiguous ranges (:func:`blockdist`, used by
:mod:`hpc.partition` for work blocks and merge spans) and cost-balanced shards (:func:`balanced_shards`, a
rank's share of a global training batch)."""
from typing import Tuple

Range = Tuple[int, int]


def blockdist(n: int, parts: int, index: int) -> Range:
    """The index-th of ``parts`` contiguous, near-equal ranges of n items (sizes differ by at most one)."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"bad partition index {index} of {parts}")
    q, r = divmod(n, parts)
    start = index * q + min(index, r)
    return start, start + q + (1 if index < r else 0)


def balanced_shards(costs, parts: int) -> "np.ndarray":
    """(n,) the part (rank) of each of n items of cost ``costs`` (n,), so that parts hold near-equal counts
    (at most ceil(n / parts) each) and near-equal total cost: items by decreasing cost (ties: lower index
    first), each to the part with the least cost so far among those not full (ties: lower part). Deterministic:
    every rank computes the same assignment. A global batch's samples of very different cost (crystals of 5 and
    200 atoms) then cost every rank about the same time, and no rank waits long for a slower one at the
    gradients' allreduce."""
    import numpy as np
    costs = np.asarray(costs, dtype=np.float64)
    n = len(costs)
    if parts < 1:
        raise ValueError(f"bad part count {parts}")
    cap = -(-n // parts)
    load, count = [0.0] * parts, [0] * parts
    out = np.empty(n, dtype=np.int64)
    for k in np.argsort(-costs, kind="stable"):
        r = min((p for p in range(parts) if count[p] < cap), key=lambda p: (load[p], p))
        out[k] = r
        load[r] += costs[k]
        count[r] += 1
    return out
