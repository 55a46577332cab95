"""Cost-balanced shards of a global batch (pure; the trainer's ranks each compute the same assignment)."""
import numpy as np
import pytest

from cloudvox.partition import balanced_shards


@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_balanced_shards_hold_near_equal_counts_and_costs(rng, parts):
    costs = rng.lognormal(0.0, 1.5, size=64)  # crystals of very different sizes
    owner = balanced_shards(costs, parts)
    counts = np.bincount(owner, minlength=parts)
    loads = np.bincount(owner, weights=costs, minlength=parts)
    assert counts.sum() == 64 and counts.max() - counts.min() <= 1
    assert loads.max() - loads.min() <= costs.max() + 1e-12  # greedy: within one sample of each other
    contiguous = np.array([c.sum() for c in np.array_split(costs, parts)])
    assert loads.max() <= contiguous.max() + 1e-12
    np.testing.assert_array_equal(balanced_shards(costs, parts), owner)  # deterministic


def test_balanced_shards_with_fewer_items_than_parts_and_equal_costs():
    assert sorted(balanced_shards(np.ones(3), 4).tolist()) == [0, 1, 2]
    owner = balanced_shards(np.ones(10), 2)
    assert np.bincount(owner).tolist() == [5, 5]
    with pytest.raises(ValueError):
        balanced_shards(np.ones(3), 0)
