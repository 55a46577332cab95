"""Per-sample losses."""
import torch


def test_berhu_loss_is_l1_below_the_threshold_and_pulls_outliers_like_mse():
    import dataclasses
    from cloudvox.training.config import TrainConfig
    from cloudvox.training.losses import BERHU_THRESHOLD, loss_fn as _loss_fn

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
    assert all(_loss_fn(name) is not None for name in choices["loss"])  # every loss a config may name exists
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
