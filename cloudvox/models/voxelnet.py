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
        widths: output channels of each conv layer. kernel: conv kernel size.
        pools: max-pool size after each conv layer (0 or None: none).
        hidden: widths of the hidden linear layers. activation: selu|relu|silu|gelu|elu|tanh.
        norm: None, "batch" or "group" normalisation after each conv. dropout: before each hidden linear.
        global_pool: "flatten" (the original) or "mean"/"max" over the last feature map.
    """

    def __init__(self, in_channels: int, n: int = 32, widths: Sequence[int] = (16, 16, 16), kernel: int = 3,
                 pools: Sequence[Optional[int]] = (2, 2, 0), hidden: Sequence[int] = (32, 8), activation: str = "selu",
                 norm: Optional[str] = None, dropout: float = 0.0, global_pool: str = "flatten"):
        super().__init__()
        if len(pools) != len(widths):
            raise ValueError(f"pools ({len(pools)}) must give one entry per conv layer ({len(widths)})")
        act = ACTIVATIONS[activation]
        self.first = SparseChannelConv3d(in_channels, widths[0], kernel)
        layers, size, prev = [], n - kernel + 1, widths[0]
        blocks = []
        for k, (w, p) in enumerate(zip(widths, pools)):
            block = [] if k == 0 else [nn.Conv3d(prev, w, kernel)]
            if k:
                size = size - kernel + 1
            if norm == "batch":
                block.append(nn.BatchNorm3d(w))
            elif norm == "group":
                block.append(nn.GroupNorm(min(8, w), w))
            block.append(act())
            if p:
                block.append(nn.MaxPool3d(p))
                size //= p
            blocks.append(nn.Sequential(*block))
            prev = w
        if size < 1:
            raise ValueError(f"the conv stack shrinks an N={n} input to nothing; use fewer layers or pools")
        self.blocks = nn.ModuleList(blocks)
        self.global_pool = global_pool
        flat = prev * size ** 3 if global_pool == "flatten" else prev
        head, d = [], flat
        for h in hidden:
            if dropout:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(d, h), act()]
            d = h
        head.append(nn.Linear(d, 1))
        self.head = nn.Sequential(*head)
        self.config = dict(in_channels=in_channels, n=n, widths=list(widths), kernel=kernel, pools=list(pools),
                           hidden=list(hidden), activation=activation, norm=norm, dropout=dropout, global_pool=global_pool)

    def forward(self, x: torch.Tensor, channel_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) predictions (normalised target units)."""
        h = self.blocks[0](self.first(x, channel_ids))
        for block in self.blocks[1:]:
            h = block(h)
        if self.global_pool == "mean":
            h = h.mean(dim=(2, 3, 4))
        elif self.global_pool == "max":
            h = h.amax(dim=(2, 3, 4))
        return self.head(h.flatten(1)).squeeze(-1)


def build_voxelnet(in_channels: int, n: int, cfg: Optional[Dict] = None) -> VoxelNet:
    cfg = {k: v for k, v in (cfg or {}).items() if k not in ("name", "in_channels", "n")}
    return VoxelNet(in_channels, n, **cfg)
