"""An epoch's batches: read-ahead and in-process reading."""
import threading

import pytest

from cloudvox.training.loaders import Prefetch


def test_prefetch_yields_every_batch_in_order():
    assert list(Prefetch(range(50), depth=2)) == list(range(50))
    assert len(Prefetch(list(range(7)))) == 7


def test_prefetch_hands_the_loader_error_to_the_consumer():
    def loader():
        yield 1
        raise KeyError("structure 7: broken")
    it = iter(Prefetch(loader()))
    assert next(it) == 1
    with pytest.raises(KeyError, match="structure 7"):
        next(it)


def test_leaving_a_prefetched_loop_early_ends_its_thread():
    before = threading.active_count()
    for k, _ in enumerate(Prefetch(range(10_000), depth=1)):
        if k == 3:
            break
    assert threading.active_count() == before  # the generator closed, the thread joined


def test_in_process_batches_carry_the_rows_they_were_split_with():
    import numpy as np
    from cloudvox.training.loaders import InProcessBatches, _EpochBatches

    class Items:
        def __getitem__(self, i):
            return i

        def collate(self, items):
            return list(items)
    batches = [np.array([5, 3, 9, 1]), np.array([4, 0])]
    halves = iter([np.array([0, 2]), np.array([1])])
    got = list(InProcessBatches(Items(), batches, lambda b: next(halves)))
    assert [(r.tolist(), b) for r, b in got] == [([0, 2], [5, 9]), ([1], [0])]
    sampler = _EpochBatches()
    sampler.set(batches, lambda b: np.arange(len(b))[::2])
    assert list(sampler) == [[5, 9], [4]] and [r.tolist() for r in sampler.pending] == [[0, 2], [0]]
