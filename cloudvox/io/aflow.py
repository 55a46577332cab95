"""AFLOW entries (AFLUX JSON or JSONL with AFLOW keyword names) to structures.

Keywords used: ``auid`` (id), ``geometry`` = [a, b, c, alpha, beta, gamma] (Angstrom, degrees; lattice built
with a along x, b in the xy plane), ``species`` and ``composition`` (counts), ``positions_fractional``
ordered species by species as ``composition`` counts them, ``natoms`` (checked when present). Every other
numeric scalar keyword becomes a property (``enthalpy_atom`` in eV/atom, ...); ``compound``, ``aurl``,
``prototype``-like strings become metadata.
"""
import json
import math
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np

from ..elements import UnknownElementError, atomic_numbers
from ..lattice import lattice_from_parameters
from ..structure import MAX_ATOMS, Structure, StructureError
from .records import Record, collect

REQUIRED = ("geometry", "species", "composition", "positions_fractional")
META_KEYS = ("compound", "aurl", "spacegroup_orig", "spacegroup_relax", "Pearson_symbol_orig",
             "Pearson_symbol_relax", "prototype")


def structure_from_aflow(entry: dict, id: Optional[str] = None) -> Structure:
    """One AFLOW entry (dict with AFLOW keyword names) to a Structure; raises StructureError naming the entry."""
    sid = str(id if id is not None else entry.get("auid", "")) if isinstance(entry, dict) else str(id or "")
    if not isinstance(entry, dict):
        raise StructureError(f"structure {sid or '<no id>'}: entry is a {type(entry).__name__}, not a JSON object")
    missing = [k for k in REQUIRED if k not in entry or entry[k] is None]
    if missing:
        raise StructureError(f"structure {sid or '<no id>'}: missing keyword(s) {missing}")
    try:
        geometry = np.asarray(entry["geometry"], dtype=np.float64)
        counts = [int(c) for c in entry["composition"]]
        species = [str(s) for s in entry["species"]]
    except (TypeError, ValueError) as e:
        raise StructureError(f"structure {sid}: malformed geometry/species/composition: {e}") from None
    if geometry.shape != (6,) or not np.isfinite(geometry).all():
        raise StructureError(f"structure {sid}: geometry must be 6 finite numbers [a,b,c,alpha,beta,gamma], "
                             f"got {entry['geometry']!r}")
    if len(counts) != len(species) or any(c < 0 for c in counts):
        raise StructureError(f"structure {sid}: composition {counts} does not match species {species}")
    natoms = sum(counts)
    if natoms > MAX_ATOMS:  # before any array of that size is built
        raise StructureError(f"structure {sid}: {natoms} atoms exceed the limit of {MAX_ATOMS} "
                             "(cloudvox.structure.MAX_ATOMS)")
    if "natoms" in entry and entry["natoms"] is not None and int(entry["natoms"]) != natoms:
        raise StructureError(f"structure {sid}: natoms={entry['natoms']} but composition sums to {natoms}")
    if np.any(geometry[:3] <= 0):
        raise StructureError(f"structure {sid}: cell lengths must be > 0 Angstrom, got {geometry[:3].tolist()}")
    try:
        lattice = lattice_from_parameters(*geometry)
    except ValueError as e:
        raise StructureError(f"structure {sid}: singular or degenerate lattice: {e}") from None
    try:
        numbers = np.repeat(atomic_numbers(species), counts)  # species by species, as composition counts
    except UnknownElementError as e:
        raise StructureError(f"structure {sid}: {e}") from None
    props = {k: float(v) for k, v in entry.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "natoms" and math.isfinite(v)}
    meta = {k: str(entry[k]) for k in META_KEYS if k in entry and entry[k] is not None}
    try:
        frac = np.asarray(entry["positions_fractional"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise StructureError(f"structure {sid}: positions_fractional is not an (n, 3) array: {e}") from None
    return Structure(numbers, frac, lattice, id=sid, props=props, meta=meta)


def iter_aflow(path: Union[str, Path]) -> Iterator[Record]:
    """Records of an AFLUX JSON file (a list of entries) or a JSONL file (one entry per line).

    Bad lines (not JSON, bad entries) become error records with their line number and auid where known.
    """
    path = Path(path)
    src = str(path)
    with open(path, "r", encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":  # AFLUX format(json): one list
            try:
                entries = json.load(fh)
            except json.JSONDecodeError as e:
                yield Record(src, e.lineno, "", error=f"invalid JSON: {e.msg}")
                return
            for i, entry in enumerate(entries, 1):
                yield _record(src, i, entry)
            return
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                yield Record(src, lineno, "", error=f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            yield _record(src, lineno, entry)


def _record(src: str, line: int, entry) -> Record:
    sid = str(entry.get("auid", "")) if isinstance(entry, dict) else ""
    try:
        return Record(src, line, sid, structure=structure_from_aflow(entry))
    except StructureError as e:
        return Record(src, line, sid, error=str(e))


def read_aflow(path: Union[str, Path], strict: bool = False, errors: Optional[List[Record]] = None) -> List[Structure]:
    """Structures of an AFLUX JSON / JSONL file. Bad entries are logged with auid and line number, appended to
    ``errors`` if given, and skipped; ``strict=True`` raises :class:`InputError` on the first one."""
    return collect(iter_aflow(path), strict=strict, errors=errors)
