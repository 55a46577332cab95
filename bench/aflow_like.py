"""AFLOW-like JSONL, seeded and streamed: the realistic mix for the featurize scale benchmark and tests.

Each line is one entry with AFLOW keyword names (``auid``, ``compound``, ``species`` alphabetical,
``composition``, ``natoms``, ``geometry`` [a, b, c, alpha, beta, gamma] in Angstrom and degrees,
``positions_fractional`` species by species, ``enthalpy_atom`` eV/atom, ``prototype``). The mix:

* structure types from pymatgen's AFLOW prototype library (288 types, 1-105 atoms, median 8), each
  decorated with distinct random elements from the ~85 AFLOW computes (:data:`AFLOW_ELEMENTS`);
* volume per atom uniform in 8-35 A^3 (prototypes whose closest pair would fall below 0.6 A are scaled up);
* a random cell choice: the same crystal in a skewed cell ``U @ lattice``, U unimodular (one or two shears
  of +-1 or +-2), fractional coordinates ``frac @ inv(U)`` wrapped into [0, 1);
* a ``supercell_rate`` (1%) tail of supercells up to ~500 atoms;
* a ``malformed_rate`` (1%) of bad entries, cycling through :data:`MALFORMED`: every kind a real dump has
  (non-finite or non-numeric coordinates, zero or negative volume, unknown elements, composition not
  matching positions, missing keys, truncated JSON, duplicated auids, coordinates far outside the cell,
  overlapping atoms, and absurd sizes beyond the documented limits).

Usage: ``python bench/aflow_like.py --n 1000000 --seed 0 --out aflow_like.jsonl`` (``-`` for stdout).
The n-th line depends only on (seed, n): any prefix of a longer file is the shorter file.
"""
import argparse
import hashlib
import json
import sys
from typing import Dict, Iterator, List, Tuple

import numpy as np

AFLOW_ELEMENTS = tuple(
    "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Rb Sr Y Zr Nb Mo Tc "
    "Ru Rh Pd Ag Cd In Sn Sb Te I Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg "
    "Tl Pb Bi Ac Th Pa U Np Pu".split())
MALFORMED = ("nan_coordinate", "inf_coordinate", "non_numeric_coordinate", "zero_volume", "negative_length",
             "unknown_element", "composition_mismatch", "missing_key", "truncated_json", "duplicate_auid",
             "far_outside_cell", "overlapping_atoms", "huge_cell", "too_many_atoms")
MIN_PAIR = 0.6  # Angstrom: no generated structure has a closer pair


def _prototypes() -> List[Dict]:
    """The prototype library as (frac (n, 3), element index per atom (n,), lattice at 1 A^3/atom, min pair
    distance at that scale, label)."""
    from cloudvox.io.prototypes import iter_prototypes
    from cloudvox.structure import find_overlap
    out = []
    for rec in iter_prototypes():
        s = rec.structure
        if s is None:
            continue
        _, kinds = np.unique(np.array(s.symbols), return_inverse=True)
        lat = s.lattice * (len(s) / s.volume) ** (1 / 3)  # 1 A^3 per atom
        # closest pair at this scale: bisect the cutoff of the overlap check
        lo, hi = 0.0, 2.0
        for _ in range(20):
            mid = (lo + hi) / 2
            if find_overlap(s.frac_coords @ lat, lat, cutoff=mid, frac=s.frac_coords) is None:
                lo = mid
            else:
                hi = mid
        out.append(dict(frac=np.array(s.frac_coords), kinds=kinds, lattice=lat, dmin=lo, label=rec.id))
    return out


def _parameters(lattice: np.ndarray) -> List[float]:
    a, b, c = np.linalg.norm(lattice, axis=1)
    cos = lambda u, v: float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))  # noqa: E731
    angles = [np.degrees(np.arccos(np.clip(x, -1, 1))) for x in
              (cos(lattice[1], lattice[2]), cos(lattice[0], lattice[2]), cos(lattice[0], lattice[1]))]
    return [round(float(x), 7) for x in (a, b, c, *angles)]


def _shear(rng: np.random.Generator) -> np.ndarray:
    U = np.eye(3, dtype=np.int64)
    for _ in range(rng.integers(0, 3)):
        i, j = rng.choice(3, 2, replace=False)
        E = np.eye(3, dtype=np.int64)
        E[i, j] = rng.choice([-2, -1, 1, 2])
        U = E @ U
    return U


class AflowLike:
    """The generator: ``entries(n)`` yields n dicts (or malformed JSON lines as ``str``)."""

    def __init__(self, seed: int = 0, supercell_rate: float = 0.01, malformed_rate: float = 0.01):
        self.seed, self.supercell_rate, self.malformed_rate = seed, supercell_rate, malformed_rate
        self.protos = _prototypes()

    def _auid(self, k: int) -> str:
        return "aflow:" + hashlib.blake2b(f"{self.seed}:{k}".encode(), digest_size=8).hexdigest()

    def entry(self, k: int) -> Dict:
        """The k-th well-formed entry (a function of seed and k only)."""
        rng = np.random.default_rng([self.seed, k])
        p = self.protos[rng.integers(len(self.protos))]
        frac, kinds, lat = p["frac"], p["kinds"], p["lattice"]
        if rng.random() < self.supercell_rate:
            n = len(frac)
            choices = [s for s in ((2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3), (4, 4, 2))
                       if n * np.prod(s) <= 500]
            if choices:
                s = np.array(choices[rng.integers(len(choices))])
                grid = np.stack(np.meshgrid(*[np.arange(x) for x in s], indexing="ij"), -1).reshape(-1, 3)
                frac = ((frac[None] + grid[:, None]) / s).reshape(-1, 3)
                kinds = np.tile(kinds, len(grid))
                lat = lat * s[:, None]
        n = len(frac)
        vpa = rng.uniform(8.0, 35.0)
        scale = vpa ** (1 / 3)
        if p["dmin"] * scale < MIN_PAIR:
            scale = MIN_PAIR / p["dmin"]
        lat = lat * scale
        U = _shear(rng)
        lat = U @ lat
        frac = frac @ np.linalg.inv(U)  # same Cartesian positions: f L = f' U L
        frac = frac - np.floor(frac)
        elements = rng.choice(len(AFLOW_ELEMENTS), kinds.max() + 1, replace=False)
        symbols = np.array([AFLOW_ELEMENTS[e] for e in elements])[kinds]
        order = np.argsort(symbols, kind="stable")
        species, counts = np.unique(symbols, return_counts=True)
        compound = "".join(f"{s}{c}" for s, c in zip(species, counts))
        return dict(auid=self._auid(k), compound=compound, species=species.tolist(), composition=counts.tolist(),
                    natoms=int(n), geometry=_parameters(lat),
                    positions_fractional=np.round(frac[order], 8).tolist(),
                    enthalpy_atom=round(float(rng.normal(-5.0, 1.5)), 5), prototype=p["label"])

    def malformed(self, k: int, kind: str):
        """Entry k spoiled in one way (a dict, or a ``str`` line for truncated JSON)."""
        rng = np.random.default_rng([self.seed, k, 1])
        e = self.entry(k)
        pos = e["positions_fractional"]
        if kind == "nan_coordinate":
            pos[0][1] = float("nan")
        elif kind == "inf_coordinate":
            pos[-1][2] = float("inf")
        elif kind == "non_numeric_coordinate":
            pos[0][0] = "0.5a"
        elif kind == "zero_volume":
            e["geometry"][3:] = [90.0, 90.0, 180.0]
        elif kind == "negative_length":
            e["geometry"][0] = -e["geometry"][0]
        elif kind == "unknown_element":
            e["species"][0] = "Xx"
        elif kind == "composition_mismatch":
            e["composition"][0] += 1
            e.pop("natoms")
        elif kind == "missing_key":
            e.pop(("geometry", "species", "composition", "positions_fractional")[rng.integers(4)])
        elif kind == "truncated_json":
            line = json.dumps(e, separators=(",", ":"))
            return line[:int(len(line) * rng.uniform(0.2, 0.9))]
        elif kind == "duplicate_auid":
            e["auid"] = self._auid(max(k - 1 - int(rng.integers(100)), 0))
        elif kind == "far_outside_cell":
            pos[0] = [1e7, 0.5, 0.5]
        elif kind == "overlapping_atoms":
            pos.append(list(pos[0]))
            e["composition"][0] += 1
            e["natoms"] += 1
        elif kind == "huge_cell":
            e["geometry"][:3] = [3000.0, 3000.0, 3000.0]
        elif kind == "too_many_atoms":
            n = 2500
            g = np.stack(np.meshgrid(*[np.arange(14)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] / 14
            e.update(species=["Na"], composition=[n], natoms=n, positions_fractional=np.round(g, 6).tolist(),
                     geometry=[40.0, 40.0, 40.0, 90.0, 90.0, 90.0], compound=f"Na{n}")
        return e

    def lines(self, n: int, start: int = 0) -> Iterator[Tuple[str, str]]:
        """(line, kind) for entries start .. start + n; kind is "" for good entries."""
        every = int(round(1 / self.malformed_rate)) if self.malformed_rate > 0 else 0
        for k in range(start, start + n):
            kind = ""
            if every and k % every == every // 2:
                kind = MALFORMED[(k // every) % len(MALFORMED)]
                e = self.malformed(k, kind)
            else:
                e = self.entry(k)
            yield (e if isinstance(e, str) else json.dumps(e, separators=(",", ":"))), kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="-")
    ap.add_argument("--supercell-rate", type=float, default=0.01)
    ap.add_argument("--malformed-rate", type=float, default=0.01)
    args = ap.parse_args()
    gen = AflowLike(args.seed, args.supercell_rate, args.malformed_rate)
    fh = sys.stdout if args.out == "-" else open(args.out + ".part", "w")
    for line, _ in gen.lines(args.n):
        fh.write(line + "\n")
    if fh is not sys.stdout:
        fh.close()
        import os
        os.replace(args.out + ".part", args.out)


if __name__ == "__main__":
    main()
