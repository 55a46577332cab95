"""Neighbour lists within a cutoff, for molecules and periodic crystals, vectorised (no per-atom loops).

An edge (i, j, shift) means atom j seen from atom i at ``x_j + shift - x_i`` with ``shift = n @ lattice``
for an integer image n; every image within the cutoff is listed, so small cells get several images of the
same neighbour (and of the atom itself, n != 0).
"""
from typing import Optional, Tuple

import numpy as np


def neighbor_list(cart: np.ndarray, cutoff: float, lattice: Optional[np.ndarray] = None
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges within ``cutoff`` (Angstrom).

    Args:
        cart: (n, 3) Cartesian positions, Angstrom. lattice: (3, 3) rows a, b, c in Angstrom, or None.
    Returns:
        src (E,) int64 centre atoms i, dst (E,) int64 neighbours j, shift (E, 3) float64 Cartesian image
        offsets (zeros for molecules); edges sorted by (src, dst).
    """
    if lattice is None:
        d = cart[None, :, :] - cart[:, None, :]  # (n, n, 3): x_j - x_i
        r2 = np.einsum("ijx,ijx->ij", d, d)
        mask = r2 < cutoff * cutoff
        np.fill_diagonal(mask, False)
        src, dst = np.nonzero(mask)
        return src.astype(np.int64), dst.astype(np.int64), np.zeros((len(src), 3))
    inv = np.linalg.inv(lattice)
    frac = cart @ inv
    wrapped = frac - np.floor(frac)  # atoms moved into the cell: image offsets account for the move
    base = (frac - wrapped) @ lattice  # (n, 3) what each atom was shifted by
    x = wrapped @ lattice
    # images n with a chance: |n_k| <= cutoff |b_k| / (2 pi) + 1 (wrapped differences are within one cell)
    ext = np.ceil(cutoff * np.linalg.norm(inv, axis=0)).astype(int) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), -1).reshape(-1, 3)
    shifts = grid @ lattice  # (k, 3)
    d = x[None, :, None, :] + shifts[None, None, :, :] - x[:, None, None, :]  # (n, n, k, 3)
    r2 = np.einsum("ijkx,ijkx->ijk", d, d)
    mask = (r2 < cutoff * cutoff) & (r2 > 1e-12)  # not an atom with itself at n = 0
    src, dst, img = np.nonzero(mask)
    # shifts in terms of the original (unwrapped) positions: x_j + s - x_i = (cart_j - base_j) + shift - (cart_i - base_i)
    shift = shifts[img] - base[dst] + base[src]
    return src.astype(np.int64), dst.astype(np.int64), shift


def edge_vectors(cart: np.ndarray, src: np.ndarray, dst: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(E, 3) vectors x_j + shift - x_i."""
    return cart[dst] + shift - cart[src]
