"""The trainer's pieces: the prefetching loader wrapper, the step timer."""
import threading

import pytest
import torch

from cloudvox.train import Prefetch, StepTimer


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


def test_step_timer_splits_a_step_into_its_phases():
    t = StepTimer(torch.device("cpu"))
    for _ in range(3):
        for phase in StepTimer.PHASES:
            t.mark(phase)
    ms = t.per_step_ms()
    assert t.steps == 3 and set(ms) == {f"step_ms_{p}" for p in StepTimer.PHASES}
    assert all(v >= 0 for v in ms.values())
