"""Readers: AFLOW (AFLUX JSON / JSONL), pymatgen-readable files, ASE files and databases, the AFLOW prototype
library, QM9.

Every reader yields :class:`Record` objects (a structure, or the reason a record is bad, with its source
and line) so that batch jobs record bad input and go on; ``read_*`` functions collect the good ones.
:class:`Source` is the one dispatch on the input format (:data:`FORMATS`); :func:`iter_records` streams it.
"""
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .aflow import iter_aflow, read_aflow, structure_from_aflow
from .ase_io import from_ase, iter_ase, read_ase
from .prototypes import iter_prototypes, read_prototypes
from .pymatgen_io import from_pymatgen, iter_files, read_files, to_pymatgen
from .qm9 import format_qm9_xyz, iter_qm9_csv, iter_qm9_xyz, parse_qm9_xyz, read_qm9
from .records import InputError, Record, collect
from .sources import FORMATS, Source, expand, format_of

__all__ = ["FORMATS", "InputError", "Record", "Source", "collect", "expand", "format_of", "iter_records",
           "iter_aflow", "read_aflow", "structure_from_aflow", "from_ase", "iter_ase", "read_ase", "iter_prototypes",
           "read_prototypes", "from_pymatgen", "to_pymatgen", "iter_files", "read_files", "format_qm9_xyz",
           "iter_qm9_csv", "iter_qm9_xyz", "parse_qm9_xyz", "read_qm9"]


def iter_records(fmt: str, inputs: Optional[Sequence[Union[str, Path]]] = None,
                 limit: Optional[int] = None) -> Iterator[Record]:
    """Records of any supported input (see :data:`FORMATS`), in input order; ``limit``: the first N only."""
    return iter(Source(fmt, list(inputs or []), limit))
