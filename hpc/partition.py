"""Work partitioning as pure functions (no MPI): tested on their own, used by every parallel job."""
from typing import Iterable, List, Sequence

import numpy as np

from cloudvox.partition import Range, blockdist

__all__ = ["Range", "blockdist", "weighted_split", "pending_blocks", "round_robin", "writer_groups"]


def weighted_split(weights: Sequence[float], parts: int) -> List[Range]:
    """``parts`` contiguous ranges of items whose weight sums are as equal as prefix sums allow.

    Item i goes to the part whose share of the total contains the middle of its weight, so a single heavy
    item never drags its neighbours along. Ranges may be empty when there are fewer items than parts.
    """
    w = np.asarray(weights, dtype=np.float64)
    if parts < 1:
        raise ValueError("parts must be >= 1")
    if len(w) == 0:
        return [(0, 0)] * parts
    if (w < 0).any():
        raise ValueError("weights must be >= 0")
    total = w.sum()
    if total == 0:
        return [blockdist(len(w), parts, k) for k in range(parts)]
    middle = np.cumsum(w) - w / 2
    owner = np.minimum((middle / total * parts).astype(np.int64), parts - 1)
    bounds = np.searchsorted(owner, np.arange(parts + 1), side="left")
    bounds[-1] = len(w)
    return [(int(bounds[k]), int(bounds[k + 1])) for k in range(parts)]


def pending_blocks(n: int, block_size: int, done: Iterable[Range] = ()) -> List[Range]:
    """The fixed blocks [k b, (k + 1) b) of n items that are not in ``done`` (the finished blocks)."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    finished = set(map(tuple, done))
    return [(a, min(a + block_size, n)) for a in range(0, n, block_size) if (a, min(a + block_size, n)) not in finished]


def round_robin(items: Sequence, parts: int, index: int) -> list:
    """Items index, index + parts, ... : the static fall-back hand-out of blocks."""
    return list(items[index::parts])


def writer_groups(hosts: Sequence[str], writers: int = 0) -> List[List[int]]:
    """The ranks cut into merge groups, each written by its first rank: ``hosts[r]`` is rank r's host name.

    writers 0: one group per host (in order of each host's lowest rank; a host's ranks in rank order), so the
    chunks never leave their node; N >= 1: N groups of consecutive ranks (at most one per rank)."""
    if writers < 0:
        raise ValueError("writers must be >= 0")
    size = len(hosts)
    if writers:
        n = min(writers, size)
        return [list(range(*blockdist(size, n, k))) for k in range(n)]
    by_host: dict = {}
    for r, h in enumerate(hosts):
        by_host.setdefault(h, []).append(r)
    return list(by_host.values())
