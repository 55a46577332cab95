"""QM9 molecules: the ``qm9pack`` CSV files (all 130,831 molecules) and the original per-molecule ``.xyz``.

Properties are converted to the names and units of :mod:`cloudvox.properties` (energies in eV). ``qm9pack``
is located without being imported (its ``__init__`` needs pandas and pkg_resources); its CSVs are read
with the standard library, lazily, row by row.
"""
import ast
import csv
import importlib.util
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union


from .. import properties as P
from ..structure import Structure, StructureError
from .records import Record, collect

QM9_CSV_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


def qm9pack_files() -> List[Path]:
    """The qm9pack CSV parts in order; raises FileNotFoundError with the install command if absent."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the QM9 data package is not installed: pip install qm9pack")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = [root / f for f in QM9_CSV_PARTS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack data files missing: {missing}")
    return files


def _csv_record(src: str, line: int, row: dict) -> Record:
    sid = f"qm9:{row.get('Index', '?')}"
    try:
        symbols = ast.literal_eval(row["Elements"])  # a literal list of strings: never evaluated as code
        xyz = ast.literal_eval(row["XYZ_Ang"])  # numbers such as "0." are not JSON
        props = {}
        for col, (name, factor) in P.QM9_CSV_COLUMNS.items():
            if row.get(col) not in (None, ""):
                props[name] = float(row[col]) * factor
        meta = {"smiles": row.get("SMILES", ""), "xyz_file": row.get("XYZ_file", "")}
        return Record(src, line, sid, structure=Structure(symbols, xyz, None, id=sid, props=props, meta=meta))
    except StructureError as e:
        return Record(src, line, sid, error=str(e))
    except (KeyError, ValueError, SyntaxError, TypeError) as e:
        return Record(src, line, sid, error=f"structure {sid}: malformed QM9 row: {e!r}")


def iter_qm9_csv(paths: Optional[Sequence[Union[str, Path]]] = None, limit: Optional[int] = None) -> Iterator[Record]:
    """Records of QM9 molecules from qm9pack CSV files (default: the installed package, all parts).

    limit: stop after this many rows (the first molecules by index).
    """
    paths = [Path(p) for p in paths] if paths is not None else qm9pack_files()
    count = 0
    csv.field_size_limit(1 << 24)
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.DictReader(fh), 2):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield _csv_record(str(path), line, row)


def _float(token: str) -> float:
    """A number of the original QM9 files, which sometimes use Mathematica's '*^' exponent."""
    return float(token.replace("*^", "e"))


def parse_qm9_xyz(text: str, id: str = "") -> Structure:
    """A molecule from the text of an original QM9 ``dsgdb9nsd_NNNNNN.xyz`` file.

    Format: natoms; ``gdb <index>`` and 15 properties (A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv, in
    GHz, Debye, bohr^3, Hartree, bohr^2, cal/(mol K)); natoms lines ``element x y z charge`` (Angstrom);
    frequencies; SMILES; InChI.
    """
    lines = text.splitlines()
    try:
        n = int(lines[0].split()[0])
        head = lines[1].split()
        index = head[1] if len(head) > 1 else ""
        sid = id or f"qm9:{index}"
        values = [_float(t) for t in head[2:2 + len(P.QM9_XYZ_FIELDS)]]
        props = {name: v * f for (name, f), v in zip(P.QM9_XYZ_FIELDS, values)}
        rows = [ln.split() for ln in lines[2:2 + n]]
        if len(rows) != n or any(len(r) < 4 for r in rows):
            raise ValueError(f"expected {n} atom lines of 'element x y z [charge]'")
        symbols = [r[0] for r in rows]
        xyz = [[_float(t) for t in r[1:4]] for r in rows]
        smiles = lines[3 + n].split()[0] if len(lines) > 3 + n and lines[3 + n].split() else ""
    except (IndexError, ValueError) as e:
        raise StructureError(f"structure {id or '<no id>'}: malformed QM9 xyz: {e}") from None
    return Structure(symbols, xyz, None, id=sid, props=props, meta={"smiles": smiles})


def format_qm9_xyz(structure: Structure, index: int = 0) -> str:
    """The original QM9 .xyz text of a molecule (properties from ``structure.props``, missing ones 0)."""
    props = structure.props
    values = " ".join(f"{props.get(name, 0.0) / f:.10g}" for name, f in P.QM9_XYZ_FIELDS)
    atoms = "\n".join(f"{s}\t{x:.10f}\t{y:.10f}\t{z:.10f}\t0.0"
                      for s, (x, y, z) in zip(structure.symbols, structure.cart_coords))
    smiles = structure.meta.get("smiles", "")
    return f"{len(structure)}\ngdb {index}\t{values}\n{atoms}\n0.0\n{smiles}\t{smiles}\nInChI=\tInChI=\n"


def iter_qm9_xyz(paths: Iterable[Union[str, Path]]) -> Iterator[Record]:
    """Records of original QM9 .xyz files."""
    for k, p in enumerate(paths, 1):
        p = Path(p)
        try:
            yield Record(str(p), k, p.stem, structure=parse_qm9_xyz(p.read_text(), id=""))
        except StructureError as e:
            yield Record(str(p), k, p.stem, error=f"{e} (file {p.name})")
        except OSError as e:
            yield Record(str(p), k, p.stem, error=f"structure {p.stem}: cannot read {p}: {e}")


def read_qm9(paths=None, limit: Optional[int] = None, strict: bool = False,
             errors: Optional[List[Record]] = None) -> List[Structure]:
    """QM9 molecules: from .xyz files if ``paths`` name .xyz files, else from qm9pack CSVs."""
    if paths is not None and all(str(p).endswith(".xyz") for p in paths):
        return collect(iter_qm9_xyz(paths), strict=strict, errors=errors)
    return collect(iter_qm9_csv(paths, limit=limit), strict=strict, errors=errors)
