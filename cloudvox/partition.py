"""Contiguous partitions of n items, as pure functions (no MPI): used by the trainer (a rank's share of a
global batch) and by :mod:`hpc.partition` (work blocks and merge spans)."""
from typing import Tuple

Range = Tuple[int, int]


def blockdist(n: int, parts: int, index: int) -> Range:
    """The index-th of ``parts`` contiguous, near-equal ranges of n items (sizes differ by at most one)."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"bad partition index {index} of {parts}")
    q, r = divmod(n, parts)
    start = index * q + min(index, r)
    return start, start + q + (1 if index < r else 0)
