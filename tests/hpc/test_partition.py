import numpy as np
import pytest

from hpc.partition import blockdist, pending_blocks, round_robin, weighted_split


@pytest.mark.parametrize("n, parts", [(0, 3), (7, 3), (10, 10), (5, 8), (100, 7)])
def test_blockdist_covers_everything_once_with_sizes_within_one(n, parts):
    ranges = [blockdist(n, parts, k) for k in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_weighted_split_balances_costs(rng):
    w = rng.lognormal(0, 2, size=1000)  # costs over orders of magnitude
    for parts in (1, 2, 3, 8):
        spans = weighted_split(w, parts)
        assert spans[0][0] == 0 and spans[-1][1] == len(w)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        loads = np.array([w[a:b].sum() for a, b in spans])
        assert loads.max() <= w.sum() / parts + w.max()  # within one item of perfect
    assert weighted_split([], 3) == [(0, 0)] * 3
    assert weighted_split([0, 0, 0, 0], 2) == [(0, 2), (2, 4)]
    with pytest.raises(ValueError):
        weighted_split([1, -1], 2)


def test_pending_blocks_skip_done_ones():
    assert pending_blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert pending_blocks(10, 4, [(4, 8)]) == [(0, 4), (8, 10)]
    assert pending_blocks(0, 4) == []
    assert round_robin(list(range(7)), 3, 1) == [1, 4]


def test_writer_groups_by_host_keep_each_nodes_ranks_together():
    from hpc.partition import writer_groups
    assert writer_groups(["n1", "n1", "n2", "n2"]) == [[0, 1], [2, 3]]
    assert writer_groups(["n1", "n2", "n1", "n2"]) == [[0, 2], [1, 3]]  # cyclic placement: a node's ranks
    assert writer_groups(["a"]) == [[0]]
    assert writer_groups(["a"] * 5, writers=2) == [[0, 1, 2], [3, 4]]
    assert writer_groups(["a", "b"], writers=4) == [[0], [1]]  # at most one writer per rank
    with pytest.raises(ValueError):
        writer_groups(["a"], writers=-1)
