"""The step timer."""

import torch

from cloudvox.training.timing import StepTimer


def test_step_timer_splits_a_step_into_its_phases():
    t = StepTimer(torch.device("cpu"))
    for _ in range(3):
        for phase in StepTimer.PHASES:
            t.mark(phase)
    ms = t.per_step_ms()
    assert t.steps == 3 and set(ms) == {f"step_ms_{p}" for p in StepTimer.PHASES}
    assert all(v >= 0 for v in ms.values())
