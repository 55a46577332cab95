"""pymatgen objects and every file format pymatgen reads (CIF, POSCAR, XYZ, ...) to structures.

pymatgen is imported only when these functions are called.
"""
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union


from ..structure import Structure, StructureError
from .records import Record, collect


def from_pymatgen(obj, id: str = "", props: Optional[dict] = None) -> Structure:
    """A pymatgen ``Structure`` (periodic) or ``Molecule`` to a Structure.

    Disordered sites (partial occupancies) are rejected: the descriptor needs one element per site.
    """
    sites = list(obj)
    if not sites:
        raise StructureError(f"structure {id or '<no id>'}: empty structure (no atoms)")
    if not getattr(obj, "is_ordered", True):
        raise StructureError(f"structure {id or '<no id>'}: disordered sites (partial occupancies) are not supported")
    numbers = [site.specie.Z for site in sites]
    meta = {"formula": obj.composition.reduced_formula}
    if hasattr(obj, "lattice"):
        return Structure(numbers, obj.frac_coords, obj.lattice.matrix, id=id, props=props, meta=meta)
    return Structure(numbers, obj.cart_coords, None, id=id, props=props, meta=meta)


def to_pymatgen(structure: Structure):
    """A Structure back to a pymatgen ``Structure`` or ``Molecule``."""
    from pymatgen.core import Molecule, Structure as PmgStructure
    if structure.is_periodic:
        return PmgStructure(structure.lattice, list(structure.symbols), structure.frac_coords)
    return Molecule(list(structure.symbols), structure.cart_coords)


def iter_files(paths: Iterable[Union[str, Path]]) -> Iterator[Record]:
    """Records of structure files read by pymatgen (crystal formats first, then molecule formats)."""
    from pymatgen.core import Molecule, Structure as PmgStructure
    for k, p in enumerate(paths, 1):
        p = Path(p)
        sid = p.stem
        try:
            try:
                obj = PmgStructure.from_file(str(p))
            except Exception:  # not a crystal format: try a molecule (xyz, ...)
                obj = Molecule.from_file(str(p))
            yield Record(str(p), k, sid, structure=from_pymatgen(obj, id=sid))
        except StructureError as e:
            yield Record(str(p), k, sid, error=str(e))
        except Exception as e:  # pymatgen's parsers raise many types
            yield Record(str(p), k, sid, error=f"structure {sid}: cannot read {p.name}: {type(e).__name__}: {e}")


def read_files(paths: Iterable[Union[str, Path]], strict: bool = False,
               errors: Optional[List[Record]] = None) -> List[Structure]:
    """Structures of CIF/POSCAR/XYZ/... files; bad files are logged, recorded in ``errors`` and skipped."""
    return collect(iter_files(paths), strict=strict, errors=errors)
