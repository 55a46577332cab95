"""The training path on every device (``device``: the CPU always, CUDA where present; tests/conftest.py):
the batched first layer (the path without the CPU kernel: GPUs) equal to the dense convolution with every
gradient, binning with rotations on the device, VoxelNet and AtomCloudNet steps with all tensors on the
device, and mixed precision (AMP) within explicit tolerances of float32."""
import pytest
import torch

from cloudvox.binning import bin_reciprocal, collate_reciprocal
from cloudvox.data import cloud_item, collate_clouds
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.io import read_aflow
from cloudvox.models.atomcloud import AtomCloudNet
from cloudvox.models.voxelnet import FIRST_LAYER_METHODS, SparseChannelConv3d, VoxelNet
from cloudvox.models.registry import CloudTask
from cloudvox.binning import random_rotations
from tests.cloudvox.models.test_voxelnet import to_dense
from tests.conftest import fixture_file

CRYSTALS = fixture_file("aflow", "O-Sr-Ti.jsonl")  # no pymatgen needed: runs on a bare GPU node too


def sparse_input(B=5, c=3, n=12, C=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[7, 2, 29], [0, -1, -1], [11, 12, -1], [5, 6, 7], [1, 28, 3]])[:B]
    x = torch.randn(B, c, n, n, n, generator=g, dtype=dtype) * (torch.rand(B, c, n, n, n, generator=g) < 0.06)
    x[:, :, 0, 0, 0] = 1.5  # borders: offsets that fall outside are dropped
    x[:, :, n - 1, n - 1, n - 1] = -2.0
    x[2] = 0.0  # an empty sample
    x[ids < 0] = 0.0
    return x, ids


@pytest.mark.parametrize("method", FIRST_LAYER_METHODS)
@pytest.mark.parametrize("pool", [1, 2])
def test_batched_first_layer_equals_the_dense_convolution_with_every_gradient(device, pool, method):
    """Each batched first layer without the CPU kernel (the segment-matmul scatter: one batched matmul and one
    index_add for the whole batch; the grouped convolution): outputs, weight, bias and input gradients equal
    conv3d (+ max_pool3d) of the dense input, in float64."""
    torch.manual_seed(0)
    C = 30
    conv = SparseChannelConv3d(C, 6, 3, padding=1).double().to(device)
    conv.native = False  # the path a GPU takes, on the CPU too
    conv.method = method
    x, ids = sparse_input(C=C)
    x, ids = x.to(device).requires_grad_(True), ids.to(device)
    dense = to_dense(x.detach().cpu(), ids.cpu(), C).to(device).requires_grad_(True)
    y = conv(x, ids, pool=pool)
    ref = torch.nn.functional.conv3d(dense, conv.weight, conv.bias, padding=1)
    if pool > 1:
        ref = torch.nn.functional.max_pool3d(ref, pool)
    assert y.device.type == device and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    gx, gw, gb = torch.autograd.grad((y * g).sum(), [x, conv.weight, conv.bias])
    gd, rw, rb = torch.autograd.grad((ref * g).sum(), [dense, conv.weight, conv.bias])
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-10)
    for b in range(x.shape[0]):  # the input gradient of each present channel, where the input is non-zero
        for j in range(x.shape[1]):
            if ids[b, j] >= 0:
                occupied = x[b, j].detach() != 0
                torch.testing.assert_close(gx[b, j][occupied], gd[b, ids[b, j]][occupied], rtol=1e-10, atol=1e-10)


def test_binning_with_rotations_runs_on_the_device(device):
    crystals = read_aflow(CRYSTALS)[:12]
    vox = ReciprocalVoxelizer(n=16, length=10.0)
    names = vox.channel_names(crystals)
    batch = collate_reciprocal([vox.reciprocal(s, names) for s in crystals], dtype=torch.float64)
    R = random_rotations(len(crystals), torch.Generator().manual_seed(0))
    on_cpu = bin_reciprocal(batch, len(names), 16, 10.0, "cartesian", R)
    got = bin_reciprocal(batch.to(device), len(names), 16, 10.0, "cartesian", R.to(device))
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), on_cpu, rtol=1e-9, atol=1e-9)


def voxelnet_and_batch(device, dtype=torch.float32, method="scatter"):
    torch.manual_seed(0)
    net = VoxelNet(30, 12, widths=[8, 8], pools=[2, 0], hidden=[16], first_layer=method).to(device=device, dtype=dtype)
    net.first.native = False
    x, ids = sparse_input(dtype=dtype)
    return net, x.to(device), ids.to(device)


@pytest.mark.parametrize("method", FIRST_LAYER_METHODS)
def test_voxelnet_step_keeps_every_tensor_on_the_device(device, method):
    net, x, ids = voxelnet_and_batch(device, method=method)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss = net(x, ids).square().mean()
    loss.backward()
    opt.step()
    assert loss.device.type == device
    assert all(p.device.type == device and p.grad is not None and p.grad.device.type == device
               for p in net.parameters() if p.requires_grad)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def amp_dtypes(device):
    return [torch.bfloat16] if device == "cpu" else [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("method", FIRST_LAYER_METHODS)
def test_voxelnet_under_amp_stays_within_tolerance_of_float32(device, method):
    net, x, ids = voxelnet_and_batch(device, method=method)
    net.eval()
    with torch.no_grad():
        ref = net(x, ids)
        for dtype in amp_dtypes(device):
            with torch.autocast(device, dtype=dtype):
                got = net(x, ids)
            # bf16 keeps 8 bits of mantissa: ~1e-2 relative on outputs of order one after 4 layers
            scale = ref.abs().max()
            assert torch.isfinite(got).all()
            assert (got.float() - ref).abs().max() <= 5e-2 * scale, (dtype, (got.float() - ref).abs().max(), scale)
            if method == "scatter":  # the scatter's sums stay in float32 (the convolutions follow autocast)
                with torch.autocast(device, dtype=dtype):
                    assert net.first(x, ids, pool=2).dtype == torch.float32


def test_atomcloud_on_the_device_and_under_amp(device):
    torch.manual_seed(0)
    net = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2, body_features=True).to(device)
    net.eval()
    structures = read_aflow(CRYSTALS)[:6]
    batch = collate_clouds([cloud_item(k, s.cart_coords, s.numbers, s.lattice, 3.0) for k, s in enumerate(structures)])
    task = CloudTask()  # moves the batch to the device, positions in the model's dtype
    with torch.no_grad():
        ref, _ = task.forward(net, batch, torch.device(device), None, False)
        assert ref.device.type == device and torch.isfinite(ref).all()
        for dtype in amp_dtypes(device):
            with torch.autocast(device, dtype=dtype):
                got, _ = task.forward(net, batch, torch.device(device), None, False)
            assert (got.float() - ref).abs().max() <= 5e-2 * ref.abs().max() + 1e-3, dtype
