"""Readers: AFLOW (AFLUX JSON / JSONL), pymatgen-readable files, the AFLOW prototype library, QM9.

Every reader yields :class:`Record` objects (a structure, or the reason a record is bad, with its source
and line) so that batch jobs record bad input and go on; ``read_*`` functions collect the good ones.
"""
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .aflow import iter_aflow, read_aflow, structure_from_aflow
from .prototypes import iter_prototypes, read_prototypes
from .pymatgen_io import from_pymatgen, iter_files, read_files, to_pymatgen
from .qm9 import format_qm9_xyz, iter_qm9_csv, iter_qm9_xyz, parse_qm9_xyz, read_qm9
from .records import InputError, Record, collect

FORMATS = ("aflow", "files", "qm9", "prototypes")

__all__ = ["FORMATS", "InputError", "Record", "collect", "iter_records", "iter_aflow", "read_aflow",
           "structure_from_aflow", "iter_prototypes", "read_prototypes", "from_pymatgen", "to_pymatgen",
           "iter_files", "read_files", "format_qm9_xyz", "iter_qm9_csv", "iter_qm9_xyz", "parse_qm9_xyz",
           "read_qm9"]


def _expand(inputs: Sequence[Union[str, Path]], pattern: str = "*") -> list:
    out = []
    for p in map(Path, inputs):
        out.extend(sorted(q for q in p.glob(pattern) if q.is_file()) if p.is_dir() else [p])
    return out


def iter_records(fmt: str, inputs: Optional[Sequence[Union[str, Path]]] = None,
                 limit: Optional[int] = None) -> Iterator[Record]:
    """Records of any supported input.

    fmt: "aflow" (AFLUX JSON / JSONL files), "files" (CIF/POSCAR/XYZ files or folders, via pymatgen),
    "qm9" (qm9pack CSVs, default the installed package, or original .xyz files/folders),
    "prototypes" (pymatgen's AFLOW prototype library, or a given copy of it).
    limit: stop after this many records.
    """
    inputs = list(inputs or [])
    if fmt == "aflow":
        if not inputs:
            raise ValueError("format 'aflow' needs at least one input file")
        gen = (r for p in _expand(inputs) for r in iter_aflow(p))
    elif fmt == "files":
        gen = iter_files(_expand(inputs))
    elif fmt == "qm9":
        files = _expand(inputs, "*.xyz")
        if files and all(str(f).endswith(".xyz") for f in files):
            gen = iter_qm9_xyz(files)
        else:
            gen = iter_qm9_csv(files or None, limit=limit)
    elif fmt == "prototypes":
        gen = iter_prototypes(Path(inputs[0]) if inputs else None)
    else:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    for k, r in enumerate(gen):
        if limit is not None and k >= limit:
            return
        yield r
