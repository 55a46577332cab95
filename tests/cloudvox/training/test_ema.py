"""The moving average of the parameters, as a module of its own."""
import pytest
import torch

from cloudvox.training.ema import EMA


def test_ema_follows_the_ramped_decay_and_swaps_the_weights_only_within_averaged():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    ema = EMA(model, 0.9)
    start = [p.detach().clone() for p in model.parameters()]
    expect = [p.clone() for p in start]
    for n in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        d = min(0.9, (1.0 + n) / (10.0 + n))
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, model.parameters())]
    assert ema.steps == 5 and ema.state_dict() == {"steps": 5}
    trained = [p.detach().clone() for p in model.parameters()]
    with ema.averaged():
        for p, e in zip(model.parameters(), expect):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
    for p, t in zip(model.parameters(), trained):
        assert torch.equal(p.detach(), t)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)
