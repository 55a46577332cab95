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


def test_cosine_schedule_is_fitted_to_the_time_budget():
    from types import SimpleNamespace
    from cloudvox.train import SingleProcess, TrainConfig, Trainer
    cfg = TrainConfig(epochs=100, lr=1.0, max_minutes=1.0, min_lr_ratio=0.01)
    t = SimpleNamespace(cfg=cfg, epoch=3, horizon=cfg.epochs, base_lr=1.0, dist=SingleProcess())
    Trainer._fit_horizon(t, remaining_s=10.0, epoch_s=2.0)
    assert t.horizon == 8  # 3 epochs done + 5 more fit in 10 s
    assert Trainer.lr_at(t, 7) > 0.01 and Trainer.lr_at(t, 8) == pytest.approx(0.01)  # annealed by the last epoch
    Trainer._fit_horizon(t, remaining_s=1e4, epoch_s=2.0)
    assert t.horizon == 100  # capped by epochs
    Trainer._fit_horizon(t, remaining_s=-5.0, epoch_s=2.0)
    assert t.horizon == 4  # out of time: the next epoch runs at the lowest rate
    t.cfg = TrainConfig(epochs=100, max_minutes=0.0)
    t.horizon = 100
    Trainer._fit_horizon(t, remaining_s=10.0, epoch_s=2.0)
    assert t.horizon == 100  # no budget: the configured length
