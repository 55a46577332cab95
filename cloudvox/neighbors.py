"""Neighbour lists within a cutoff, for molecules and periodic crystals, delegated to vesin (a kept C++
library with cell lists: time and memory linear in the atoms, however skewed or small the cell).

An edge (i, j, shift) means atom j seen from atom i at ``x_j + shift - x_i`` with ``shift = n @ lattice``
for an integer image n; every image within the cutoff is listed, so small cells get several images of the
same neighbour (and of the atom itself, n != 0). Atoms need not lie inside the cell.
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
        offsets (zeros for molecules); edges sorted by (src, dst), then by image.
    """
    from vesin import NeighborList
    cart = np.ascontiguousarray(cart, dtype=np.float64)
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    if lattice is None:
        src, dst = nl.compute(cart, np.zeros((3, 3)), False, "ij")
        shifts = np.zeros((len(src), 3), dtype=np.int64)
    else:
        src, dst, shifts = nl.compute(cart, np.ascontiguousarray(lattice, dtype=np.float64), True, "ijS")
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], dst, src))
    src, dst, shifts = src[order].astype(np.int64), dst[order].astype(np.int64), shifts[order]
    shift = np.zeros((len(src), 3)) if lattice is None else shifts.astype(np.float64) @ np.asarray(lattice, np.float64)
    return src, dst, shift


def edge_vectors(cart: np.ndarray, src: np.ndarray, dst: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(E, 3) vectors x_j + shift - x_i."""
    return cart[dst] + shift - cart[src]
