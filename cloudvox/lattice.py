"""A crystal's lattice: its cell, its reciprocal and the one enumeration of reciprocal points.

Conventions (pymatgen ``core/lattice.py``'s): a lattice is a (3, 3) float64 matrix whose **rows** are the cell
vectors a, b, c in Angstrom; Cartesian coordinates are ``frac @ matrix``; the reciprocal vectors b_k are the rows
of ``reciprocal`` (1/Angstrom, a_i . b_k = 2 pi delta_ik, no 2 pi dropped), and a reciprocal lattice vector is
``G = m @ reciprocal`` for integer Miller indices m.

The reciprocal points of a crystal are enumerated once, here (:func:`half_ball`, :meth:`Lattice.half_ball`);
the compiled kernel (``cloudvox/csrc``) follows the same floating-point operations and is tested equal. The
descriptor, the feature file's writer and its reader all take their points from it.
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import kernel

MIN_VOLUME = 1e-3  # Angstrom^3: smaller |det(matrix)| is a singular cell
_BOX_TOL = 1e-5  # in units of m: covers float32 rounding of G at the grid edge


def lattice_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """(3, 3) lattice (rows a, b, c in Angstrom) from cell lengths (Angstrom) and angles (degrees).

    AFLOW's convention: a along x, b in the xy plane, c completing a right-handed cell. Entries are
    rounded to 14 decimals exactly as AFLOW-derived tools (and the original VoxelNet) do, so that
    reciprocal vectors agree bit for bit with theirs.
    """
    al, be, ga = (x / 180 * np.pi for x in (alpha, beta, gamma))
    ca, cb, cg, sg = np.cos(al), np.cos(be), np.cos(ga), np.sin(ga)
    radicand = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    if not radicand > 0 or not sg != 0:
        raise ValueError(f"cell angles ({alpha}, {beta}, {gamma}) degrees do not form a cell")
    vol = a * b * c * np.sqrt(radicand)
    columns = np.array([[a, b * cg, c * cb],
                        [0.0, b * sg, c * (ca - cb * cg) / sg],
                        [0.0, 0.0, vol / (a * b * sg)]])
    return np.round(columns, 14).T.copy()


def reciprocal_lattice(lattice: np.ndarray) -> np.ndarray:
    """(..., 3, 3) reciprocal vectors as rows, 1/Angstrom, from (..., 3, 3) cell vectors as rows, Angstrom.

    ``lattice @ recip.T == 2 pi I``. Computed as the original ``B = 2 pi inv(A).T`` with A = lattice.T.
    """
    A = np.swapaxes(lattice, -1, -2)
    B = 2 * np.pi * np.swapaxes(np.linalg.inv(A), -1, -2)  # columns b_k
    return np.swapaxes(B, -1, -2)


def reciprocal_box(lattice: np.ndarray, radius: float) -> np.ndarray:
    """(..., 3) int extents e: every G = m @ recip with |G| <= radius (1/Angstrom) has |m_k| <= e_k
    (bound radius ||a_k||_2 / (2 pi)). lattice: (..., 3, 3) rows in Angstrom."""
    return np.floor(radius * np.sqrt(sqnorm(np.asarray(lattice))) / (2 * np.pi) + _BOX_TOL).astype(np.int64)


def half_ball(lattice: Union["Lattice", np.ndarray], radius: float) -> np.ndarray:
    """(P, 3) int32 Miller indices m of the reciprocal vectors ``G = m @ recip`` with |G| <= radius
    (1/Angstrom; 1e-12 relative slack), one of each Friedel pair (m, -m) and m = 0: the m lexicographically
    <= 0, in lexicographic order (m0, then m1, then m2 ascending).

    A function of the lattice (a :class:`Lattice` or its (3, 3) matrix, rows in Angstrom) and the radius only:
    the feature file stores values in this order and its reader regenerates the indices. Enumerated row by row:
    for each (m0, m1) the m2 with |u + m2 b2| <= radius form an interval (a quadratic in m2); candidates one wider on each side are then
    tested exactly, so only about P points are ever formed.
    """
    return _half_ball(*as_lattice(lattice).ball_params(radius))


def half_balls(lattices: Sequence["Lattice"], radius: float, cube: Optional[float] = None
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The half balls of many lattices (:meth:`Lattice.half_ball`), concatenated: m (P, 3) int32, the points
    per lattice (S,) int64 and the reciprocals (S, 3, 3) (1/Angstrom, each equal to its lattice's
    :attr:`Lattice.reciprocal`: numpy inverts a stack matrix by matrix), in one compiled call.

    cube: if given (1/Angstrom), only points whose every Cartesian component |G_k| is at most about ``cube``
    (a prefilter with 1e-6 relative slack, for a cartesian voxel grid's cube: the caller applies its exact test
    to G = m @ reciprocal)."""
    if not len(lattices):
        return np.zeros((0, 3), dtype=np.int32), np.zeros(0, dtype=np.int64), np.zeros((0, 3, 3))
    matrices = np.stack([lat.matrix for lat in lattices])
    recips = np.ascontiguousarray(reciprocal_lattice(matrices))
    extents = reciprocal_box(matrices, radius)
    r2 = radius * radius * (1 + 1e-12)
    bound = -1.0 if cube is None else float(cube) * (1 + 1e-6)
    native = kernel.native()
    if native is not None:
        import torch
        m, counts = native.half_balls(torch.from_numpy(recips), torch.from_numpy(extents), r2, bound)
        return m.numpy(), counts.numpy(), recips
    ms = [_half_ball(r, tuple(int(x) for x in e), r2) for r, e in zip(recips, extents)]
    if cube is not None:
        ms = [m[(np.abs(m @ r) <= bound).all(1)] for m, r in zip(ms, recips)]
    return np.concatenate(ms), np.array([len(m) for m in ms], dtype=np.int64), recips


def _half_ball(recip: np.ndarray, extents: Tuple[int, int, int], r2: float) -> np.ndarray:
    """:func:`half_ball` from :meth:`Lattice.ball_params`."""
    e0, e1, e2 = extents
    native = kernel.native()
    if native is not None:  # the same operations, compiled
        import torch
        return native.half_ball(torch.from_numpy(recip.copy()), e0, e1, e2, r2).numpy()  # (recip: read-only)
    m0 = np.repeat(np.arange(-e0, 1, dtype=np.int32), 2 * e1 + 1)
    m1 = np.tile(np.arange(-e1, e1 + 1, dtype=np.int32), e0 + 1)
    rows = (m0 < 0) | (m1 <= 0)  # the half: m0 < 0, or m0 = 0 and m1 <= 0
    m0, m1 = m0[rows], m1[rows]
    u = np.outer(m0, recip[0]) + np.outer(m1, recip[1])  # (rows, 3)
    b = recip[2]
    bb = float(b[0] * b[0] + b[1] * b[1] + b[2] * b[2])  # elementwise, in this order: the kernel rounds alike
    ub = u[:, 0] * b[0] + u[:, 1] * b[1] + u[:, 2] * b[2]
    uu = sqnorm(u)
    disc = ub * ub - bb * (uu - r2)
    root = np.sqrt(np.maximum(disc, 0.0))
    lo = np.maximum(np.floor((-ub - root) / bb) - 1, -e2).astype(np.int64)
    hi = np.minimum(np.ceil((-ub + root) / bb) + 1, e2).astype(np.int64)
    hi[disc < 0] = lo[disc < 0] - 1
    if len(hi) and m0[-1] == 0 and m1[-1] == 0:
        hi[-1] = min(hi[-1], 0)  # the row through 0 stops at m = 0
    n = np.maximum(hi - lo + 1, 0)
    row = np.repeat(np.arange(len(n)), n)
    m2 = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n - lo, n)).astype(np.int32)
    # |u + m2 b|^2 <= r2: the exact test (expanded: no (P, 3) products)
    keep = uu[row] + m2 * (2 * ub[row] + m2 * bb) <= r2
    out = np.empty((int(keep.sum()), 3), dtype=np.int32)
    out[:, 0], out[:, 1], out[:, 2] = m0[row[keep]], m1[row[keep]], m2[keep]
    return out


def sqnorm(v: np.ndarray) -> np.ndarray:
    """(...,) squared norms of (..., 3) vectors (faster than a reduction over the length-3 axis)."""
    return v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2]


def _readonly(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)
    return x


class Lattice:
    """A periodic cell, immutable: the (3, 3) matrix (rows a, b, c in Angstrom), its reciprocal and its
    reciprocal points.

    Args:
        matrix: (3, 3) rows a, b, c in Angstrom, finite, |det| >= :data:`MIN_VOLUME` Angstrom^3.
    Raises:
        ValueError: naming the problem.
    """

    __slots__ = ("_matrix", "_reciprocal", "_inverse")

    def __init__(self, matrix):
        m = np.array(matrix, dtype=np.float64)  # own copy
        if m.shape != (3, 3):
            raise ValueError(f"a lattice is (3, 3), got shape {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError("lattice has non-finite entries (NaN or inf)")
        vol = abs(det3(m))
        if not vol >= MIN_VOLUME:
            raise ValueError(f"singular or degenerate lattice: volume {vol:.3g} A^3 < {MIN_VOLUME} A^3")
        self._set(_readonly(m))

    def _set(self, matrix: np.ndarray) -> None:
        self._matrix, self._reciprocal, self._inverse = matrix, None, None

    @classmethod
    def checked(cls, matrix: np.ndarray) -> "Lattice":
        """From a (3, 3) read-only float64 matrix its caller has validated (a :class:`Structure`): no copy."""
        out = cls.__new__(cls)
        out._set(matrix)
        return out

    @classmethod
    def from_parameters(cls, a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> "Lattice":
        """From cell lengths (Angstrom) and angles (degrees), AFLOW's orientation
        (:func:`lattice_from_parameters`)."""
        return cls(lattice_from_parameters(a, b, c, alpha, beta, gamma))

    # the cell -------------------------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) read-only rows a, b, c in Angstrom."""
        return self._matrix

    @property
    def volume(self) -> float:
        """|det(matrix)| in Angstrom^3."""
        return abs(det3(self._matrix))

    @property
    def abc(self) -> Tuple[float, float, float]:
        """Cell lengths |a|, |b|, |c| in Angstrom."""
        a, b, c = np.linalg.norm(self._matrix, axis=1)
        return float(a), float(b), float(c)

    @property
    def angles(self) -> Tuple[float, float, float]:
        """Cell angles alpha (b, c), beta (a, c), gamma (a, b) in degrees."""
        a, b, c = self._matrix / np.linalg.norm(self._matrix, axis=1, keepdims=True)
        cos = np.clip([b @ c, a @ c, a @ b], -1.0, 1.0)
        al, be, ga = np.degrees(np.arccos(cos))
        return float(al), float(be), float(ga)

    @property
    def inverse(self) -> np.ndarray:
        """(3, 3) read-only inverse of the matrix (1/Angstrom): ``frac = cart @ inverse``."""
        if self._inverse is None:
            self._inverse = _readonly(np.linalg.inv(self._matrix))
        return self._inverse

    # the reciprocal -------------------------------------------------------------------------------------
    @property
    def reciprocal(self) -> np.ndarray:
        """(3, 3) read-only reciprocal vectors b_k as rows, 1/Angstrom (:func:`reciprocal_lattice`)."""
        if self._reciprocal is None:
            self._reciprocal = _readonly(np.ascontiguousarray(reciprocal_lattice(self._matrix)))
        return self._reciprocal

    def box(self, radius: float) -> np.ndarray:
        """(3,) int64 extents e: every G with |G| <= radius (1/Angstrom) has |m_k| <= e_k
        (:func:`reciprocal_box`)."""
        return reciprocal_box(self._matrix, radius)

    def ball_params(self, radius: float) -> Tuple[np.ndarray, Tuple[int, int, int], float]:
        """What the enumeration of the ball |G| <= radius (1/Angstrom) needs, as the compiled kernel takes it:
        the reciprocal (3, 3), the extents (three ints) and the squared radius with its 1e-12 relative slack."""
        e0, e1, e2 = (int(e) for e in self.box(radius))
        return self.reciprocal, (e0, e1, e2), radius * radius * (1 + 1e-12)

    def half_ball(self, radius: float) -> np.ndarray:
        """(P, 3) int32 Miller indices of the half ball |G| <= radius (1/Angstrom), :func:`half_ball`'s order."""
        return _half_ball(*self.ball_params(radius))

    def reciprocal_points(self, radius: float) -> Tuple[np.ndarray, np.ndarray]:
        """The half ball's Miller indices m (P, 3) int32 and its vectors G = m @ reciprocal (P, 3) float64,
        1/Angstrom."""
        m = self.half_ball(radius)
        return m, m @ self.reciprocal

    # a value --------------------------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        return self._matrix if dtype is None else self._matrix.astype(dtype)

    def __eq__(self, other) -> bool:
        return isinstance(other, Lattice) and np.array_equal(self._matrix, other._matrix)

    def __hash__(self) -> int:
        return hash(self._matrix.tobytes())

    def __repr__(self) -> str:
        a, b, c = self.abc
        al, be, ga = self.angles
        return f"Lattice(abc=({a:.4g}, {b:.4g}, {c:.4g}) A, angles=({al:.4g}, {be:.4g}, {ga:.4g}) deg)"


def as_lattice(lattice: Union["Lattice", np.ndarray]) -> "Lattice":
    """A :class:`Lattice` from a Lattice or a (3, 3) matrix (rows, Angstrom)."""
    return lattice if isinstance(lattice, Lattice) else Lattice(lattice)


def det3(m: np.ndarray) -> float:
    """Determinant of a 3x3 matrix (a triple product: cheaper than LAPACK for one small matrix)."""
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
