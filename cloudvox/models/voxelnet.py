"""VoxelNet: a 3D CNN on reciprocal-space voxel descriptors.

Default architecture (the original, N = 32 input)::

    Conv3d(C, 16, 3) SELU MaxPool3d(2)  ->  Conv3d(16, 16, 3) SELU MaxPool3d(2)  ->  Conv3d(16, 16, 3) SELU
    -> Flatten (16 x 4^3 = 1024) -> Linear(1024, 32) SELU -> Linear(32, 8) SELU -> Linear(8, 1)

Width, depth, kernel, pooling, activation, normalisation and the head are configurable. With one channel
per element, each structure has only a few non-zero channels: the first layer
(:class:`SparseChannelConv3d`) convolves only those, with the weights of their channels, which equals the
dense convolution over all C channels exactly (the others are zero).
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh}


class SparseChannelConv3d(nn.Conv3d):
    """A Conv3d over C input channels that takes only each sample's non-zero channels.

    forward(x, channel_ids): x (B, c, D, H, W) holds sample b's channels channel_ids[b] (-1: padding, whose
    plane is ignored); the result equals ``conv3d(dense)`` where dense (B, C, D, H, W) has x[b, j] at
    channel channel_ids[b, j] and zeros elsewhere. With channel_ids None, x is the dense input.
    Implemented as one grouped convolution with per-sample gathered weights: cost c / C of the dense one.
    """

    def forward(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if channel_ids is None:
            return super().forward(x)
        B, c = channel_ids.shape
        valid = channel_ids >= 0
        w = self.weight[:, channel_ids.clamp(min=0)]  # (O, B, c, k, k, k)
        w = w * valid[None, :, :, None, None, None].to(w.dtype)
        w = w.permute(1, 0, 2, 3, 4, 5).reshape(B * self.out_channels, c, *self.kernel_size)
        y = F.conv3d(x.reshape(1, B * c, *x.shape[2:]), w, None, self.stride, self.padding, self.dilation, groups=B)
        y = y.view(B, self.out_channels, *y.shape[2:])
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)


class VoxelNet(nn.Module):
    """3D CNN regressor on (B, C, N, N, N) voxels (or compact per-element voxels with channel ids).

    Args:
        in_channels: C, the channel list's length. n: N, voxels per axis.
        widths: output channels of each conv layer. kernel: conv kernel size, one for all layers or a list.
        pools: max-pool size after each conv layer (0 or None: none).
        hidden: widths of the hidden linear layers. activation: selu|relu|silu|gelu|elu|tanh.
        norm: None, "batch" or "group" normalisation after each conv. dropout: before each hidden linear.
        global_pool: the readout of the last feature map: "flatten" (the original: position-specific
            weights), "mean"/"max" over all voxels, or "shells": the mean over each of ``shells`` spherical
            shells around G = 0 (the grid centre), which is invariant to rotations of the features and keeps
            the radial resolution that |G| carries (lattice spacing, structure-factor shells).
        shells: number of radial shells for ``global_pool="shells"``.
        bias: conv biases. Without them (and with an activation that maps 0 to 0) empty voxels stay exactly
            zero through the conv stack, so a shell sum counts Bragg peaks only, not the shell's volume.
    """

    def __init__(self, in_channels: int, n: int = 32, widths: Sequence[int] = (16, 16, 16), kernel=3,
                 pools: Sequence[Optional[int]] = (2, 2, 0), hidden: Sequence[int] = (32, 8), activation: str = "selu",
                 norm: Optional[str] = None, dropout: float = 0.0, global_pool: str = "flatten", shells: int = 16,
                 bias: bool = True):
        super().__init__()
        if len(pools) != len(widths):
            raise ValueError(f"pools ({len(pools)}) must give one entry per conv layer ({len(widths)})")
        act = ACTIVATIONS[activation]
        kernels = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel] * len(widths)
        if len(kernels) != len(widths):
            raise ValueError(f"kernel ({len(kernels)}) must give one entry per conv layer ({len(widths)})")
        self.first = SparseChannelConv3d(in_channels, widths[0], kernels[0], bias=bias)
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
            block.append(act())
            if p:
                block.append(nn.MaxPool3d(p))
                size //= p
                offset += scale * (p - 1) / 2
                scale *= p
            blocks.append(nn.Sequential(*block))
            prev = w
        if size < 1:
            raise ValueError(f"the conv stack shrinks an N={n} input to nothing; use fewer layers or pools")
        self.blocks = nn.ModuleList(blocks)
        self.global_pool = global_pool
        if global_pool not in ("flatten", "mean", "max", "shells"):
            raise ValueError(f"unknown global_pool {global_pool!r}")
        if global_pool == "shells":
            c = np.arange(size) * scale + offset  # centre of each feature voxel, in input voxels from G = 0
            r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).reshape(-1)
            shell = np.minimum((r / (np.sqrt(3) * n / 2) * shells).astype(int), shells - 1)
            M = np.zeros((size ** 3, shells), dtype=np.float32)
            M[np.arange(size ** 3), shell] = 1.0
            # a sum over each shell: a mean would dilute a shell's few Bragg peaks by its volume
            self.register_buffer("shell_matrix", torch.from_numpy(M), persistent=False)
        flat = {"flatten": prev * size ** 3, "shells": prev * shells}.get(global_pool, prev)
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
                           shells=shells, bias=bias)

    def forward(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) predictions (normalised target units)."""
        h = self.blocks[0](self.first(x, channel_ids))
        for block in self.blocks[1:]:
            h = block(h)
        if self.global_pool == "mean":
            h = h.mean(dim=(2, 3, 4))
        elif self.global_pool == "max":
            h = h.amax(dim=(2, 3, 4))
        elif self.global_pool == "shells":
            h = h.flatten(2) @ self.shell_matrix.to(h.dtype)  # (B, F, shells)
        return self.head(h.flatten(1)).squeeze(-1)


def build_voxelnet(in_channels: int, n: int, cfg: Optional[Dict] = None) -> VoxelNet:
    cfg = {k: v for k, v in (cfg or {}).items() if k not in ("name", "in_channels", "n")}
    return VoxelNet(in_channels, n, **cfg)
