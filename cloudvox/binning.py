"""Binning of reciprocal sets into voxels with torch, for a whole batch at once, on any device.

The training loader stores each structure's unbinned reciprocal set (G vectors and |h| per present
channel, :meth:`cloudvox.descriptors.ReciprocalVoxelizer.reciprocal`) and bins it on the fly under random
rotations on the training device (:func:`random_rotations`: the augmentation). The voxel index is
:func:`cloudvox.descriptors.voxel_index`, the same function the numpy descriptor uses.
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
    :func:`cloudvox.lattice.half_ball`): every point G != 0 is also binned at -G (|h(-G)| = |h(G)|),
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
    return pack_reciprocal([s.G for s in sets], [s.amp for s in sets], [s.channels for s in sets],
                           bool(halves.pop()) if halves else False, dtype)


def padded_rows(rows: Sequence[np.ndarray], width: Optional[int] = None, fill: int = -1) -> np.ndarray:
    """(S, width) int64: row s holds ``rows[s]`` (1-D integer arrays) followed by ``fill``; width defaults to the
    longest row. One vectorised assignment (a batch's channel ids and slots are built per step)."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((len(rows), width), fill, dtype=np.int64)
    if len(rows):
        out[np.arange(width) < lengths[:, None]] = np.concatenate(rows)
    return out


def pack_reciprocal(G: Sequence[np.ndarray], amp: Sequence[np.ndarray], slots: Optional[Sequence[np.ndarray]],
                    half: bool, dtype=torch.float32) -> ReciprocalBatch:
    """The batch of S structures' reciprocal arrays (what :func:`collate_reciprocal` does with the sets'
    fields, for a loader that keeps the arrays): G[s] (P_s, 3) 1/Angstrom, amp[s] (C_s, P_s) values (best in
    column-major order: each point's C_s values are then contiguous), slots[s] (C_s,) the channel of each (None:
    each structure's own channels 0 .. C_s - 1, the compact slots of element channels).
    When every structure has the batch's K channels (the usual case within one chemistry) the values are one
    concatenation; otherwise each set is copied into its rows of a zero-padded (P, K) matrix."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    counts = np.fromiter((len(g) for g in G), np.int64, len(G))
    c = np.fromiter((len(a) for a in amp), np.int64, len(amp))
    K = max(int(c.max(initial=0)), 1)
    if len(G) and (c == K).all():
        values = np.concatenate([a.T for a in amp]).astype(np_dtype, copy=False)
    else:
        values = np.zeros((int(counts.sum()), K), dtype=np_dtype)
        for start, a in zip(np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist(), amp):
            values[start:start + a.shape[1], :len(a)] = a.T
    Gs = np.concatenate(G) if len(G) else np.empty((0, 3))
    if slots is None:
        slot_channel = np.where(np.arange(K) < c[:, None], np.arange(K), -1).astype(np.int64)
    else:
        slot_channel = padded_rows(slots, K)
    return ReciprocalBatch(torch.from_numpy(Gs).to(dtype), torch.from_numpy(values), torch.from_numpy(slot_channel),
                           torch.from_numpy(np.repeat(np.arange(len(G)), counts)), tuple(counts.tolist()), half)


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


def random_rotations(count: int, generator: torch.Generator, reflections: bool = True) -> torch.Tensor:
    """(count, 3, 3) float64 Haar-random rotations, each a reflection with probability 1/2 if asked."""
    A = torch.randn(count, 3, 3, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar measure
    det = torch.det(Q)
    Q[:, :, 0] *= det.sign().unsqueeze(-1)  # now a proper rotation
    if reflections:
        flip = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
        Q = Q * flip.to(Q.dtype).view(-1, 1, 1)
    return Q
