import pytest
import torch

from cloudvox.models.voxelnet import SparseChannelConv3d, VoxelNet, native_kernels, occupied_voxels


def to_dense(compact, ids, C):
    """(B, C, ...) with compact[b, j] at channel ids[b, j] (slots with id -1 dropped), by plain loops."""
    dense = torch.zeros(compact.shape[0], C, *compact.shape[2:], dtype=compact.dtype)
    for b in range(compact.shape[0]):
        for j in range(compact.shape[1]):
            if ids[b, j] >= 0:
                dense[b, ids[b, j]] = compact[b, j]
    return dense


def test_sparse_first_layer_equals_the_dense_convolution():
    torch.manual_seed(0)
    C, B, N = 40, 5, 12
    conv = SparseChannelConv3d(C, 6, 3).double()
    ids = torch.tensor([[3, 17, 39], [0, 5, -1], [22, -1, -1], [1, 2, 3], [39, 38, 0]])
    compact = torch.randn(B, 3, N, N, N, dtype=torch.float64)
    compact[ids < 0] = 0.0
    dense = to_dense(compact, ids, C)
    compact_noise = compact.clone()
    compact_noise[1, 2] = 7.0  # a padding plane's content is ignored
    expected = torch.nn.functional.conv3d(dense, conv.weight, conv.bias)
    torch.testing.assert_close(conv(compact_noise, ids), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv(dense), expected, rtol=1e-12, atol=1e-12)
    # gradients agree too
    w1 = torch.autograd.grad(conv(compact, ids).sum(), conv.weight)[0]
    w2 = torch.autograd.grad(torch.nn.functional.conv3d(dense, conv.weight, conv.bias).sum(), conv.weight)[0]
    torch.testing.assert_close(w1, w2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(), dict(padding=1), dict(kernel_size=(3, 1, 2)), dict(stride=2)])
def test_sparse_first_layer_on_sparse_voxels_equals_the_dense_convolution(kwargs):
    """Sparse inputs (a few % occupied, as reciprocal voxels are), voxels on every border, padding, anisotropic
    kernels and the grouped fallback (stride 2): outputs and weight/bias gradients equal the dense ones."""
    torch.manual_seed(1)
    C, B, N = 30, 4, 10
    args = dict(kernel_size=3)
    args.update(kwargs)
    conv = SparseChannelConv3d(C, 5, **args).double()
    ids = torch.tensor([[7, 2, 29], [0, -1, -1], [11, 12, -1], [5, 6, 7]])
    compact = torch.randn(B, 3, N, N, N, dtype=torch.float64) * (torch.rand(B, 3, N, N, N) < 0.05)
    compact[:, :, 0, 0, 0] = 1.5  # corners and faces: the scatter drops offsets that fall outside
    compact[:, :, N - 1, N - 1, N - 1] = -2.0
    compact[:, :, 0, N - 1, 3] = 0.5
    compact[3] = 0.0  # an empty sample: bias only
    compact[ids < 0] = 0.0
    dense = to_dense(compact, ids, C)
    y = conv(compact, ids)
    ref = torch.nn.functional.conv3d(dense, conv.weight, conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad((y * g).sum(), [conv.weight, conv.bias])
    want = torch.autograd.grad((ref * g).sum(), [conv.weight, conv.bias])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_default_architecture_is_the_original():
    net = VoxelNet(3, 32)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 16, (3,) * 3), (16, 16, (3,) * 3),
                                                                                (16, 16, (3,) * 3)]
    assert [(l.in_features, l.out_features) for l in linears] == [(1024, 32), (32, 8), (8, 1)]
    assert net(torch.randn(2, 3, 32, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="shrinks"):
        VoxelNet(3, 8)


def test_native_kernel_is_built():
    """setup.py builds the C++ CPU kernel of the sparse first layer; without it training on CPU is several
    times slower (the PyTorch ops serve), so an install that lost it must not pass unnoticed."""
    assert native_kernels() is not None, "cloudvox.models._sparse_conv is missing: pip install -e . (needs g++)"


def test_native_kernel_refuses_indices_it_would_write_out_of_bounds_with():
    kernels = native_kernels()
    values, w = torch.ones(3, 1), torch.zeros(1, 27, 1, 4)
    geometry = ([5, 5, 5], [3, 3, 3], [0, 0, 0], 2)
    out, _ = kernels.forward(values, torch.tensor([0, 1, 124]), torch.tensor([0, 3]), w, *geometry)
    assert out.shape == (1, 1, 1, 1, 4)
    with pytest.raises(RuntimeError, match="outside the D x H x W input"):
        kernels.forward(values, torch.tensor([0, 1, 125]), torch.tensor([0, 3]), w, *geometry)
    with pytest.raises(RuntimeError, match="outside the D x H x W input"):
        kernels.forward(values, torch.tensor([0, -1, 2]), torch.tensor([0, 3]), w, *geometry)
    with pytest.raises(RuntimeError, match="offsets must rise from 0 to M"):
        kernels.forward(values, torch.tensor([0, 1, 2]), torch.tensor([0, 2]), w, *geometry)
    with pytest.raises(RuntimeError, match=r"w must be \(B, k\^3, c, O\)"):
        kernels.forward(values, torch.tensor([0, 1, 2]), torch.tensor([0, 3]), w[0], *geometry)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_occupied_voxels_kernel_equals_the_torch_scan(dtype):
    """The compiled occupancy pass and the PyTorch scan list the same voxels, values and counts: padding slots
    ignored whatever they hold, NaN counted as occupied, an empty sample, a sample with one channel of three."""
    torch.manual_seed(5)
    x = torch.randn(4, 3, 6, 5, 4, dtype=dtype) * (torch.rand(4, 3, 6, 5, 4) < 0.1)
    ids = torch.tensor([[0, 4, -1], [2, -1, -1], [1, 2, 3], [7, 8, 9]])
    x[0, 2] = 3.0  # padding slot: ignored
    x[1, 0, 1, 1, 1] = float("nan")
    x[2] = 0.0  # empty
    x[3, 1:] = 0.0
    x[3, 0, 5, 4, 3] = 2.0  # the last voxel
    native, torch_scan = occupied_voxels(x, ids, native=True), occupied_voxels(x, ids, native=False)
    for a, b in zip(native, torch_scan):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    assert native[3].tolist() == [int(((x[i, ids[i] >= 0] != 0).any(0)).sum()) for i in range(4)]
    assert native[3][2] == 0 and int(native[1][-1]) == 6 * 5 * 4 - 1


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, pool=2, n=12),  # the default: 12 -> 10 -> 5
    dict(kernel_size=3, padding=1, pool=2, n=9),  # odd output: its last plane is in no window
    dict(kernel_size=(3, 1, 2), padding=(1, 0, 1), pool=3, n=10),
    dict(kernel_size=2, pool=1, n=7),  # no pool
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_conv_and_pool_equals_conv_then_pool(geometry, dtype):
    """The compiled kernel (scatter + max-pool per sample, weight gradient from the pooled gradient and the argmax)
    and the PyTorch ops give conv3d then max_pool3d of the dense input: outputs, weight and bias gradients,
    with padding slots, voxels on every border, an empty sample."""
    torch.manual_seed(3)
    geometry = dict(geometry)
    pool, n = geometry.pop("pool"), geometry.pop("n")
    C, B = 20, 4
    conv = SparseChannelConv3d(C, 16, **geometry).to(dtype)
    ids = torch.tensor([[7, 2, 19], [0, -1, -1], [11, 12, -1], [5, 6, 7]])
    x = torch.randn(B, 3, n, n, n, dtype=dtype) * (torch.rand(B, 3, n, n, n) < 0.08)
    x[:, :, 0, 0, 0] = 1.5
    x[:, :, n - 1, n - 1, n - 1] = -2.0
    x[:, :, 0, n - 1, 2] = 0.5
    x[3] = 0.0  # an empty sample: bias only
    x[ids < 0] = 0.0
    dense = to_dense(x, ids, C)
    ref = torch.nn.functional.conv3d(dense, conv.weight, conv.bias, padding=conv.padding)
    if pool > 1:
        ref = torch.nn.functional.max_pool3d(ref, pool)
    g = torch.randn_like(ref)
    want = torch.autograd.grad((ref * g).sum(), [conv.weight, conv.bias])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for native in (True, False):
        conv.native = native
        y = conv(x, ids, pool=pool)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, **tol)
        got = torch.autograd.grad((y * g).sum(), [conv.weight, conv.bias])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tol)


def test_fused_conv_and_pool_propagates_nan_like_max_pool():
    torch.manual_seed(4)
    conv = SparseChannelConv3d(5, 4, 3).double()
    ids = torch.tensor([[0, 3]])
    x = torch.randn(1, 2, 8, 8, 8, dtype=torch.float64) * (torch.rand(1, 2, 8, 8, 8) < 0.1)
    x[0, 1, 4, 4, 4] = float("nan")
    ref = torch.nn.functional.max_pool3d(torch.nn.functional.conv3d(to_dense(x, ids, 5), conv.weight, conv.bias), 2)
    y = conv(x, ids, pool=2)
    assert torch.equal(y.isnan(), ref.isnan()) and 0 < int(ref.isnan().sum()) < ref.numel()
    torch.testing.assert_close(y.nan_to_num(), ref.nan_to_num(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("native", [True, False])
def test_network_equals_the_original_layer_order(native):
    """Conv SELU MaxPool, written literally with torch layers and the same weights, gives the same outputs and
    gradients as VoxelNet (which pools before the monotone activation and convolves only occupied voxels), with
    the compiled kernel and with PyTorch ops."""
    torch.manual_seed(2)
    C, N = 12, 32
    net = VoxelNet(C, N).double()
    net.first.native = native
    c1, c2, c3 = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    literal = torch.nn.Sequential(torch.nn.Conv3d(C, 16, 3), torch.nn.SELU(), torch.nn.MaxPool3d(2),
                                  c2, torch.nn.SELU(), torch.nn.MaxPool3d(2), c3, torch.nn.SELU(),
                                  torch.nn.Flatten(), *net.head).double()
    literal[0].load_state_dict(c1.state_dict())
    ids = torch.tensor([[0, 5, 11], [3, 4, -1]])
    compact = torch.randn(2, 3, N, N, N, dtype=torch.float64) * (torch.rand(2, 3, N, N, N) < 0.04)
    compact[ids < 0] = 0.0
    dense = to_dense(compact, ids, C)
    ours, ref = net(compact, ids), literal(dense).squeeze(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), [c1.weight, c2.weight])
    g2 = torch.autograd.grad(ref.sum(), [literal[0].weight, c2.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_shell_readout_is_invariant_to_cube_rotations_of_the_input():
    torch.manual_seed(0)
    net = VoxelNet(2, 16, widths=(4, 4), pools=(2, 0), hidden=(8,), global_pool="shells", shells=6).double()
    # a kernel-symmetric network: average each conv kernel over the 48 cube symmetries would make it exact;
    # here check the readout itself: features rotated by 90 degrees about z pool to the same shells
    h = torch.randn(1, 4, 5, 5, 5, dtype=torch.float64)
    pooled = h.flatten(2) @ net.group_matrix.double()
    rotated = torch.rot90(h, 1, dims=(2, 3)).flatten(2) @ net.group_matrix.double()
    torch.testing.assert_close(pooled, rotated)
    assert net(torch.randn(3, 2, 16, 16, 16, dtype=torch.float64)).shape == (3,)


@pytest.mark.parametrize("global_pool", ["radial", "shells"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_stack_on_occupied_voxels_equals_the_dense_network(global_pool, bias):
    """A 1x1x1 stack with a group readout runs on the occupied voxels only: same outputs and gradients as
    the dense network (empty voxels carry the biases through the stack), compact or dense input."""
    torch.manual_seed(0)
    net = VoxelNet(10, 8, widths=(6, 5), kernel=1, pools=(0, 0), hidden=(7,), activation="selu",
                   global_pool=global_pool, shells=4, bias=bias, active_channels=3).double()
    assert net.pointwise
    ids = torch.tensor([[1, 4, -1], [0, 9, 3], [2, -1, -1]])
    occupied = torch.rand(3, 1, 8, 8, 8) < 0.1
    x = torch.randn(3, 3, 8, 8, 8, dtype=torch.float64) * occupied
    x[1, :, 0, 0, 0] = torch.tensor([0.0, 1.5, 0.0], dtype=torch.float64)  # one channel of three occupied
    x[0, 2] = 0.7  # a padding slot's plane is ignored whatever it holds
    dense = to_dense(x, ids, 10)
    fast = net(x, ids)
    grads_fast = torch.autograd.grad(fast.square().sum(), list(net.parameters()))
    fast_dense = net(dense)
    net.pointwise = False
    slow = net(dense)
    grads_slow = torch.autograd.grad(slow.square().sum(), list(net.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast_dense, slow, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_radial_readout_is_invariant_to_angular_permutations():
    """The "radial" readout of a spherical grid only sees each |G| index: permuting the angular voxels within
    each radial index (what a rotation does to Bragg peaks on that sphere) leaves the prediction unchanged."""
    torch.manual_seed(1)
    net = VoxelNet(4, 8, widths=(6, 6), kernel=1, pools=(0, 0), hidden=(5,), activation="silu",
                   global_pool="radial", bias=False).double()
    x = torch.randn(2, 4, 8, 8, 8, dtype=torch.float64) * (torch.rand(2, 1, 8, 8, 8) < 0.2)
    perm = torch.randperm(64)
    shuffled = x.reshape(2, 4, 8, 64)[..., perm].reshape(2, 4, 8, 8, 8)
    torch.testing.assert_close(net(shuffled), net(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(net(x.flip(2)), net(x))  # but it does see |G|


def test_property_prior_gives_unseen_elements_weights_from_their_chemistry():
    names = ["O", "Sr", "Ti", "Tb", "O*total", "Sr*total", "Ti*total", "Tb*total"]
    torch.manual_seed(0)
    net = VoxelNet(8, 8, widths=(6, 5), kernel=1, pools=(0, 0), hidden=(7,), activation="silu",
                   global_pool="radial", bias=False, channel_properties=["one", "Z", "X", "radius"],
                   channel_names=names).double()
    W = net.first.weight.detach()  # (O, C, 1, 1, 1): at first the property part alone
    assert W[:, 3].abs().sum() > 0 and not torch.allclose(W[:, 3], W[:, 1])  # Tb has its own weights
    assert not torch.allclose(W[:, 1], W[:, 5])  # modulus and cross-spectrum channels differ
    ids = torch.tensor([[0, 1, 2, 4, 5, 6]])  # SrTiO3: Tb never present
    x = torch.randn(1, 6, 8, 8, 8, dtype=torch.float64) * (torch.rand(1, 1, 8, 8, 8) < 0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x, ids).sum().backward()
    opt.step()
    W2 = net.first.weight.detach()
    assert not torch.allclose(W2[:, 3], W[:, 3])  # training on other elements moves Tb's weights (shared A)
    free = net.first.parametrizations.weight.original
    assert free[:, 3].abs().sum() == 0  # but not Tb's free part
    torch.testing.assert_close(net(x, ids), _dense_copy(net)(to_dense(x, ids, 8)), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not an element"):
        VoxelNet(2, 8, channel_properties=["Z"], channel_names=["total", "total*total"])


def _dense_copy(net):
    import copy
    other = copy.deepcopy(net)
    other.pointwise = False
    return other
