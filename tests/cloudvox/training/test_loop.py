"""The training loop: the schedule fitted to a time budget, the ranks' speeds."""
import pytest
import torch


def test_cosine_schedule_is_fitted_to_the_time_budget():
    from types import SimpleNamespace
    from cloudvox.training.config import TrainConfig
    from cloudvox.training.loop import Trainer
    from cloudvox.training.process import SingleProcess
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
    from cloudvox.training.config import TrainConfig
    from cloudvox.training.loaders import shard_rows
    from cloudvox.training.loop import Trainer
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
