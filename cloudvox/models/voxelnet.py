"""VoxelNet: a 3D CNN on reciprocal-space voxel descriptors.

Default architecture (the original, N = 32 input)::

    Conv3d(C, 16, 3) SELU MaxPool3d(2)  ->  Conv3d(16, 16, 3) SELU MaxPool3d(2)  ->  Conv3d(16, 16, 3) SELU
    -> Flatten (16 x 4^3 = 1024) -> Linear(1024, 32) SELU -> Linear(32, 8) SELU -> Linear(8, 1)

Width, depth, kernel, pooling, activation, normalisation and the head are configurable. With one channel
per element, each structure has only a few non-zero channels: the first layer
(:class:`SparseChannelConv3d`) convolves only those, with the weights of their channels, which equals the
dense convolution over all C channels exactly (the others are zero).
"""
import functools
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
import torch.nn.utils.parametrize  # noqa: F401 (torch.nn.utils.parametrize.register_parametrization)
from ..errors import ConfigError

log = logging.getLogger(__name__)

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh}
# non-decreasing activations commute with max-pooling: act(maxpool(x)) == maxpool(act(x))
MONOTONE = frozenset({"selu", "relu", "elu", "tanh"})
FIRST_LAYER_METHODS = ("auto", "scatter", "grouped")  # SparseChannelConv3d.method


def occupied_voxels(x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None, native: bool = True):
    """The voxels of x (B, c, D, H, W) where any channel is non-zero, sorted by sample: (M,) sample b,
    (M,) flat voxel p = (z H + y) W + x, (M, c) their values and (B,) the count of each sample. Slots with
    channel id -1 (padding) are ignored whatever they hold (their values read 0). One pass of the compiled kernel
    on CPU (``native``, data without gradients), else PyTorch ops."""
    B, c = x.shape[:2]
    flat = x.reshape(B, c, -1)
    kernels = _kernels_for(x, native)
    if kernels is not None:
        valid = torch.ones(B, c, dtype=torch.bool) if channel_ids is None else (channel_ids >= 0).cpu()
        p, values, offsets = kernels.occupied(flat, valid)
        counts = offsets.diff()
        return torch.repeat_interleave(torch.arange(B), counts, output_size=len(p)), p, values, counts
    if channel_ids is not None and not bool((channel_ids >= 0).all()):
        flat = flat * (channel_ids >= 0)[:, :, None].to(flat.dtype)
    n = flat.shape[2]
    occupied = (flat != 0).any(dim=1).view(-1).nonzero().squeeze(1)  # (M,) over b * n + p
    b, p = occupied // n, occupied % n
    return b, p, flat.permute(0, 2, 1)[b, p], torch.bincount(b, minlength=B)


def _kernels_for(t: torch.Tensor, native: bool = True):
    """The compiled kernels if they apply to t (a CPU float32/float64 tensor without gradient; ``native``
    allowed and the kernels built), else None: the PyTorch ops serve."""
    ok = native and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad
    return native_kernels() if ok else None


@functools.lru_cache(maxsize=None)
def native_kernels():
    """The compiled CPU kernels of the sparse first layer (``cloudvox.models._sparse_conv``, built by setup.py
    from ``csrc/sparse_conv.cpp``), or None if they were not built (the PyTorch ops serve then, several times
    slower on CPU)."""
    try:
        from . import _sparse_conv
    except ImportError as err:
        log.warning("cloudvox's C++ sparse-convolution kernel is not built (%s); the first VoxelNet layer uses "
                    "PyTorch ops on CPU (slower). Reinstall with a C++ compiler: pip install -e .", err)
        return None
    return _sparse_conv


class SparseChannelConv3d(nn.Conv3d):
    """A Conv3d over C input channels that takes only each sample's non-zero channels and voxels.

    forward(x, channel_ids): x (B, c, D, H, W) holds sample b's channels channel_ids[b] (-1: padding, whose
    plane is ignored); the result equals ``conv3d(dense)`` where dense (B, C, D, H, W) has x[b, j] at
    channel channel_ids[b, j] and zeros elsewhere. With channel_ids None, x is the dense input.

    Scatter form (stride 1, no dilation): each occupied voxel p (any of its c channels non-zero; reciprocal
    voxels are a few % occupied) spreads T_p = x_p (c,) @ W_b (c, k^3 * O) to the outputs q = p + padding - d
    of its k^3 offsets d, summed by one index_add over the batch. Cost ~ occupied voxels x c x k^3 x O instead of
    D H W x c x k^3 x O, and the output is made in channels-last memory order (B, D', H', W', O), which the
    following CPU/GPU convolutions, activations and pools run fastest on. Other strides/dilations: one grouped
    convolution with per-sample gathered weights (cost c / C of the dense one).

    ``pool=P`` returns ``max_pool3d(conv, P)`` instead (a VoxelNet block that max-pools first). On CPU (float32/64,
    with the compiled kernel, ``native`` True) the scatter and the pool run fused, one sample at a time in a buffer
    that stays in cache, and the backward computes the weight gradient from the pooled gradient and the argmax
    directly: no full-resolution output or gradient is ever stored. Elsewhere (CUDA, no kernel, input gradients
    needed) the PyTorch ops compute the same function.
    """

    native = True  # use the compiled CPU kernel where it applies (set False on an instance to use PyTorch ops)
    # how inputs with channel ids are convolved: "scatter" (above; fused with the compiled kernel on CPU),
    # "grouped" (one grouped convolution with per-sample gathered weights: cuDNN) or "auto": grouped on CUDA,
    # scatter elsewhere (measured on an H200 at batch 256: grouped 7,800 samples/s, scatter 5,700; a plain
    # convolution over all C channels, tried too, 3,000)
    method = "auto"

    def forward(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None, pool: int = 1) -> torch.Tensor:
        """(B, O, D', H', W'), or with ``pool`` > 1 its max-pool (B, O, D' // pool, H' // pool, W' // pool). The
        bias is added after the pool: max(y + b) = max(y) + b (exactly, rounding is monotone), on 1/pool^3 of the
        voxels."""
        method = self.method if self.method != "auto" else ("grouped" if x.is_cuda else "scatter")
        if channel_ids is None:
            y = self._conv_forward(x, self.weight, None)
        elif method == "grouped" or self.padding_mode != "zeros" or isinstance(self.padding, str) \
                or any(s != 1 for s in self.stride) or any(d != 1 for d in self.dilation):
            y = self._grouped(x, channel_ids)
        else:
            y, pooled = self._scatter(x, channel_ids, pool)
            if pooled:
                pool = 1
        if pool > 1:
            y = F.max_pool3d(y, pool)
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1, 1)

    def _sample_weights(self, channel_ids: torch.Tensor) -> torch.Tensor:
        """(B, c, O, k, k, k) weights of each sample's channels (zero for padding slots)."""
        valid = (channel_ids >= 0).to(self.weight.dtype)
        w = self.weight.transpose(0, 1)[channel_ids.clamp(min=0)]  # (B, c, O, k, k, k)
        return w * valid[:, :, None, None, None, None]

    def _grouped(self, x: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        B, c = channel_ids.shape
        w = self._sample_weights(channel_ids).transpose(1, 2).reshape(B * self.out_channels, c, *self.kernel_size)
        y = F.conv3d(x.reshape(1, B * c, *x.shape[2:]), w, None, self.stride, self.padding, self.dilation, groups=B)
        return y.view(B, self.out_channels, *y.shape[2:])

    def _scatter(self, x: torch.Tensor, channel_ids: torch.Tensor, pool: int):
        """(conv output (B, O, D', H', W') in channels-last memory order, or its max-pool; whether it is pooled)."""
        B, c, D, H, W = x.shape
        O, (kd, kh, kw), (pd, ph, pw) = self.out_channels, self.kernel_size, self.padding
        out_shape = (B, D + 2 * pd - kd + 1, H + 2 * ph - kh + 1, W + 2 * pw - kw + 1, O)
        _, Do, Ho, Wo, _ = out_shape
        b, p, values, counts = occupied_voxels(x, channel_ids, self.native)
        w = self._sample_weights(channel_ids).permute(0, 3, 4, 5, 1, 2).reshape(B, kd * kh * kw, c, O)
        if _kernels_for(values, self.native) is not None:
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            geometry = ((D, H, W), tuple(self.kernel_size), tuple(self.padding), max(int(pool), 1))
            y = _NativeSparseConv.apply(values, w.to(values.dtype), p, offsets, geometry)
            return y.permute(0, 4, 1, 2, 3), True
        dev = x.device
        z, r = p // (H * W), p % (H * W)
        yy, xx = r // W, r % W
        # output voxel of each (offset, occupied voxel): q = p + padding - d, shaped (kd, kh, kw, M)
        qz = ((z + pd)[None, :] - torch.arange(kd, device=dev)[:, None])[:, None, None]
        qy = ((yy + ph)[None, :] - torch.arange(kh, device=dev)[:, None])[None, :, None]
        qx = ((xx + pw)[None, :] - torch.arange(kw, device=dev)[:, None])[None, None, :]
        inside = (qz >= 0) & (qz < Do) & (qy >= 0) & (qy < Ho) & (qx >= 0) & (qx < Wo)
        rows = ((b * Do + qz) * Ho + qy) * Wo + qx
        n_rows = B * Do * Ho * Wo
        rows = torch.where(inside, rows, torch.full_like(rows, n_rows)).view(kd * kh * kw, -1)  # outside: spare row
        k3 = kd * kh * kw
        y = _ScatterConv.apply(values, w, rows, inside.view(k3, -1), counts, n_rows)
        return y.view(out_shape).permute(0, 4, 1, 2, 3), False  # (B, O, D', H', W'), channels-last memory order


class _NativeSparseConv(torch.autograd.Function):
    """The compiled CPU kernel (:func:`native_kernels`): values (M, c) sorted by sample, w (B, k^3, c, O), voxel (M,)
    flat input voxel of each row, offsets (B + 1,) row range of each sample, geometry ((D, H, W), kernel, padding,
    pool) -> (B, D'', H'', W'', O), the conv output or its max-pool. Gradient for w only (the inputs are data)."""

    @staticmethod
    def forward(ctx, values, w, voxel, offsets, geometry):
        in_shape, kernel, padding, pool = geometry
        out, argmax = native_kernels().forward(values, voxel, offsets, w, in_shape, kernel, padding, pool)
        ctx.geometry = geometry
        ctx.save_for_backward(values, w, voxel, offsets, argmax)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        values, w, voxel, offsets, argmax = ctx.saved_tensors
        in_shape, kernel, padding, pool = ctx.geometry
        gw = None
        if ctx.needs_input_grad[1]:
            gw = native_kernels().weight_grad(grad, argmax, values, voxel, offsets, w, in_shape, kernel, padding, pool)
        return None, gw, None, None, None


class _ScatterConv(torch.autograd.Function):
    """Sparse convolution by scatter, the whole batch at once: out[rows[d, m]] += values[m] @ w[sample(m), d] for
    every offset d -> (n_rows, O). values (M, c) are the occupied voxels sorted by sample (``counts`` per sample),
    w (B, k^3, c, O), rows (k^3, M) with n_rows for targets outside the output (a spare row that is dropped),
    inside (k^3, M) those that are not.

    The per-sample products are one batched matmul over the samples' voxels padded to the largest count (a
    segment matmul: no Python loop over samples, a fixed number of kernel launches per step whatever the batch,
    which is what a GPU needs), then one index_add. The backward gathers the output gradient at the same rows
    and applies ``inside`` on the c-channel side (c / O of the work of masking the O-channel gradients)."""

    @staticmethod
    def _segments(counts: torch.Tensor, M: int):
        """(sample, slot) of each of the M rows, and the padded length: rows of sample i fill slots 0..n_i-1."""
        starts = torch.cumsum(counts, 0) - counts
        sample = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=M)
        return sample, torch.arange(M, device=counts.device) - starts[sample], int(counts.max()) if M else 0

    @staticmethod
    def forward(ctx, values, w, rows, inside, counts, n_rows):
        B, k3, c, O = w.shape
        M = values.shape[0]
        sample, slot, width = _ScatterConv._segments(counts, M)
        ctx.w_dtype = w.dtype
        w = w.to(values.dtype)
        with torch.autocast(values.device.type, enabled=False):  # sums of many products: in the inputs' precision
            padded = values.new_zeros(B, width, c)
            padded[sample, slot] = values
            T = torch.bmm(padded, w.permute(0, 2, 1, 3).reshape(B, c, k3 * O))  # (B, width, k^3 O)
        T = T[sample, slot].view(M, k3, O)
        out = torch.zeros(n_rows + 1, O, dtype=values.dtype, device=values.device)
        out.index_add_(0, rows.t().reshape(-1), T.view(-1, O))
        ctx.n_rows, ctx.width = n_rows, width
        ctx.save_for_backward(values, w, rows, inside, sample, slot)
        return out[:n_rows]

    @staticmethod
    def backward(ctx, grad):
        values, w, rows, inside, sample, slot = ctx.saved_tensors
        B, k3, c, O = w.shape
        M = values.shape[0]
        r = rows.clamp(max=ctx.n_rows - 1).t()  # (M, k^3); the spare row's entries are masked below
        g = grad.to(values.dtype).contiguous().index_select(0, r.reshape(-1)).view(M, k3, O)
        mask = inside.t().to(values.dtype)  # (M, k^3)
        gw = gv = None
        if ctx.needs_input_grad[1]:
            vm = values.new_zeros(B, ctx.width, k3, c)
            vm[sample, slot] = mask[:, :, None] * values[:, None, :]  # (M, k^3, c)
            gp = g.new_zeros(B, ctx.width, k3, O)
            gp[sample, slot] = g
            gw = torch.einsum("bmdc,bmdo->bdco", vm, gp).to(ctx.w_dtype)  # (B, k^3, c, O)
        if ctx.needs_input_grad[0]:
            gp = g.new_zeros(B, ctx.width, k3 * O)
            gp[sample, slot] = (g * mask[:, :, None]).view(M, k3 * O)
            wt = w.permute(0, 1, 3, 2).reshape(B, k3 * O, c)
            gv = torch.bmm(gp, wt)[sample, slot]  # (M, c)
        return gv, gw, None, None, None, None


class PropertyPrior(nn.Module):
    """Weight parametrization of a first layer over element channels: W[:, c] = free[:, c] + f_c @ A.

    f_c (2 P,) is channel c's element property vector (P properties, standardised) placed in the block of
    its kind (modulus "Sr" or cross-spectrum "Sr*total"); A (2 P, O k^3) is learned, initialised like
    PyTorch's default conv weights for the fan-in of the channels a sample holds.
    """

    def __init__(self, channel_names: Sequence[str], properties: Sequence[str], weight_shape):
        super().__init__()
        from ..descriptors import CROSS_SUFFIX
        from ..elements import atomic_number, property_weights
        table = property_weights(tuple(properties))  # (P, MAX_Z + 1)
        P = table.shape[0]
        feats = np.zeros((len(channel_names), 2 * P), dtype=np.float32)
        for c, name in enumerate(channel_names):
            cross = name.endswith(CROSS_SUFFIX)
            try:
                z = atomic_number(name[:-len(CROSS_SUFFIX)] if cross else name)
            except (KeyError, ValueError):
                raise ConfigError(f"channel_properties needs element channels; channel {name!r} "
                                 "is not an element") from None
            feats[c, P * cross:P * (cross + 1)] = table[:, z]
        self.register_buffer("features", torch.from_numpy(feats))
        O, k3 = weight_shape[0], int(np.prod(weight_shape[2:]))
        self.shape = tuple(weight_shape)
        bound = 1.0 / np.sqrt(P * 3 * k3)  # ~ the default bound for a few channels, spread over P properties
        self.A = nn.Parameter(torch.empty(2 * P, O * k3).uniform_(-bound, bound))

    def forward(self, free: torch.Tensor) -> torch.Tensor:
        O, C = self.shape[0], self.shape[1]
        prior = (self.features.to(free.dtype) @ self.A.to(free.dtype)).view(C, O, *self.shape[2:])
        return free + prior.transpose(0, 1)


class VoxelNet(nn.Module):
    """3D CNN regressor on (B, C, N, N, N) voxels (or compact per-element voxels with channel ids).

    Args:
        in_channels: C, the channel list's length. n: N, voxels per axis.
        widths: output channels of each conv layer. kernel: conv kernel size, one for all layers or a list.
        pools: max-pool size after each conv layer (0 or None: none).
        hidden: widths of the hidden linear layers. activation: selu|relu|silu|gelu|elu|tanh.
        norm: None, "batch" or "group" normalisation after each conv. dropout: before each hidden linear.
        global_pool: the readout of the last feature map: "flatten" (the original: position-specific
            weights), "mean"/"max" over all voxels, "shells": the sum over each of ``shells`` spherical
            shells around G = 0 (the grid centre of a cartesian descriptor), which is invariant to rotations
            of the features and keeps the radial resolution that |G| carries (lattice spacing,
            structure-factor shells), or "radial" (spherical descriptors, axes (|G|, theta, phi)): the sum
            over the angular voxels of each |G| index, divided by N. With 1x1x1 kernels (no pools, no
            normalisation) a "radial" network is exactly invariant to rotations of the structure up to the
            binning (each G keeps its |G| bin), and it runs on the occupied voxels only (:meth:`forward`).
        shells: number of radial shells for ``global_pool="shells"``.
        bias: conv biases. Without them (and with an activation that maps 0 to 0) empty voxels stay exactly
            zero through the conv stack, so a shell sum counts Bragg peaks only, not the shell's volume.
        active_channels: how many input channels a sample has (per-element channels: a few of C), for the
            first layer's initialisation (fan-in active_channels x k^3 instead of C x k^3); None: C.
        channel_properties: element property names (:func:`cloudvox.elements.property_weights`) that
            inform the first layer of per-element channels: channel c's weights are a learned linear function
            of its element's properties (one per channel kind: modulus, cross-spectrum) plus a free per-channel
            part that starts at zero (:class:`PropertyPrior`). Elements rare or absent in training then get
            weights from their chemistry. Needs ``channel_names`` (element symbols, optionally "*total").
    """

    def __init__(self, in_channels: int, n: int = 32, widths: Sequence[int] = (16, 16, 16), kernel=3,
                 pools: Sequence[Optional[int]] = (2, 2, 0), hidden: Sequence[int] = (32, 8), activation: str = "selu",
                 norm: Optional[str] = None, dropout: float = 0.0, global_pool: str = "flatten", shells: int = 16,
                 bias: bool = True, active_channels: Optional[int] = None,
                 channel_properties: Optional[Sequence[str]] = None, channel_names: Optional[Sequence[str]] = None,
                 first_layer: str = "auto"):
        super().__init__()
        if first_layer not in FIRST_LAYER_METHODS:
            raise ConfigError(f"first_layer {first_layer!r} is not one of {FIRST_LAYER_METHODS}")
        if len(pools) != len(widths):
            raise ConfigError(f"pools ({len(pools)}) must give one entry per conv layer ({len(widths)})")
        act = ACTIVATIONS[activation]
        kernels = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel] * len(widths)
        if len(kernels) != len(widths):
            raise ConfigError(f"kernel ({len(kernels)}) must give one entry per conv layer ({len(widths)})")
        self.first = SparseChannelConv3d(in_channels, widths[0], kernels[0], bias=bias)
        self.first.method = first_layer
        if active_channels:  # PyTorch's default bound 1 / sqrt(fan-in), for the channels a sample really has
            bound = 1.0 / np.sqrt(active_channels * self.first.weight[0, 0].numel())
            nn.init.uniform_(self.first.weight, -bound, bound)
            if bias:
                nn.init.uniform_(self.first.bias, -bound, bound)
        if channel_properties:
            if not channel_names or len(channel_names) != in_channels:
                raise ConfigError("channel_properties needs the in_channels element channel names")
            prior = PropertyPrior(channel_names, channel_properties, self.first.weight.shape)
            with torch.no_grad():
                self.first.weight.zero_()  # the free part starts at zero: the properties decide at first
            torch.nn.utils.parametrize.register_parametrization(self.first, "weight", prior)
        size, prev = n - kernels[0] + 1, widths[0]
        scale, offset = 1.0, 0.5 - n / 2 + (kernels[0] - 1) / 2  # feature voxel j sits at scale * j + offset
        blocks = []
        for k, (w, p, kk) in enumerate(zip(widths, pools, kernels)):
            block = [] if k == 0 else [nn.Conv3d(prev, w, kk, bias=bias)]
            if k:
                size = size - kk + 1
                offset += scale * (kk - 1) / 2
            if norm == "batch":
                block.append(nn.BatchNorm3d(w))
            elif norm == "group":
                block.append(nn.GroupNorm(min(8, w), w))
            if p and activation in MONOTONE:  # max-pool first: the same function, the activation on 1/p^3 voxels
                block += [nn.MaxPool3d(p), act()]
            else:
                block.append(act())
                if p:
                    block.append(nn.MaxPool3d(p))
            if p:
                size //= p
                offset += scale * (p - 1) / 2
                scale *= p
            blocks.append(nn.Sequential(*block))
            prev = w
        if size < 1:
            raise ConfigError(f"the conv stack shrinks an N={n} input to nothing; use fewer layers or pools")
        self.blocks = nn.ModuleList(blocks)
        # block 0 starts with its max-pool: the first layer computes conv + pool in one (fused on CPU)
        self.first_pool = int(pools[0]) if norm is None and pools[0] and activation in MONOTONE else 1
        self.global_pool = global_pool
        if global_pool not in ("flatten", "mean", "max", "shells", "radial"):
            raise ConfigError(f"unknown global_pool {global_pool!r}")
        groups = {"shells": shells, "radial": size}.get(global_pool)
        if groups:  # the readout: a weighted sum over the voxels of each group, (size^3,) -> group
            if global_pool == "shells":
                c = np.arange(size) * scale + offset  # centre of each feature voxel, in input voxels from G = 0
                r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).reshape(-1)
                group = np.minimum((r / (np.sqrt(3) * n / 2) * shells).astype(int), shells - 1)
                weight = 1.0  # a sum over each shell: a mean would dilute a shell's few Bragg peaks by its volume
            else:
                group = np.arange(size ** 3) // size ** 2  # the |G| index of a (|G|, theta, phi) voxel
                weight = 1.0 / size  # a shell's few dozen Bragg peaks give features of order one
            M = np.zeros((size ** 3, groups), dtype=np.float32)
            M[np.arange(size ** 3), group] = weight
            self.group_weight = weight
            self.register_buffer("group_matrix", torch.from_numpy(M), persistent=False)
            self.register_buffer("group_index", torch.from_numpy(group.astype(np.int64)), persistent=False)
            self.register_buffer("group_size", torch.from_numpy(np.bincount(group, minlength=groups)), persistent=False)
        flat = prev * groups if groups else (prev * size ** 3 if global_pool == "flatten" else prev)
        head, d = [], flat
        for h in hidden:
            if dropout:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(d, h), act()]
            d = h
        head.append(nn.Linear(d, 1))
        self.head = nn.Sequential(*head)
        self.config = dict(in_channels=in_channels, n=n, widths=list(widths), kernel=kernels, pools=list(pools),
                           hidden=list(hidden), activation=activation, norm=norm, dropout=dropout, global_pool=global_pool,
                           shells=shells, bias=bias, active_channels=active_channels,
                           channel_properties=list(channel_properties) if channel_properties else None,
                           first_layer=first_layer)
        # a stack of 1x1x1 convolutions maps each voxel on its own: run it on the occupied voxels only
        self.pointwise = bool(groups) and norm is None and not any(pools) and \
            all(all(int(k) == 1 for k in np.atleast_1d(kk)) for kk in kernels)

    def forward(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) predictions (normalised target units)."""
        if self.pointwise:
            return self.head(self._pointwise_readout(x, channel_ids).flatten(1)).squeeze(-1)
        h = self.first(x, channel_ids, pool=self.first_pool)
        h = self.blocks[0][1:](h) if self.first_pool > 1 else self.blocks[0](h)  # [pool,] activation
        for block in self.blocks[1:]:
            h = block(h)
        if self.global_pool == "mean":
            h = h.mean(dim=(2, 3, 4))
        elif self.global_pool == "max":
            h = h.amax(dim=(2, 3, 4))
        elif self.group_pool:
            h = h.flatten(2) @ self.group_matrix.to(h.dtype)  # (B, F, groups)
        return self.head(h.flatten(1)).squeeze(-1)

    @property
    def group_pool(self) -> bool:
        return self.global_pool in ("shells", "radial")

    def _voxelwise(self, h: torch.Tensor) -> torch.Tensor:
        """The conv stack after the first layer's linear map, on (M, widths[0]) voxel features -> (M, F)."""
        for block in self.blocks:
            for module in block:
                if isinstance(module, nn.Conv3d):
                    h = F.linear(h, module.weight.flatten(1), module.bias)
                else:  # activations (elementwise)
                    h = module(h)
        return h

    def _pointwise_readout(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, F, groups) readout of a 1x1x1 stack, computed on the occupied voxels only.

        An empty voxel (all channels zero) maps to the same features f0 everywhere (the biases carried
        through the stack), so a group's sum is the sum over its occupied voxels of f(x_v) plus its number of
        empty voxels times f0: exactly the dense network's readout.
        """
        B = x.shape[0]
        b, p, values, counts = occupied_voxels(x, channel_ids, self.first.native)
        if channel_ids is None:
            h = values @ self.first.weight.flatten(1).t()  # (M, O)
        else:  # sample b's slots hold channels channel_ids[b]: one small matmul per sample (voxels sorted by b)
            per_sample = self.first._sample_weights(channel_ids).flatten(2)  # (B, c, O)
            h = torch.cat([v @ w for v, w in zip(values.split(counts.tolist()), per_sample)])
        bias = self.first.bias
        zero = torch.zeros(1, h.shape[1], dtype=x.dtype, device=x.device)
        if bias is not None:
            h, zero = h + bias, zero + bias
        f = self._voxelwise(torch.cat([h, zero]))  # (M + 1, F)
        f, f0 = f[:-1], f[-1]
        groups = self.group_matrix.shape[1]
        slot = b * groups + self.group_index[p]  # (M,) the (sample, group) of each occupied voxel
        out = torch.zeros(B * groups, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, slot, f)
        empty = self.group_size.to(f.dtype).repeat(B) - torch.bincount(slot, minlength=B * groups).to(f.dtype)
        out = (out + empty[:, None] * f0) * self.group_weight  # empty voxels add f0 each
        out = out.view(B, groups, -1)
        return out.transpose(1, 2)  # (B, F, groups), as the dense readout


def build_voxelnet(in_channels: int, n: int, cfg: Optional[Dict] = None,
                   channel_names: Optional[Sequence[str]] = None) -> VoxelNet:
    cfg = {k: v for k, v in (cfg or {}).items() if k not in ("name", "in_channels", "n")}
    return VoxelNet(in_channels, n, channel_names=channel_names, **cfg)
