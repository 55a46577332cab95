"""Binning of reciprocal sets into voxels with torch, for a whole batch at once, on any device.

The training loader stores each structure's unbinned reciprocal set (G vectors and |h| per present
channel, :meth:`cloudvox.descriptors.ReciprocalVoxelizer.reciprocal`) and bins it on the fly under random
rotations on the training device. The voxel index is :func:`cloudvox.descriptors.voxel_index`, the same
function the numpy descriptor uses.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .descriptors import ReciprocalSet, voxel_index


@dataclass
class ReciprocalBatch:
    """Reciprocal sets of S structures, concatenated.

    G: (P, 3) reciprocal vectors, 1/Angstrom, each structure's points contiguous, in structure order;
    point_structure: (P,) int64 structure of each point; entry_point: (E,) int64 point of each
    (point, channel) entry; entry_channel: (E,) int64 channel; entry_value: (E,) value of the entry;
    n_structures: S; point_counts: (S,) points of each structure (host integers; empty: counted from
    point_structure).
    """
    G: torch.Tensor
    point_structure: torch.Tensor
    entry_point: torch.Tensor
    entry_channel: torch.Tensor
    entry_value: torch.Tensor
    n_structures: int
    point_counts: Tuple[int, ...] = ()

    def to(self, device=None, dtype=None) -> "ReciprocalBatch":
        f = dict(device=device)
        return ReciprocalBatch(self.G.to(dtype=dtype, **f), self.point_structure.to(**f), self.entry_point.to(**f),
                               self.entry_channel.to(**f), self.entry_value.to(dtype=dtype, **f), self.n_structures,
                               self.point_counts)


def collate_reciprocal(sets: Sequence[ReciprocalSet], dtype=torch.float32) -> ReciprocalBatch:
    """Concatenate reciprocal sets (channel indices kept as the sets give them) into one batch."""
    counts = np.array([len(s.G) for s in sets], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    G = np.concatenate([s.G for s in sets]).astype(np.float64)
    point_structure = np.repeat(np.arange(len(sets)), counts)
    ep, ec, ev = [], [], []
    for s, off in zip(sets, offsets):
        c, p = s.amp.shape
        ep.append(np.tile(np.arange(p), c) + off)
        ec.append(np.repeat(s.channels, p))
        ev.append(s.amp.reshape(-1))
    cat = (lambda xs, dt: torch.from_numpy(np.concatenate(xs).astype(dt)))
    return ReciprocalBatch(torch.from_numpy(G).to(dtype), torch.from_numpy(point_structure),
                           cat(ep, np.int64), cat(ec, np.int64), cat(ev, np.float32).to(dtype), len(sets),
                           tuple(int(c) for c in counts))


def bin_reciprocal(batch: ReciprocalBatch, n_channels: int, n: int, length: float, mode: str = "cartesian",
                   rotations: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Voxels (S, n_channels, N, N, N) of a batch of reciprocal sets, each rotated by its own matrix.

    Args:
        batch: the concatenated reciprocal sets (on the target device); G is stored in float32 or float64,
            and binned in float64 so that vectors on voxel edges fall as in the numpy descriptor.
        n_channels: C, the channel list's length. n: N. length: L in Angstrom. mode: cartesian|spherical.
        rotations: optional (S, 3, 3) orthogonal matrices R; point G of structure s is binned at R_s G,
            which is the descriptor of structure s rotated by R_s.
    Returns:
        (S, C, N, N, N) tensor of batch.entry_value's dtype, on its device.
    """
    G = batch.G.double()  # voxel edges decided in float64, as the numpy descriptor (ties are common)
    if rotations is not None:
        R = rotations.to(dtype=G.dtype, device=G.device)
        counts = list(batch.point_counts) or \
            torch.bincount(batch.point_structure, minlength=batch.n_structures).tolist()
        G = torch.cat([g @ r.T for g, r in zip(G.split(counts), R)])  # each structure's points times its R^T
    vox = voxel_index(G, n, length, mode)[batch.entry_point]  # (E,) voxel of each entry, -1 outside the grid
    N3 = n ** 3
    size = batch.n_structures * n_channels * N3
    flat = (batch.point_structure[batch.entry_point] * n_channels + batch.entry_channel) * N3 + vox
    flat = torch.where(vox >= 0, flat, torch.full_like(flat, size))  # outside the grid: one spare slot
    out = torch.zeros(size + 1, dtype=batch.entry_value.dtype, device=G.device)
    out.index_add_(0, flat, batch.entry_value)
    return out[:size].view(batch.n_structures, n_channels, n, n, n)
