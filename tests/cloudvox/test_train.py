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


class _TwoRanks:
    """Rank 0 of two, whose allreduce adds what rank 1 would send: the same work in twice the time."""
    rank, size = 0, 2

    def allreduce_sum(self, t):
        other = torch.zeros_like(t)
        other[1 + 1], other[1 + 2 + 1] = 2 * t[1 + 0], t[1 + 2 + 0]  # rank 1: busy seconds x 2, same work
        return t + other


def test_rank_speeds_are_agreed_with_the_stop_signal_and_shift_samples_to_the_faster_rank():
    from types import SimpleNamespace
    import numpy as np
    from cloudvox.train import TrainConfig, Trainer, shard_rows
    cfg = TrainConfig(stop_check_every=4)
    t = SimpleNamespace(cfg=cfg, steps_done=3, stop_requested=False, dist=_TwoRanks(), _window=np.array([0.3, 48.0]),
                        _rebalance=True, rank_speeds=None)
    assert Trainer._stop_agreed(t, last_step=False) is False and t.rank_speeds is None  # not a check step
    t.steps_done = 4
    assert Trainer._stop_agreed(t, last_step=False) is False
    np.testing.assert_allclose(t.rank_speeds, [4 / 3, 2 / 3])  # rank 1 took twice as long for the same work
    assert t._window.tolist() == [0.0, 0.0]  # a new window starts
    mine, theirs = (shard_rows(None, 30, r, 2, t.rank_speeds) for r in (0, 1))
    assert len(mine) == 20 and len(theirs) == 10 and sorted(mine.tolist() + theirs.tolist()) == list(range(30))
    t.stop_requested, t._window, t._rebalance = True, np.array([0.0, 0.0]), False
    assert Trainer._stop_agreed(t, last_step=True) is True  # the stop is agreed; no time measured: speeds kept
    np.testing.assert_allclose(t.rank_speeds, [4 / 3, 2 / 3])


def test_in_process_batches_carry_the_rows_they_were_split_with():
    import numpy as np
    from cloudvox.train import InProcessBatches, _EpochBatches

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


def test_berhu_loss_is_l1_below_the_threshold_and_pulls_outliers_like_mse():
    from cloudvox.config import TRAIN_CHOICES
    from cloudvox.train import BERHU_THRESHOLD, _loss_fn

    assert "berhu" in TRAIN_CHOICES["loss"]
    c = BERHU_THRESHOLD
    berhu, l1 = _loss_fn("berhu"), _loss_fn("l1")
    y = torch.zeros(6, dtype=torch.float64)
    p = torch.tensor([-0.3, 0.1, 0.49, c, 2.0, -5.7], dtype=torch.float64, requires_grad=True)
    loss = berhu(p, y)
    small = p.detach().abs() <= c
    assert torch.allclose(loss[small], l1(p, y)[small])
    assert torch.allclose(loss[~small], (p.detach()[~small] ** 2 + c * c) / (2 * c))
    loss.sum().backward()
    # L1's unit gradient below c; above it the pull grows with the error (x / c), as under MSE
    assert torch.allclose(p.grad[small], torch.sign(p.detach()[small]))
    assert torch.allclose(p.grad[~small], p.detach()[~small] / c)
    assert p.grad[-1].abs() > 10 * p.grad[1].abs()
    # continuous, with a continuous gradient, at the threshold
    eps = 1e-7
    x = torch.tensor([c - eps, c + eps], dtype=torch.float64, requires_grad=True)
    v = berhu(x, torch.zeros(2, dtype=torch.float64))
    v.sum().backward()
    assert abs(float(v[1] - v[0])) < 1e-6 and abs(float(x.grad[1] - x.grad[0])) < 1e-6
