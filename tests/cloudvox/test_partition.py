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


@pytest.mark.parametrize("speeds", [[2.0, 1.0], [1.0, 1.0, 3.0], [0.7, 1.3, 1.0, 1.0]])
def test_weighted_shards_give_each_part_time_not_work_in_proportion(rng, speeds):
    costs = rng.lognormal(0.0, 0.5, size=96)
    parts = len(speeds)
    owner = balanced_shards(costs, parts, speeds)
    share = np.asarray(speeds) / np.sum(speeds)
    counts = np.bincount(owner, minlength=parts)
    seconds = np.bincount(owner, weights=costs, minlength=parts) / np.asarray(speeds)  # time to finish each part
    assert counts.sum() == 96 and np.all(counts <= np.ceil(96 * share) + 1)
    assert seconds.max() - seconds.min() <= costs.max() / min(speeds) + 1e-12  # within one sample's time
    np.testing.assert_array_equal(balanced_shards(costs, parts, speeds), owner)  # deterministic


def test_equal_weights_give_the_unweighted_assignment_and_bad_weights_are_refused(rng):
    costs = rng.lognormal(0.0, 1.0, size=33)
    np.testing.assert_array_equal(balanced_shards(costs, 3, [2.5, 2.5, 2.5]), balanced_shards(costs, 3))
    for bad in ([1.0], [1.0, 0.0], [1.0, np.nan], [1.0, -2.0]):
        with pytest.raises(ValueError, match="weights"):
            balanced_shards(costs, 2, bad)
