"""ASE: every file ``ase.io.read`` reads (extxyz, trajectories, CIF, POSCAR, ...) and ASE databases (``.db``).

An ``ase.Atoms`` becomes a crystal when all three directions are periodic (``pbc`` all true), a molecule
when none is; partly periodic systems (slabs, wires) are refused. Properties: every numeric scalar of
``atoms.info`` (extxyz's per-structure ``key=value`` pairs) or of an ASE database row's key-value pairs, and
the energy of an attached calculator (``energy``, eV, as ASE stores it); string values become metadata. Ids:
``info["id"]`` (or ``name``, ``uid``) where given, else ``FILE:INDEX`` (``FILE:ROWID`` for a database).

ASE is imported only when these functions are called (``pip install ase``).
"""
import numbers as _numbers
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..structure import Structure, StructureError
from .records import Record, collect

DB_SUFFIXES = (".db", ".json.db", ".aselmdb")
ID_KEYS = ("id", "name", "uid")


def _import_ase():
    try:
        import ase.io  # noqa: F401
        import ase.db  # noqa: F401
    except ImportError:
        raise ImportError("the ASE reader needs ASE: pip install ase") from None
    import ase
    return ase


def _split_values(values) -> Tuple[dict, dict]:
    props, meta = {}, {}
    for k, v in dict(values or {}).items():
        if isinstance(v, bool) or isinstance(v, np.bool_):
            continue
        if isinstance(v, _numbers.Real) and np.isfinite(float(v)):
            props[str(k)] = float(v)
        elif isinstance(v, str):
            meta[str(k)] = v
    return props, meta


def from_ase(atoms, id: str = "", props: Optional[dict] = None, meta: Optional[dict] = None) -> Structure:
    """An ``ase.Atoms`` to a Structure (positions in Angstrom; crystal if fully periodic, molecule if not)."""
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    if pbc.any() and not pbc.all():
        raise StructureError(f"structure {id or '<no id>'}: partly periodic (pbc={pbc.tolist()}); only crystals "
                             "(pbc all true) and molecules (pbc all false) are supported")
    lattice = np.asarray(atoms.get_cell()) if pbc.all() else None
    return Structure(atoms.get_atomic_numbers(), atoms.get_positions(), lattice, cartesian=True, id=id,
                     props=props, meta=meta)


def _atoms_values(atoms) -> Tuple[dict, dict]:
    props, meta = _split_values(atoms.info)
    calc = getattr(atoms, "calc", None)
    if calc is not None and "energy" in getattr(calc, "results", {}) and "energy" not in props:
        props["energy"] = float(calc.results["energy"])
    return props, meta


def _record_of_atoms(src: str, k: int, atoms, stem: str) -> Record:
    props, meta = _atoms_values(atoms)
    sid = next((str(atoms.info[key]) for key in ID_KEYS if key in atoms.info), f"{stem}:{k - 1}")
    try:
        return Record(src, k, sid, structure=from_ase(atoms, id=sid, props=props, meta=meta))
    except StructureError as e:
        return Record(src, k, sid, error=str(e))


def is_database(path: Union[str, Path]) -> bool:
    return str(path).endswith(DB_SUFFIXES)


def _db_record(path: Path, row_id: int) -> Record:
    ase = _import_ase()
    src, sid = str(path), f"{path.stem}:{row_id}"
    try:
        with ase.db.connect(str(path)) as db:
            row = db.get(id=row_id)
    except Exception as e:  # sqlite/json back-ends raise many types
        return Record(src, row_id, sid, error=f"structure {sid}: cannot read row {row_id} of {path.name}: {e}")
    props, meta = _split_values(row.key_value_pairs)
    if row.get("energy") is not None and "energy" not in props:
        props["energy"] = float(row.energy)
    sid = next((str(row.key_value_pairs[k]) for k in ID_KEYS if k in row.key_value_pairs), sid)
    try:
        return Record(src, row_id, sid, structure=from_ase(row.toatoms(), id=sid, props=props, meta=meta))
    except StructureError as e:
        return Record(src, row_id, sid, error=str(e))


def database_rows(path: Union[str, Path]) -> List[int]:
    """Row ids of an ASE database, in order."""
    ase = _import_ase()
    with ase.db.connect(str(path)) as db:
        return [row.id for row in db.select(include_data=False)]


def iter_ase_file(path: Union[str, Path]) -> Iterator[Record]:
    """Records of one file: every frame ``ase.io.iread`` yields, or every row of an ASE database."""
    path = Path(path)
    if is_database(path):
        for row_id in database_rows(path):
            yield _db_record(path, row_id)
        return
    ase = _import_ase()
    try:
        for k, atoms in enumerate(ase.io.iread(str(path), index=":"), 1):
            yield _record_of_atoms(str(path), k, atoms, path.stem)
    except Exception as e:  # ASE's parsers raise many types; the frames read so far stand
        yield Record(str(path), 0, path.stem, error=f"structure {path.stem}: cannot read {path.name} with ASE: "
                                                    f"{type(e).__name__}: {e}")


def iter_ase(paths: Iterable[Union[str, Path]]) -> Iterator[Record]:
    for p in paths:
        yield from iter_ase_file(p)


def read_ase(paths: Iterable[Union[str, Path]], strict: bool = False,
             errors: Optional[List[Record]] = None) -> List[Structure]:
    """Structures of ASE-readable files and databases; bad ones are logged, recorded in ``errors`` and skipped."""
    return collect(iter_ase(paths), strict=strict, errors=errors)
