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
    """Reciprocal sets of S structures, concatenated point by point.

    G: (P, 3) reciprocal vectors, 1/Angstrom, each structure's points contiguous, in structure order;
    values: (P, K) each point's values in its structure's K channel slots (0 past a structure's own
    channels); slot_channel: (S, K) int64 the channel (index into the model's channel list) of each slot of
    each structure, -1 for none; point_structure: (P,) int64 structure of each point; point_counts: (S,)
    points of each structure (host integers); half: the sets are halves (one of each Friedel pair,
    :func:`cloudvox.descriptors.half_ball`): every point G != 0 is also binned at -G (|h(-G)| = |h(G)|),
    which halves what the loader collates and sends to the device.
    """
    G: torch.Tensor
    values: torch.Tensor
    slot_channel: torch.Tensor
    point_structure: torch.Tensor
    point_counts: Tuple[int, ...]
    half: bool = False

    @property
    def n_structures(self) -> int:
        return len(self.point_counts)

    def pin_memory(self) -> "ReciprocalBatch":
        """The tensors in page-locked host memory (the DataLoader's pin_memory thread calls this): the copies
        to a GPU then run asynchronously."""
        return ReciprocalBatch(self.G.pin_memory(), self.values.pin_memory(), self.slot_channel.pin_memory(),
                               self.point_structure.pin_memory(), self.point_counts, self.half)

    def to(self, device=None, dtype=None) -> "ReciprocalBatch":
        f = dict(device=device, non_blocking=True)
        return ReciprocalBatch(self.G.to(dtype=dtype, **f), self.values.to(dtype=dtype, **f),
                               self.slot_channel.to(**f), self.point_structure.to(**f), self.point_counts, self.half)


def collate_reciprocal(sets: Sequence[ReciprocalSet], dtype=torch.float32) -> ReciprocalBatch:
    """Concatenate reciprocal sets (channel indices kept as the sets give them) into one batch; half sets
    (``ReciprocalSet.half``, all or none) stay halves. The host work is two concatenations and one padded copy
    per set: the index arithmetic of the binning happens on the device."""
    halves = {bool(s.half) for s in sets}
    if len(halves) > 1:
        raise ValueError("a batch mixes half and full reciprocal sets")
    counts = np.array([len(s.G) for s in sets], dtype=np.int64)
    K = max([len(s.channels) for s in sets] + [1])
    G = np.concatenate([s.G for s in sets]) if len(sets) else np.empty((0, 3))
    values = np.zeros((int(counts.sum()), K), dtype=np.float32 if dtype == torch.float32 else np.float64)
    slot_channel = np.full((len(sets), K), -1, dtype=np.int64)
    start = 0
    for b, s in enumerate(sets):
        c, p = s.amp.shape
        values[start:start + p, :c] = s.amp.T
        slot_channel[b, :c] = s.channels
        start += p
    return ReciprocalBatch(torch.from_numpy(G).to(dtype), torch.from_numpy(values).to(dtype),
                           torch.from_numpy(slot_channel), torch.from_numpy(np.repeat(np.arange(len(sets)), counts)),
                           tuple(int(x) for x in counts), bool(halves.pop()) if halves else False)


def bin_reciprocal(batch: ReciprocalBatch, n_channels: int, n: int, length: float, mode: str = "cartesian",
                   rotations: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Voxels (S, n_channels, N, N, N) of a batch of reciprocal sets, each rotated by its own matrix.

    Args:
        batch: the concatenated reciprocal sets (on the target device); G is stored in float32 or float64,
            and binned in float64 so that vectors on voxel edges fall as in the numpy descriptor. Half sets
            are binned at G and, for G != 0, at -G.
        n_channels: C, the channel list's length. n: N. length: L in Angstrom. mode: cartesian|spherical.
        rotations: optional (S, 3, 3) orthogonal matrices R; point G of structure s is binned at R_s G,
            which is the descriptor of structure s rotated by R_s.
    Returns:
        (S, C, N, N, N) tensor of batch.values' dtype, on its device.
    """
    G = batch.G.double()  # voxel edges decided in float64, as the numpy descriptor (ties are common)
    ps = batch.point_structure
    if rotations is not None:  # each point times its structure's R^T, for the whole batch at once
        G = torch.einsum("pij,pj->pi", rotations.to(dtype=G.dtype, device=G.device)[ps], G)
    N3 = n ** 3
    size = batch.n_structures * n_channels * N3
    channel = batch.slot_channel[ps]  # (P, K)
    base = (ps[:, None] * n_channels + channel) * N3  # (P, K) first flat index of each slot's grid
    spare = torch.full_like(base, size)  # outside the grid, or no channel: one spare slot

    def flat(vox, keep):  # (P,) voxels, (P,) points to bin -> (P, K) flat indices
        return torch.where((channel >= 0) & (keep & (vox >= 0))[:, None], base + vox[:, None], spare)
    every = torch.ones_like(ps, dtype=torch.bool)
    index, values = flat(voxel_index(G, n, length, mode), every).reshape(-1), batch.values.reshape(-1)
    if batch.half:  # the other member of each Friedel pair: -G (G = 0, m = 0, is its own)
        mirrored = flat(voxel_index(-G, n, length, mode), (batch.G != 0).any(1)).reshape(-1)
        index, values = torch.cat([index, mirrored]), torch.cat([values, values])
    out = torch.zeros(size + 1, dtype=batch.values.dtype, device=G.device)
    out.index_add_(0, index, values)
    return out[:size].view(batch.n_structures, n_channels, n, n, n)
