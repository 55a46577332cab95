"""Atomic structures: periodic crystals and molecules.

Conventions (as in pymatgen ``core/lattice.py``):

* ``lattice`` is a (3, 3) float64 array whose **rows** are the cell vectors a, b, c in Angstrom, or ``None``
  for a molecule (no periodicity); ``cell`` is the same as a :class:`cloudvox.lattice.Lattice`, which owns the
  reciprocal lattice and the enumeration of reciprocal points.
* ``frac_coords`` (n, 3) are fractional coordinates (crystals only); ``cart_coords`` (n, 3) are Cartesian
  coordinates in Angstrom, ``cart_coords = frac_coords @ lattice``.
* ``numbers`` (n,) int64 atomic numbers Z.

A :class:`Structure` is immutable: its arrays are read-only and it is validated on construction, so any
Structure that exists is physically sensible (finite coordinates, a non-degenerate cell, known elements,
no two atoms closer than :data:`MIN_DISTANCE` after periodic images).
"""
import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import kernel
from .elements import SYMBOLS, UnknownElementError, atomic_numbers, MAX_Z
from .errors import UserError
from .lattice import MIN_VOLUME, Lattice, det3

MIN_DISTANCE = 0.1  # Angstrom: closer atoms are rejected as overlapping
MAX_ATOMS = 2000  # atoms per structure: larger ones are refused before any pairwise work (AFLOW cells: <= ~400)
MAX_CELLS = 100  # a crystal's atoms lie within this many cells of the origin (|fractional coordinate| <= 100)


class StructureError(UserError, ValueError):
    """A structure that is not physically valid; the message names the structure and the problem."""


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x)  # own copy
    x.setflags(write=False)
    return x


def find_overlap(cart: np.ndarray, lattice: Optional[np.ndarray] = None, cutoff: float = MIN_DISTANCE,
                 frac: Optional[np.ndarray] = None) -> Optional[Tuple[int, int, float]]:
    """The first pair of atoms closer than ``cutoff`` (Angstrom) over periodic images, or None.

    cart: (n, 3) Cartesian coordinates in Angstrom; lattice: (3, 3) rows in Angstrom or None (molecule);
    frac: (n, 3) fractional coordinates if already known. Returns (i, j, distance) with i <= j
    (i == j: an atom and its own periodic image).

    With fractional differences wrapped into [-1/2, 1/2], an image n can only come closer than the cutoff
    if |n_k| <= 1/2 + cutoff |b_k| / (2 pi) on every axis, which is n = 0 for any cell whose planes are
    more than 2 cutoff apart: the check is one vectorised pass over pairs, with images only when needed.
    """
    if lattice is None:
        i, j = _pairs(len(cart), False)
        d, shifts = cart[j] - cart[i], None
    else:
        native = kernel.native()
        if native is not None and frac is not None:  # the same search, compiled (one Python call a crystal)
            import torch
            i, j, d = native.first_overlap(torch.from_numpy(np.array(frac, dtype=np.float64)),
                                           torch.from_numpy(np.array(lattice, dtype=np.float64)), cutoff)
            return None if i < 0 else (int(i), int(j), float(d))
        inv = np.linalg.inv(lattice)
        ext = np.floor(0.5 + cutoff * np.sqrt((inv * inv).sum(0))).astype(int)
        frac = cart @ inv if frac is None else frac
        i, j = _pairs(len(cart), bool(ext.any()))
        f = frac[j] - frac[i]
        f -= np.round(f)
        d = f @ lattice
        shifts = None
        if ext.any():  # planes closer than 2 cutoff: look at the images too
            grid = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), -1).reshape(-1, 3)
            shifts = grid @ lattice  # (k, 3), includes n = 0
    if shifts is None:
        r2 = np.einsum("px,px->p", d, d)
        hit = np.flatnonzero(r2 < cutoff * cutoff)
        return (int(i[hit[0]]), int(j[hit[0]]), float(np.sqrt(r2[hit[0]]))) if len(hit) else None
    for lo in range(0, len(i), 8192):  # bounded memory for large cells
        dd = d[lo:lo + 8192, None, :] + shifts[None]  # (p, k, 3)
        r2 = np.einsum("pkx,pkx->pk", dd, dd)
        r2[(i[lo:lo + 8192] == j[lo:lo + 8192])[:, None] & (r2 == 0)] = np.inf  # an atom is not its own neighbour
        hit = np.flatnonzero((r2 < cutoff * cutoff).any(1))
        if len(hit):
            p = lo + int(hit[0])
            return int(i[p]), int(j[p]), float(np.sqrt(r2[hit[0]].min()))
    return None


def _pairs(n: int, with_self: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j (i <= j with_self); cached for small n only (memory flat over a stream of large
    cells: the pairs of every n up to 400 atoms would hold ~300 MB)."""
    return _small_pairs(n, with_self) if n <= 64 else np.triu_indices(n, k=0 if with_self else 1)


@functools.lru_cache(maxsize=130)
def _small_pairs(n: int, with_self: bool) -> Tuple[np.ndarray, np.ndarray]:
    ij = np.triu_indices(n, k=0 if with_self else 1)
    for a in ij:
        a.setflags(write=False)
    return ij


class Structure:
    """An immutable, validated set of atoms, periodic (crystal) or not (molecule).

    Args:
        numbers: (n,) atomic numbers Z, or element symbols.
        coords: (n, 3) coordinates: fractional if ``lattice`` is given and ``cartesian`` is False,
            else Cartesian in Angstrom.
        lattice: (3, 3) rows = cell vectors a, b, c in Angstrom; None for a molecule.
        cartesian: whether ``coords`` are Cartesian (Angstrom) for a crystal.
        id: identifier used in every error message and in output files (e.g. an AFLOW auid).
        props: numeric properties, e.g. ``{"enthalpy_atom": -8.04}`` (eV/atom).
        meta: string metadata, e.g. ``{"compound": "O3Sr1Ti1"}``.

    Raises:
        StructureError: naming ``id`` and the problem.
    """

    __slots__ = ("_numbers", "_frac", "_cart", "_lattice", "_cell", "id", "_props", "_meta", "_symbols", "_elements")

    def __init__(self, numbers, coords, lattice=None, *, cartesian: bool = False, id: str = "",
                 props: Optional[Mapping[str, float]] = None, meta: Optional[Mapping[str, str]] = None):
        self.id = str(id)
        try:
            nums = np.asarray(numbers)
            if nums.dtype.kind in "US":
                nums = atomic_numbers(nums.tolist())
            nums = nums.astype(np.int64).reshape(-1)
        except UnknownElementError as e:
            raise self._error(str(e)) from None
        except (TypeError, ValueError) as e:
            raise self._error(f"bad atomic numbers: {e}") from None
        if len(nums) == 0:
            raise self._error("empty structure (no atoms)")
        if len(nums) > MAX_ATOMS:
            raise self._error(f"{len(nums)} atoms exceed the limit of {MAX_ATOMS} (cloudvox.structure.MAX_ATOMS)")
        bad = (nums < 1) | (nums > MAX_Z)
        if bad.any():
            raise self._error(f"unknown element Z={int(nums[bad][0])} at atom {int(np.argmax(bad))}")
        try:
            xyz = np.asarray(coords, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise self._error(f"coordinates are not numeric: {e}") from None
        if xyz.shape != (len(nums), 3):
            raise self._error(f"coordinates have shape {xyz.shape}, expected ({len(nums)}, 3)")
        if not np.isfinite(xyz).all():
            raise self._error(f"non-finite coordinate (NaN or inf) at atom {int(np.argmax(~np.isfinite(xyz).all(1)))}")
        if lattice is not None:
            try:
                lat = np.asarray(lattice, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise self._error(f"lattice is not numeric: {e}") from None
            if lat.shape != (3, 3):
                raise self._error(f"lattice has shape {lat.shape}, expected (3, 3)")
            if not np.isfinite(lat).all():
                raise self._error("lattice has non-finite entries (NaN or inf)")
            vol = abs(det3(lat))
            if not vol >= MIN_VOLUME:
                raise self._error(f"singular or degenerate lattice: volume {vol:.3g} A^3 < {MIN_VOLUME} A^3")
            if cartesian:
                cart, frac = xyz, xyz @ np.linalg.inv(lat)
            else:
                frac, cart = xyz, xyz @ lat
            far = np.abs(frac) > MAX_CELLS
            if far.any():
                k = int(np.argmax(far.any(1)))
                raise self._error(f"atom {k} lies far outside the cell (fractional coordinates {frac[k].tolist()}; "
                                  f"the limit is {MAX_CELLS} cells, cloudvox.structure.MAX_CELLS)")
            self._lattice, self._frac = _readonly(lat), _readonly(frac)
            self._cell = Lattice.checked(self._lattice)
        else:
            cart = xyz
            self._lattice, self._frac, self._cell = None, None, None
        self._numbers, self._cart = _readonly(nums), _readonly(cart)
        overlap = find_overlap(cart, self._lattice, frac=self._frac)
        if overlap is not None:
            i, j, dmin = overlap
            what = f"atoms {i} and {j}" if i != j else f"atom {i} and its own periodic image"
            raise self._error(f"{what} are {dmin:.4g} A apart (< {MIN_DISTANCE} A)")
        self._props = dict(props or {})
        self._meta = dict(meta or {})
        self._symbols = tuple(SYMBOLS[z] for z in nums.tolist())
        self._elements = tuple(sorted(set(self._symbols)))

    def _error(self, problem: str) -> StructureError:
        return StructureError(f"structure {self.id or '<no id>'}: {problem}")

    # named constructors -------------------------------------------------------------------------------
    @classmethod
    def from_frac(cls, lattice, frac_coords, species, **kw) -> "Structure":
        """Crystal from a (3, 3) lattice (rows, Angstrom), (n, 3) fractional coordinates, species (symbols or Z)."""
        return cls(species, frac_coords, lattice, **kw)

    @classmethod
    def from_cart(cls, lattice, cart_coords, species, **kw) -> "Structure":
        """Crystal from a (3, 3) lattice (rows, Angstrom) and (n, 3) Cartesian coordinates in Angstrom."""
        return cls(species, cart_coords, lattice, cartesian=True, **kw)

    @classmethod
    def molecule(cls, cart_coords, species, **kw) -> "Structure":
        """Molecule (no lattice) from (n, 3) Cartesian coordinates in Angstrom."""
        return cls(species, cart_coords, None, **kw)

    # properties -----------------------------------------------------------------------------------------
    @property
    def is_periodic(self) -> bool:
        return self._lattice is not None

    @property
    def lattice(self) -> Optional[np.ndarray]:
        """(3, 3) read-only rows a, b, c in Angstrom, or None for a molecule."""
        return self._lattice

    @property
    def cell(self) -> Optional[Lattice]:
        """The :class:`cloudvox.lattice.Lattice` of a crystal (its reciprocal and reciprocal points), None for a
        molecule."""
        return self._cell

    @property
    def frac_coords(self) -> np.ndarray:
        """(n, 3) fractional coordinates; raises for a molecule."""
        if self._frac is None:
            raise AttributeError(f"structure {self.id}: a molecule has no fractional coordinates")
        return self._frac

    @property
    def cart_coords(self) -> np.ndarray:
        """(n, 3) Cartesian coordinates in Angstrom."""
        return self._cart

    @property
    def numbers(self) -> np.ndarray:
        """(n,) int64 atomic numbers."""
        return self._numbers

    @property
    def symbols(self) -> Tuple[str, ...]:
        return self._symbols

    @property
    def elements(self) -> Tuple[str, ...]:
        """Sorted unique element symbols."""
        return self._elements

    @property
    def props(self) -> Dict[str, float]:
        return dict(self._props)

    @property
    def meta(self) -> Dict[str, str]:
        return dict(self._meta)

    @property
    def volume(self) -> float:
        """|det(lattice)| in Angstrom^3; raises for a molecule."""
        if self._cell is None:
            raise AttributeError(f"structure {self.id}: a molecule has no cell volume")
        return self._cell.volume

    @property
    def formula(self) -> str:
        """Hill-free reduced-to-counts formula in element order, e.g. 'O3SrTi'."""
        syms, counts = np.unique(np.array(self.symbols), return_counts=True)
        return "".join(f"{s}{c if c > 1 else ''}" for s, c in zip(syms, counts))

    def __len__(self) -> int:
        return len(self._numbers)

    def __repr__(self) -> str:
        kind = "crystal" if self.is_periodic else "molecule"
        return f"Structure({self.id!r}, {self.formula}, {kind}, {len(self)} atoms)"

    # derived structures ----------------------------------------------------------------------------------
    def replace(self, **changes) -> "Structure":
        """A new validated Structure with some fields changed (numbers, coords, lattice, id, props, meta)."""
        kw = dict(numbers=self._numbers, lattice=self._lattice, id=self.id, props=self._props, meta=self._meta)
        if self.is_periodic:
            kw["coords"], kw["cartesian"] = self._frac, False
        else:
            kw["coords"], kw["cartesian"] = self._cart, True
        kw.update(changes)
        return Structure(kw.pop("numbers"), kw.pop("coords"), kw.pop("lattice"), **kw)

    def translated(self, shift: Sequence[float]) -> "Structure":
        """All atoms moved by a Cartesian shift (3,) in Angstrom."""
        return self.replace(coords=self._cart + np.asarray(shift, float), cartesian=True)

    def rotated(self, rotation: np.ndarray) -> "Structure":
        """Structure rotated by an orthogonal (3, 3) matrix R acting on column vectors: x -> R x."""
        R = np.asarray(rotation, float)
        if self.is_periodic:
            return self.replace(lattice=self._lattice @ R.T)  # fractional coordinates unchanged
        return self.replace(coords=self._cart @ R.T, cartesian=True)

    def permuted(self, order: Sequence[int]) -> "Structure":
        """Atoms reordered."""
        order = np.asarray(order)
        coords = self._frac[order] if self.is_periodic else self._cart[order]
        return self.replace(numbers=self._numbers[order], coords=coords)

    def supercell(self, scale: Sequence[int]) -> "Structure":
        """(s1 x s2 x s3) supercell: cell vectors multiplied by integers, atoms repeated."""
        if not self.is_periodic:
            raise StructureError(f"structure {self.id}: a molecule has no supercell")
        s = np.asarray(scale, dtype=int).reshape(3)
        grid = np.stack(np.meshgrid(*[np.arange(k) for k in s], indexing="ij"), -1).reshape(-1, 3)
        frac = ((self._frac[None, :, :] + grid[:, None, :]) / s).reshape(-1, 3)
        numbers = np.tile(self._numbers, len(grid))
        return self.replace(numbers=numbers, coords=frac, lattice=self._lattice * s[:, None])
