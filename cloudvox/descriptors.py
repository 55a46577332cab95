"""Reciprocal-space voxel descriptors of Gaussian-smeared atomic densities.

Definitions (the original VoxelNet's, written out). A structure is the density
``s(x) = sum_j w_j sum_n N(x; mu_j + A n, sigma^2 I)`` (positions mu_j in Angstrom, cell A, sigma in Angstrom).
Its Fourier coefficients at the reciprocal lattice vectors ``G = m @ recip`` (m integer, ``recip`` rows
b_k with a_i . b_k = 2 pi delta_ik, in 1/Angstrom) are analytic::

    h_c(G) = 1 / |det A| * exp(-sigma^2 |G|^2 / 2) * sum_j W[c, j] exp(-i G . mu_j)

for each channel c (one per element: W one-hot; one total channel: W = 1). With ``cross=True`` each channel c
also gets a cross-spectrum channel ``"<c>*total"``::

    x_c(G) = Re(h_c(G) conj(h(G))) / h(0)        (h: the total density, W = 1; h(0) = natoms / |det A|)

the part of h_c in phase with the whole structure, = sum over elements b of the pair cross-spectra
Re(h_c h_b*) / h(0). The modulus |h_e| of an element with one atom per cell is exp(-sigma^2 |G|^2 / 2) / V
wherever that atom sits; x_e keeps where it sits relative to the other atoms (its sign pattern over G is the
Fourier transform of element e's partial pair distribution), is translation invariant, real, even in G
(Friedel pairs share it), in the units of h and bounded by |h_c|.

The reciprocal points of a crystal are enumerated once, by its lattice (:meth:`cloudvox.lattice.Lattice.half_ball`;
the C++ kernel follows the same operations, tested equal): the G with |G| <= sqrt(3) pi N / L, one of each
Friedel pair. The feature file
stores values at them, the training loader bins them under rotations, and :meth:`ReciprocalVoxelizer.compact`
bins them into voxels (for an unrotated cartesian grid only those inside its cube).

Binning (voxel width ``w = 2 pi / L`` in 1/Angstrom, grid half-width ``h = pi N / L``):

* cartesian: voxel ``(ix, iy, iz) = floor((G + h) / w)`` per axis, the grid covers ``[-h, h)^3``; each voxel
  holds the sum of |h_c(G)| over the G inside it (G = 0 included). Axis order (x, y, z).
* spherical: ``(floor(|G| / (sqrt(3) pi / L)), floor(theta / (pi / N)), floor((phi + pi) / (2 pi / N)))``
  with theta from +z and phi = atan2(y, x); theta = pi falls in the last bin and phi = pi wraps to bin 0.
  Bin edges are offset by 1e-4 of a bin so that G lying exactly on an edge (common by symmetry) bins the
  same way in float32 and float64 (to the upper bin).

Exactness: G is computed in float64; like the original code, G is rounded to float32 before binning, and
|h| is rounded to float32 and accumulated in float64, so voxels equal the original's.

Molecules (no lattice) have a continuous transform; it is sampled at the voxel centres (cartesian or
spherical), without the 1/|det A| factor. |h| is translation invariant and rotates with the structure.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import kernel
from .elements import property_weights
from .errors import ConfigError
from .lattice import half_balls, reciprocal_box, reciprocal_lattice, sqnorm
from .structure import Structure, StructureError

MODES = ("cartesian", "spherical")
CHANNELS = ("element", "total", "properties")
CROSS_SUFFIX = "*total"  # name of the cross-spectrum channel of channel c: c + CROSS_SUFFIX
DEFAULT_PROPERTIES = ("one", "Z", "row", "group", "X", "radius", "ionization", "affinity")
_TIE = 1e-4  # spherical bins: edge offset, in bins, that makes exact ties robust to float32 rounding
_CHUNK_COMPLEX = 1 << 19  # complex128 entries per vectorised chunk (64 MB)


def with_cross(names: Sequence[str]) -> Tuple[str, ...]:
    """A channel list followed by the cross-spectrum channels of its members: [c..., c*total...]."""
    return tuple(names) + tuple(n + CROSS_SUFFIX for n in names)


MAX_BOX_BYTES = 1 << 30  # per structure: a larger reciprocal box is refused before it is allocated


def without_cross(names: Sequence[str]) -> Tuple[str, ...]:
    """The base channels of a channel list (cross-spectrum channels dropped)."""
    return tuple(n for n in names if not n.endswith(CROSS_SUFFIX))


# --------------------------------------------------------------------------------------------------------
# array functions
# --------------------------------------------------------------------------------------------------------
def _xp(x):
    """The array namespace of x: numpy, or torch for a torch tensor (imported lazily)."""
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    return np


def voxel_index(G, n: int, length: float, mode: str = "cartesian"):
    """Flat voxel index of reciprocal vectors, for numpy arrays or torch tensors alike.

    Args:
        G: (..., 3) reciprocal vectors in 1/Angstrom.
        n: voxels per axis N; length: L in Angstrom; mode: "cartesian" or "spherical".
    Returns:
        (...,) int64 index ``(i0 * N + i1) * N + i2`` into the (N, N, N) grid, or -1 outside the grid.
    """
    xp = _xp(G)
    w = 2 * np.pi / length
    if mode == "cartesian":
        i = xp.floor((G + w * n / 2) / w)  # the original's rounding order
        i0, i1, i2 = i[..., 0], i[..., 1], i[..., 2]  # (reductions over a length-3 axis are slow)
        ok = abs(i - (n - 1) / 2) <= (n - 1) / 2  # 0 <= i_k < n, exactly (i integral), on the contiguous array
        inside = ok[..., 0] & ok[..., 1] & ok[..., 2]
        flat = (i0 * n + i1) * n + i2
    elif mode == "spherical":
        x, y, z = G[..., 0] + 0.0, G[..., 1] + 0.0, G[..., 2]  # -0.0 + 0.0 = +0.0: phi on the z axis
        r = xp.sqrt(x * x + y * y + z * z)                      # independent of how G's zeros were signed
        safe = xp.where(r > 0, r, xp.ones_like(r))
        cos_t = xp.clip(z / safe, -1.0, 1.0)
        theta = xp.where(r > 0, xp.arccos(cos_t), xp.zeros_like(r))
        phi = xp.arctan2(y, x)
        # Symmetric crystals put many G exactly on angular bin edges (phi = 45 deg, theta = 90 deg, ...):
        # edges are offset by TIE bin widths so that such ties go to the upper bin in float32 and float64.
        ir = xp.floor(r / (np.sqrt(3) * np.pi / length) + _TIE)
        it = xp.clip(xp.floor(theta / (np.pi / n) + _TIE), 0, n - 1)
        ip = xp.floor((phi + np.pi) / (2 * np.pi / n) + _TIE) % n
        inside = ir < n
        flat = (ir * n + it) * n + ip
    else:
        raise ValueError(f"unknown descriptor mode {mode!r}; expected one of {MODES}")
    flat = xp.where(inside, flat, -xp.ones_like(flat))
    return flat.long() if xp is not np else flat.astype(np.int64)


def spherical_voxel_centres(n: int, length: float) -> np.ndarray:
    """(N, N, N, 3) Cartesian reciprocal vectors (1/Angstrom) at the centres of the spherical voxels."""
    r = (np.arange(n) + 0.5) * np.sqrt(3) * np.pi / length
    t = (np.arange(n) + 0.5) * np.pi / n
    p = (np.arange(n) + 0.5) * 2 * np.pi / n - np.pi
    r, t, p = np.meshgrid(r, t, p, indexing="ij")
    return np.stack([r * np.sin(t) * np.cos(p), r * np.sin(t) * np.sin(p), r * np.cos(t)], -1)


def structure_factors(coords: np.ndarray, weights: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Factorised structure factors on a product grid, batched over S structures of equal shape.

    ``F[s, c, a, b, d] = sum_j W[s, c, j] exp(-i (q[s, j, 0] v0[s, a] + q[s, j, 1] v1[s, b] + q[s, j, 2] v2[s, d]))``

    Args:
        coords: (S, J, 3) per-axis coordinates q (fractional coordinates times 2 pi, or Cartesian Angstrom).
        weights: (S, C, J) channel weights of each atom.
        axes: three (S, n_k) per-axis grid values v_k (integers m_k, or wave numbers in 1/Angstrom).
    Returns:
        (S, C, n0, n1, n2) complex128.
    """
    S, J, _ = coords.shape
    p0, p1, p2 = (np.exp(-1j * coords[:, :, k, None] * axes[k][:, None, :]) for k in range(3))  # (S, J, n_k)
    n0, n1, n2 = p0.shape[2], p1.shape[2], p2.shape[2]
    outer = (p0[:, :, :, None] * p1[:, :, None, :]).reshape(S, J, n0 * n1)  # (S, J, n0 n1)
    weighted = weights[:, :, :, None] * p2[:, None, :, :]  # (S, C, J, n2)
    F = np.matmul(np.swapaxes(outer, 1, 2)[:, None], weighted)  # (S, C, n0 n1, n2)
    return F.reshape(S, weights.shape[1], n0, n1, n2)


def structure_factors_at(m: np.ndarray, frac: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(C, P) complex128 ``F[c, p] = sum_j W[c, j] exp(-2 pi i m_p . f_j)`` of one crystal.

    m: (P, 3) int Miller indices; frac: (J, 3) fractional coordinates; W: (C, J) channel weights. The
    compiled kernel (``cloudvox._structure_factors``, built by setup.py) when present, else numpy in chunks
    (several times slower).
    """
    m = np.ascontiguousarray(m, dtype=np.int32)
    frac = np.array(frac, dtype=np.float64, order="C")  # own, writable copies (torch.from_numpy)
    W = np.array(W, dtype=np.float64, order="C")
    native = kernel.native()
    if native is not None:
        import torch
        return native.at(torch.from_numpy(m), torch.from_numpy(frac), torch.from_numpy(W)).numpy()
    out = np.empty((W.shape[0], len(m)), dtype=np.complex128)
    step = max(1, _CHUNK_COMPLEX // max(len(frac), 1))
    for a in range(0, len(m), step):
        phase = np.exp(-2j * np.pi * (frac @ m[a:a + step].T.astype(np.float64)))  # (J, p)
        out[:, a:a + step] = W @ phase
    return out


def structure_factors_many(m: np.ndarray, sizes: np.ndarray, fracs: Sequence[np.ndarray], Ws: Sequence[np.ndarray],
                           rows: int, total_last: bool = False) -> np.ndarray:
    """(rows, P) complex128 structure factors of S crystals at once (:func:`structure_factors_at` of each).

    m: (P, 3) int Miller indices, ``sizes[s]`` of them for crystal s in turn; fracs: S (J_s, 3) fractional
    coordinates; Ws: S (C_s, J_s) channel weights. Crystal s's channel c goes to row c of its points' columns,
    except, with ``total_last``, its last channel (the total density), which goes to the last row; rows it does
    not have are 0. One compiled call when the kernel is built."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out_rows = np.concatenate([np.r_[0:len(W) - 1, rows - 1] if total_last else np.arange(len(W)) for W in Ws])
    native = kernel.native()
    if native is not None:
        import torch
        args = (np.array(m, dtype=np.int32, order="C"), sizes.copy(),
                np.concatenate([np.asarray(f, dtype=np.float64) for f in fracs]),
                np.array([len(f) for f in fracs], dtype=np.int64),
                np.concatenate([np.asarray(W, dtype=np.float64).ravel() for W in Ws]),
                np.array([len(W) for W in Ws], dtype=np.int64), out_rows.astype(np.int64))
        return native.at_batch(*(torch.from_numpy(a) for a in args), int(rows)).numpy()
    F = np.zeros((rows, len(m)), dtype=np.complex128)
    a, r = 0, 0
    for k, f, W in zip(sizes, fracs, Ws):
        F[out_rows[r:r + len(W)], a:a + k] = structure_factors_at(m[a:a + k], f, W)
        a, r = a + k, r + len(W)
    return F


# --------------------------------------------------------------------------------------------------------
# the voxelizer
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseVoxels:
    """The occupied voxels of one structure, shared by its channels (compact storage and transfer).

    index: (K,) int32 ascending flat voxel indices ``(i0 * N + i1) * N + i2``; values: (c, K) float32 voxel
    values of the structure's own channels; channels: (c,) int64 indices of those channels in the
    voxelizer's channel list.
    """
    index: np.ndarray
    values: np.ndarray
    channels: np.ndarray

    def dense(self, n_channels: int, n: int) -> np.ndarray:
        """(n_channels, N, N, N) float32 grid, zeros in absent channels and voxels."""
        out = np.zeros((n_channels, n ** 3), dtype=np.float32)
        out[self.channels[:, None], self.index[None, :]] = self.values
        return out.reshape(n_channels, n, n, n)


@dataclass(frozen=True)
class ReciprocalSet:
    """The unbinned descriptor of one structure.

    G: (P, 3) float64 reciprocal vectors in 1/Angstrom (all |G| <= sqrt(3) pi N / L, so that any rotation of
    the grid's cube is covered); amp: (C, P) |h_c(G)| (Angstrom^-3 for crystals); channels: (C,) int64
    indices of the channels into the voxelizer's channel list; m: (P, 3) int Miller indices with
    G = m @ recip (crystals; None for molecules). A ``half`` set holds one of each Friedel pair (G, -G)
    (|h(-G)| = |h(G)|) and G = 0: :meth:`full` restores the other half.
    """
    G: np.ndarray
    amp: np.ndarray
    channels: np.ndarray
    m: Optional[np.ndarray] = None
    half: bool = False

    def full(self) -> "ReciprocalSet":
        """The set with both members of every Friedel pair."""
        if not self.half:
            return self
        nz = np.any(self.m != 0, axis=1) if self.m is not None else np.any(self.G != 0, axis=1)
        return ReciprocalSet(np.concatenate([self.G, -self.G[nz]]), np.concatenate([self.amp, self.amp[:, nz]], 1),
                             self.channels, None if self.m is None else np.concatenate([self.m, -self.m[nz]]), False)


class ReciprocalVoxelizer:
    """Voxel descriptor of structures: |h_c(G)| binned on an (N, N, N) grid per channel.

    Args:
        sigma: Gaussian width in Angstrom (> 0).
        length: L in Angstrom (> 0); reciprocal voxel width 2 pi / L.
        n: voxels per axis N (>= 2).
        mode: "cartesian" or "spherical".
        species: element symbols, one channel each, in this order; None: the sorted elements of the
            structures at hand (of each structure for a single call, of the batch for :meth:`batch`).
        channels: "element" (one channel per species: the original descriptor), "total" (one channel, all
            atoms), or "properties" (one channel per element property k, the density weighted by w_k(Z):
            |sum_j w_k(Z_j) exp(-i G . mu_j)|, which keeps where atoms of different elements sit relative to
            each other, with a fixed channel count; w = Z is the X-ray structure factor).
        properties: the property names for "properties" (see :func:`cloudvox.elements.property_weights`).
        cross: add one cross-spectrum channel ``c + "*total"`` per channel (module docstring), which sees
            where each element sits relative to the rest of the structure; channels are then ordered
            [c_1 .. c_C, c_1*total .. c_C*total].
    """

    def __init__(self, sigma: float = 0.1, length: float = 12.8, n: int = 32, mode: str = "cartesian",
                 species: Optional[Sequence[str]] = None, channels: str = "element",
                 properties: Sequence[str] = DEFAULT_PROPERTIES, cross: bool = False):
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma must be > 0 Angstrom, got {sigma}")
        if not (np.isfinite(length) and length > 0):
            raise ConfigError(f"length must be > 0 Angstrom, got {length}")
        if int(n) != n or n < 2:
            raise ConfigError(f"n must be an integer >= 2, got {n}")
        if mode not in MODES:
            raise ConfigError(f"unknown descriptor mode {mode!r}; expected one of {MODES}")
        if channels not in CHANNELS:
            raise ConfigError(f"unknown channels {channels!r}; expected one of {CHANNELS}")
        self.sigma, self.length, self.n, self.mode, self.channels = float(sigma), float(length), int(n), mode, channels
        self.species = None if species is None else tuple(species)
        if self.species is not None and len(set(self.species)) != len(self.species):
            raise ConfigError(f"species list has duplicates: {self.species}")
        self.properties = tuple(properties)
        self.cross = bool(cross)
        self._property_weights = property_weights(self.properties) if channels == "properties" else None

    def __repr__(self) -> str:
        return (f"ReciprocalVoxelizer(sigma={self.sigma}, length={self.length}, n={self.n}, mode={self.mode!r}, "
                f"species={self.species}, channels={self.channels!r}, properties={self.properties}, cross={self.cross})")

    @property
    def params(self) -> Dict[str, object]:
        """Descriptor parameters (sigma and length in Angstrom), for files and checkpoints."""
        return dict(sigma=self.sigma, length=self.length, n=self.n, mode=self.mode,
                    species=list(self.species or ()), channels=self.channels,
                    properties=list(self.properties) if self.channels == "properties" else [], cross=self.cross)

    @property
    def half_width(self) -> float:
        """h = pi N / L in 1/Angstrom: the cartesian grid covers [-h, h)^3."""
        return np.pi * self.n / self.length

    def channel_names(self, structures: Sequence[Structure] = ()) -> Tuple[str, ...]:
        """The channel list: species (given, or the sorted elements of ``structures``), "total" or properties,
        followed by their cross-spectrum channels with ``cross``."""
        if self.channels == "total":
            base: Tuple[str, ...] = ("total",)
        elif self.channels == "properties":
            base = self.properties
        elif self.species is not None:
            base = self.species
        else:
            base = tuple(sorted({e for s in structures for e in s.elements}))
        return with_cross(base) if self.cross else base

    def _weights(self, s: Structure, names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(c, n) channel weights of the channels present in s, and the indices into names of its channels:
        (c,), or (2 c,) with ``cross`` (the moduli, then the cross-spectra)."""
        if self.channels == "total":
            W, present = np.ones((1, len(s))), ["total"]
        elif self.channels == "properties":
            W, present = self._property_weights[:, s.numbers], list(self.properties)
        else:
            present = s.elements
            missing = [e for e in present if e not in names]
            if missing:
                raise StructureError(f"structure {s.id}: element(s) {missing} not in the species list {list(names)}")
            symbols = np.array(s.symbols)
            W = (symbols[None, :] == np.array(present)[:, None]).astype(np.float64)
        wanted = with_cross(present) if self.cross else present
        return W, np.array([names.index(e) for e in wanted], dtype=np.int64)

    # --- core: compact (present channels only) -----------------------------------------------------------
    def compact(self, structures: Sequence[Structure], rotations: Optional[np.ndarray] = None,
                names: Optional[Sequence[str]] = None) -> List[SparseVoxels]:
        """Sparse voxels of each structure's own channels (no grids of absent elements, no empty voxels).

        Args:
            structures: S structures.
            rotations: optional (3, 3) or (S, 3, 3) orthogonal matrices R applied to G before binning,
                which gives the descriptor of the structure rotated by R.
            names: channel list (default :meth:`channel_names` of the structures).
        Returns:
            one :class:`SparseVoxels` per structure, channel indices into ``names``.
        """
        names = tuple(names) if names is not None else self.channel_names(structures)
        R = _rotations(rotations, len(structures))
        out: List = [None] * len(structures)
        # crystals: the points of the one enumeration (Lattice.half_ball), binned as the feature file's reader
        # bins them, many crystals per pass; an unrotated cartesian grid bins only the cube [-h, h)^3, not the
        # ball's caps
        cube = R is None and self.mode == "cartesian"
        for chunk in _crystal_chunks(structures, self.ball_radius):
            pts = self._crystal_points([structures[i] for i in chunk], names, within_cube=cube)
            distinct = self.mode == "cartesian" and \
                _coarser_than_voxels(np.stack([structures[i].lattice for i in chunk]), self.length)
            binned = _bin_points(pts.G, pts.amp.astype(np.float32), pts.sizes, pts.mirror, self.n, self.length,
                                 self.mode, None if R is None else R[chunk], distinct)
            for k, (i, (index, values)) in enumerate(zip(chunk, binned)):
                out[i] = SparseVoxels(index, values[pts.rows[k]], pts.channels[k])
        molecules = [i for i, s in enumerate(structures) if not s.is_periodic]
        weights = {i: self._weights(structures[i], names) for i in molecules}
        mols = [structures[i] for i in molecules]
        for key, members in _groups(mols, self._group_key).items():
            for chunk in _chunks(members, key):
                sparse = self._bin_molecules([mols[k] for k in chunk], [weights[molecules[k]][0] for k in chunk],
                                             None if R is None else R[[molecules[k] for k in chunk]])
                for (index, values), k in zip(sparse, chunk):
                    out[molecules[k]] = SparseVoxels(index, values, weights[molecules[k]][1])
        return out

    def batch(self, structures: Sequence[Structure], rotations: Optional[np.ndarray] = None) -> np.ndarray:
        """(S, C, N, N, N) float32 dense descriptors, C = len(self.channel_names(structures))."""
        names = self.channel_names(structures)
        out = np.zeros((len(structures), len(names)) + (self.n,) * 3, dtype=np.float32)
        flat = out.reshape(len(structures), len(names), -1)
        for k, sv in enumerate(self.compact(structures, rotations, names)):
            flat[k, sv.channels[:, None], sv.index[None, :]] = sv.values
        return out

    def __call__(self, structure: Structure, rotation: Optional[np.ndarray] = None) -> np.ndarray:
        """(C, N, N, N) float32 descriptor of one structure; rotation: optional (3, 3) orthogonal R."""
        return self.batch([structure], None if rotation is None else np.asarray(rotation)[None])[0]

    def reciprocal(self, structure: Structure, names: Optional[Sequence[str]] = None, dtype=np.float32,
                   half: bool = False) -> ReciprocalSet:
        """The unbinned descriptor: G within |G| <= sqrt(3) pi N / L and |h_c(G)| of the present channels.

        Binning ``R G`` with :func:`voxel_index` (or :func:`cloudvox.binning.bin_reciprocal` on a device)
        reproduces ``self(structure, R)`` for crystals. For a molecule the set is the transform sampled at
        the voxel centres, exact without rotation and a nearest-voxel resampling with one.
        dtype: of ``amp`` (float32 for storage, float64 for exact checks); half: one of each Friedel pair.
        """
        names = tuple(names) if names is not None else self.channel_names([structure])
        return self.reciprocal_batch([structure], names, dtype, half)[0]

    def reciprocal_batch(self, structures: Sequence[Structure], names: Optional[Sequence[str]] = None,
                         dtype=np.float32, half: bool = False) -> List[ReciprocalSet]:
        """:meth:`reciprocal` of many structures. Crystals: the points of the lattice's half ball (one of each
        Friedel pair), structure factors by the compiled kernel (:func:`structure_factors_at`), mirrored
        for ``half=False``; molecules: vectorised over molecules of one shape."""
        names = tuple(names) if names is not None else self.channel_names(structures)
        out: List = [None] * len(structures)
        molecules = [i for i, s in enumerate(structures) if not s.is_periodic]
        for i, s in enumerate(structures):
            if s.is_periodic:
                rs = self._crystal_set(s, names, dtype)
                out[i] = rs if half else rs.full()
        weights = {i: self._weights(structures[i], names) for i in molecules}
        mols = [structures[i] for i in molecules]
        for key, members in _groups(mols, self._group_key).items():
            for chunk in _chunks(members, key):
                G, amp = self._molecule_amplitudes([mols[k] for k in chunk], [weights[molecules[k]][0] for k in chunk], None)
                amp = amp.astype(dtype)
                for k, c in enumerate(chunk):
                    out[molecules[c]] = ReciprocalSet(G=G[k], amp=amp[k], channels=weights[molecules[c]][1])
        return out

    def _crystal_set(self, s: Structure, names: Sequence[str], dtype) -> ReciprocalSet:
        """A crystal's half set: the points of :meth:`cloudvox.lattice.Lattice.half_ball` and its channel values
        there, ``dtype``."""
        pts = self._crystal_points([s], names)
        return ReciprocalSet(G=pts.G, amp=pts.amp[pts.rows[0]].astype(dtype, copy=False), channels=pts.channels[0],
                             m=pts.m, half=True)

    def _crystal_points(self, group: Sequence[Structure], names: Sequence[str],
                        within_cube: bool = False) -> "_CrystalPoints":
        """The half sets of crystals, concatenated (with ``within_cube`` only about the points in the cartesian
        grid's cube [-h, h]^3, for binning into it): the enumeration and the structure factors in one compiled
        call each, then the envelope and the channel values of all points at once, with the same floating-point
        operations as one crystal alone."""
        ws = [self._weights(s, names) for s in group]
        channels = [ch for _, ch in ws]
        Ws = [np.concatenate([W, np.ones((1, W.shape[1]))]) if self.cross else W for W, _ in ws]
        # within_cube: the enumeration leaves out the ball's caps, keeping a slightly larger cube; the binning
        # drops what lies outside the grid exactly
        m, sizes, recips = half_balls([s.cell for s in group], self.ball_radius,
                                      self.half_width if within_cube else None)
        G = np.empty((len(m), 3))
        md = m.astype(np.float64)  # m @ r casts m alike: the same G as the reader's
        for a, k, r in zip(np.cumsum(sizes) - sizes, sizes, recips):
            np.matmul(md[a:a + k], r, out=G[a:a + k])
        c_base = max(len(W) for W in Ws) - (1 if self.cross else 0)  # channel rows, then the total with cross
        c_out = c_base + (1 if self.cross else 0)
        F = structure_factors_many(m, sizes, [s.frac_coords for s in group], Ws, c_out, total_last=self.cross)
        sid = np.repeat(np.arange(len(group)), sizes)
        env = np.exp(-self.sigma ** 2 / 2 * sqnorm(G))
        amp = self._channel_values(F, env, np.array([len(s) for s in group], dtype=np.float64)[sid])
        amp *= env / np.array([s.volume for s in group])[sid]
        if self.cross:  # a crystal's c moduli, then its c cross-spectra (the last row, the total, is not stored)
            picks = {c: np.concatenate([np.arange(c - 1), np.arange(c_base, c_base + c - 1)])
                     for c in {len(W) for W in Ws}}
            rows = [picks[len(W)] for W in Ws]
        else:
            rows = [slice(0, len(W)) for W in Ws]
        return _CrystalPoints(m, G, amp, sizes, _nonzero(m), rows, channels)

    def stored_values(self, s: Structure, names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, float]:
        """What the feature file stores of a crystal: its channels (c,) int64 (indices into ``names``; 2 c with
        ``cross``), its half set's channel values relative to their largest modulus, (c, P) float16 in
        :meth:`cloudvox.lattice.Lattice.half_ball`'s order, and that largest modulus (the scale, 1/Angstrom^3; 0
        for an empty set).

        The compiled kernel does it in one pass (enumeration, structure factors, envelope, float16 rounding);
        without it, :meth:`reciprocal` in numpy, then the division and ``astype(float16)``."""
        return self.stored_values_many([s], names)[0]

    def stored_values_many(self, crystals: Sequence[Structure], names: Sequence[str]
                           ) -> List[Tuple[np.ndarray, np.ndarray, float]]:
        """:meth:`stored_values` of each of S crystals, in one compiled call (a feature-file block's)."""
        native = kernel.native()
        if native is None:
            out = []
            for s in crystals:
                rs = self._crystal_set(s, names, np.float64)
                top = float(np.abs(rs.amp).max()) if rs.amp.size else 0.0
                out.append((rs.channels, (rs.amp / (top or 1.0)).astype(np.float16), top))
            return out
        if not crystals:
            return []
        import torch
        ws = [self._weights(s, names) for s in crystals]
        matrices = np.stack([s.lattice for s in crystals])
        recips = np.ascontiguousarray(reciprocal_lattice(matrices))  # each its Lattice.reciprocal (half_balls)
        extents = reciprocal_box(matrices, self.ball_radius)
        _, _, r2 = crystals[0].cell.ball_params(self.ball_radius)
        frac = np.concatenate([s.frac_coords for s in crystals]).astype(np.float64)
        weights = np.concatenate([np.asarray(W, dtype=np.float64).ravel() for W, _ in ws])
        t = torch.from_numpy
        values, points, tops = native.stored_values_many(
            t(recips), t(extents), r2, t(frac), t(np.array([len(s) for s in crystals], dtype=np.int64)), t(weights),
            t(np.array([len(W) for W, _ in ws], dtype=np.int64)), self.sigma,
            t(np.array([s.volume for s in crystals], dtype=np.float64)), self.cross)
        values, points, tops = values.numpy(), points.numpy(), tops.numpy()
        out, a = [], 0
        for (W, channels), p, top in zip(ws, points, tops):
            rows = (2 if self.cross else 1) * len(W)
            out.append((channels, values[a:a + rows * p].reshape(rows, p), float(top)))
            a += rows * p
        return out

    @property
    def ball_radius(self) -> float:
        """sqrt(3) pi N / L in 1/Angstrom: the ball of the stored reciprocal sets, which holds every rotation
        of the cartesian grid's cube [-h, h)^3."""
        return float(np.sqrt(3) * self.half_width)

    # --- internals -------------------------------------------------------------------------------------
    def _group_key(self, s: Structure) -> Tuple:
        """Molecules with equal keys (atoms, channels) are evaluated as one vectorised batch."""
        return (len(s), self._channel_count(s))

    def check_cost(self, s: Structure) -> None:
        """Refuse (StructureError) a structure whose descriptor would need more than MAX_BOX_BYTES, before
        anything is allocated (a 3000 Angstrom cell would need terabytes).

        A crystal's reciprocal set (stored, or binned into voxels) holds P ~ (4/3 pi r^3) V / (2 pi)^3 / 2
        points (r the ball radius, V the cell volume), enumerated over (e0 + 1)(2 e1 + 1) rows of the box of
        integer m around the ball (:meth:`cloudvox.lattice.Lattice.half_ball`)."""
        if not s.is_periodic:
            return
        c = self._channel_count(s)
        e = s.cell.box(self.ball_radius).astype(np.float64)
        ball = 4 / 3 * np.pi * self.ball_radius ** 3 * s.volume / (2 * np.pi) ** 3 / 2
        points = ball + 2 * (e[0] + 1) * (2 * e[1] + 1)
        need = points * (40 + 40 * c)  # m, G, |G|^2 and the complex / float64 values per channel
        if need > MAX_BOX_BYTES:
            raise StructureError(f"structure {s.id}: its reciprocal box ({points:.3g} points for a cell of "
                                 f"{s.volume:.4g} A^3 at N={self.n}, L={self.length} A) needs {need / 2 ** 30:.3g} GiB, "
                                 f"over the limit of {MAX_BOX_BYTES / 2 ** 30:g} GiB (cloudvox.descriptors.MAX_BOX_BYTES)")

    def _channel_count(self, s: Structure) -> int:
        """Channels the descriptor computes for s (its own elements, or the fixed channels; cross doubles)."""
        return {"element": len(s.elements), "total": 1}.get(self.channels, len(self.properties)) * (2 if self.cross else 1)

    def _molecule_amplitudes(self, group: Sequence[Structure], W: Sequence[np.ndarray], R: Optional[np.ndarray]
                             ) -> Tuple[np.ndarray, np.ndarray]:
        """G (S, P, 3) float64 in 1/Angstrom and |h| (S, C, P) float64 of molecules with one key, at the voxel
        centres (P = N^3): the rotation R is applied to the atoms (the sampling points stay at the centres) and G
        is returned unrotated."""
        W = np.stack(W)  # (S, C, J)
        S = len(group)
        if self.cross:  # one more row: the total density, for the cross-spectra
            W = np.concatenate([W, np.ones((S, 1, W.shape[2]))], axis=1)
        cart = np.stack([s.cart_coords for s in group])  # (S, J, 3)
        if R is not None:
            cart = np.matmul(cart, np.swapaxes(R, -1, -2))
        if self.mode == "cartesian":
            w = 2 * np.pi / self.length
            k = (np.arange(self.n) + 0.5) * w - self.half_width  # voxel centres, 1/Angstrom
            F = structure_factors(cart, W, [np.broadcast_to(k, (S, self.n))] * 3)
            G = np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(1, -1, 3)
        else:
            G = spherical_voxel_centres(self.n, self.length).reshape(1, -1, 3)
            F = np.matmul(W.astype(np.complex128), np.exp(-1j * np.matmul(cart, G[0].T)))  # (S, C, P)
        G = np.broadcast_to(G, (S,) + G.shape[1:])
        env = np.exp(-self.sigma ** 2 / 2 * sqnorm(G))
        amp = self._channel_values(F.reshape(S, W.shape[1], -1), env, W[:, -1].sum(-1)[:, None]) * env[:, None, :]
        return G, amp

    def _channel_values(self, F: np.ndarray, env: np.ndarray, natoms) -> np.ndarray:
        """(..., C or 2 C, P) channel values before the common factor env / |det A|, from structure factors
        F (..., C', P) (C' = C + 1 with ``cross``: the last row is the total), the Gaussian envelope env
        (..., P) and the atom counts ``natoms`` (broadcast against env): |F_c|, then with ``cross``
        env Re(F_c conj(F)) / natoms."""
        if not self.cross:
            return np.abs(F)
        Fc, Ft = F[..., :-1, :], F[..., -1:, :]
        x = (Fc.real * Ft.real + Fc.imag * Ft.imag) * (env / natoms)[..., None, :]
        return np.concatenate([np.abs(Fc), x], axis=-2)

    def _bin_molecules(self, group: Sequence[Structure], W: Sequence[np.ndarray],
                       R: Optional[np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per molecule of a group with one key: its voxels (K,) int32 and their values (C, K) float32 (one
        sample per voxel centre: nothing to sum)."""
        G, amp = self._molecule_amplitudes(group, W, R)
        idx = voxel_index(G, self.n, self.length, self.mode)  # (S, P)
        return sparse_bin(idx, amp.astype(np.float32), self.n ** 3, True)


@dataclass
class _CrystalPoints:
    """Crystals' half sets, concatenated: m (P, 3) int32, G (P, 3) float64 in 1/Angstrom and amp (C, P)
    float64 channel values (1/Angstrom^3; rows of a crystal not its own are zero), points per crystal
    ``sizes`` (S,), ``mirror`` (P,) the points whose -G the full set also holds (G != 0), and per crystal its
    rows of amp (an index array or a slice) and its channel indices."""
    m: np.ndarray
    G: np.ndarray
    amp: np.ndarray
    sizes: np.ndarray
    mirror: np.ndarray
    rows: List
    channels: List[np.ndarray]


def bin_sets(sets: Sequence[ReciprocalSet], n: int, length: float, mode: str = "cartesian",
             rotation: Optional[np.ndarray] = None, distinct: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Voxels of crystals' reciprocal sets, as the descriptor bins them (G rounded to float32, then rotated by
    ``rotation`` if given: the descriptor of the structure rotated by R; values float32, sums in float64): per
    set, occupied voxels (K,) int32 ascending and values (C, K) float32.

    rotation: (3, 3) for every set or (S, 3, 3) one per set; distinct: no two points of a set share a voxel
    (nothing to sum). All sets are binned in one pass (:func:`_bin_points`)."""
    if not sets:
        return []
    sizes = np.array([len(rs.G) for rs in sets])
    if len(sets) == 1:  # the reader's case: no copies
        G, amp = sets[0].G, np.asarray(sets[0].amp, dtype=np.float32)
    else:
        G = np.concatenate([rs.G for rs in sets])
        amp = np.zeros((max(len(rs.amp) for rs in sets), len(G)), dtype=np.float32)
        for rs, a in zip(sets, np.cumsum(sizes) - sizes):
            amp[:len(rs.amp), a:a + len(rs.G)] = rs.amp
    mirror = np.concatenate([_nonzero(rs.m if rs.m is not None else rs.G) & rs.half for rs in sets])
    binned = _bin_points(G, amp, sizes, mirror, n, length, mode, rotation, distinct)
    return [(index, values[:len(rs.amp)]) for rs, (index, values) in zip(sets, binned)]


def _bin_points(G: np.ndarray, amp: np.ndarray, sizes: np.ndarray, mirror: np.ndarray, n: int, length: float,
                mode: str, rotation: Optional[np.ndarray], distinct: bool) -> List[Tuple[np.ndarray, np.ndarray]]:
    """:func:`bin_sets` of concatenated sets: G (P, 3) float64, amp (C, P) float32, points per set ``sizes``,
    ``mirror`` (P,) the points also binned at -G. Each set's mirror points come after its own, as
    :meth:`ReciprocalSet.full` orders them, so every sum adds the same float32 values in the same order; the
    rotation is applied before mirroring (R(-G) = -(R G) exactly in floating point)."""
    S = len(sizes)
    starts = np.cumsum(sizes) - sizes
    G = G.astype(np.float32).astype(np.float64)  # the original bins float32 G
    if rotation is not None:
        R = np.asarray(rotation, dtype=np.float64)
        if R.ndim == 2:
            G = G @ R.T
        else:
            G = np.concatenate([G[a:a + k] @ R[i].T for i, (a, k) in enumerate(zip(starts, sizes))]) if S else G
    native = kernel.native() if mode == "cartesian" else None
    if native is not None:  # the same operations and summation order, compiled
        import torch
        w = 2 * np.pi / length
        index, sums, bounds = native.bin_cartesian(
            torch.from_numpy(np.ascontiguousarray(G)), torch.from_numpy(np.ascontiguousarray(amp, dtype=np.float32)),
            torch.from_numpy(np.asarray(sizes, dtype=np.int64).copy()),
            torch.from_numpy(np.ascontiguousarray(mirror, dtype=bool)), n, w * n / 2, w, distinct)
        index, sums, bounds = index.numpy(), sums.numpy(), bounds.numpy()
        return [(index[a:b], sums[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    size = n ** 3
    back = np.flatnonzero(mirror)
    idx = voxel_index(np.concatenate([G, -G[back]]), n, length, mode)
    src = np.concatenate([np.arange(len(G)), back])  # the point (column of amp) behind each binned point
    keep = idx >= 0
    src = src[keep]
    key = np.repeat(np.arange(S) * size, sizes)[src] + idx[keep]  # global voxel of each kept point
    if distinct:
        order = np.argsort(key, kind="stable")
        occupied, sums = key[order], np.take(amp, src[order], axis=1)
    else:
        occupied, slot = np.unique(key, return_inverse=True)
        K, C = len(occupied), len(amp)
        sums = np.bincount((slot[None, :] + (np.arange(C) * K)[:, None]).ravel(), weights=amp[:, src].ravel(),
                           minlength=C * K).astype(np.float32).reshape(C, K)
    bounds = np.searchsorted(occupied, np.arange(S + 1) * size)
    local = (occupied % size).astype(np.int32)
    return [(local[a:b], sums[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _nonzero(v: np.ndarray) -> np.ndarray:
    """(P,) whether each (P, 3) vector is not 0 (its -v is another point of a full set)."""
    return (v[:, 0] != 0) | (v[:, 1] != 0) | (v[:, 2] != 0)


def _coarser_than_voxels(lattice: np.ndarray, length: float) -> bool:
    """Whether no two reciprocal vectors of any of these (S, 3, 3) lattices can share a cartesian voxel.

    The shortest non-zero G = m @ recip is at least 2 pi / sigma_max(lattice); two G closer than a voxel
    diagonal sqrt(3) 2 pi / L could share a voxel.
    """
    sigma_max = np.linalg.norm(lattice, ord=2, axis=(1, 2)).max()
    return 2 * np.pi / sigma_max > 1.01 * np.sqrt(3) * 2 * np.pi / length


def sparse_bin(idx: np.ndarray, values: np.ndarray, size: int,
               distinct: bool = False) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Sum values into their bins, keeping only occupied bins, for S structures at once.

    Args:
        idx: (S, P) int bin of each point in [0, size), or -1 (dropped).
        values: (S, C, P) float32 values per channel.
        size: number of bins per structure (N^3).
        distinct: the caller knows no two kept points of a structure share a bin (nothing to sum).
    Returns:
        per structure: (occupied bins (K,) int32, unique, sums (C, K) float32, accumulated in float64).
    """
    S, C, P = values.shape
    keep = idx >= 0
    counts = keep.sum(1)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    picked = values.transpose(1, 0, 2)[:, keep]  # (C, kept)
    if distinct:
        index = idx[keep].astype(np.int32)
        return [(index[a:b], picked[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    key = (idx + (np.arange(S) * size)[:, None])[keep]  # global bin of each kept point
    occupied, slot = np.unique(key, return_inverse=True)
    K = len(occupied)
    sums = np.bincount((slot[None, :] + (np.arange(C) * K)[:, None]).ravel(),
                       weights=picked.ravel(), minlength=C * K).astype(np.float32).reshape(C, K)
    bounds = np.searchsorted(occupied, np.arange(S + 1) * size)
    return [((occupied[a:b] - s * size).astype(np.int32), sums[:, a:b])
            for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _crystal_chunks(structures: Sequence[Structure], radius: float, points: int = 1 << 18):
    """The indices of the crystals among ``structures``, in chunks of about ``points`` reciprocal points (a
    ball of ``radius`` 1/Angstrom each), so that a pass over a chunk holds a bounded amount of memory."""
    chunk, total = [], 0.0
    per_volume = 4 / 3 * np.pi * radius ** 3 / (2 * np.pi) ** 3 / 2  # half-ball points per A^3 of cell
    for i, s in enumerate(structures):
        if s.is_periodic:
            chunk.append(i)
            total += per_volume * s.volume
            if total >= points:
                yield chunk
                chunk, total = [], 0.0
    if chunk:
        yield chunk


def _rotations(rotations, count: int) -> Optional[np.ndarray]:
    if rotations is None:
        return None
    R = np.asarray(rotations, dtype=np.float64)
    if R.shape == (3, 3):
        R = np.broadcast_to(R, (count, 3, 3))
    if R.shape != (count, 3, 3):
        raise ValueError(f"rotations must be (3, 3) or ({count}, 3, 3), got {R.shape}")
    if not np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-8):
        raise ValueError("rotations must be orthogonal matrices")
    return R


def _groups(items, key) -> Dict[Tuple, List[int]]:
    groups: Dict[Tuple, List[int]] = {}
    for i, s in enumerate(items):
        groups.setdefault(key(s), []).append(i)
    return groups


def _chunks(members: List[int], key: Tuple):
    """Split a group of molecules (key: atoms, channels) so that one vectorised step holds about
    _CHUNK_COMPLEX complex numbers (32^3 sampling points per molecule assumed)."""
    step = max(1, _CHUNK_COMPLEX // max(32 ** 3 * (key[0] + key[1]), 1))
    for i in range(0, len(members), step):
        yield members[i:i + step]
