"""The AFLOW prototype library shipped with pymatgen (288 structures): the embedded default crystal data.

The file ``pymatgen/analysis/prototypes/aflow_prototypes.json.gz`` is located without importing pymatgen
and parsed as JSON (StructureNL dictionaries).
"""
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Iterator, List, Optional

from ..structure import Structure, StructureError
from .records import Record, collect


def prototypes_path() -> Path:
    """Path of pymatgen's AFLOW prototype library; raises FileNotFoundError if pymatgen is missing."""
    spec = importlib.util.find_spec("pymatgen")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pymatgen is not installed: it ships the AFLOW prototype library")
    path = Path(list(spec.submodule_search_locations)[0]) / "analysis" / "prototypes" / "aflow_prototypes.json.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no AFLOW prototype library at {path}")
    return path


def iter_prototypes(path: Optional[Path] = None) -> Iterator[Record]:
    """Records of the AFLOW prototypes; id = AFLOW prototype label (``label#2``... where one repeats),
    meta = mineral, Pearson symbol, ..."""
    path = Path(path) if path is not None else prototypes_path()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        entries = json.load(fh)
    seen = {}
    for k, entry in enumerate(entries, 1):
        tags = entry.get("tags", {}) or {}
        label = str(tags.get("aflow") or f"prototype-{k}")
        seen[label] = seen.get(label, 0) + 1
        sid = label if seen[label] == 1 else f"{label}#{seen[label]}"  # some labels repeat with other parameters
        try:
            snl = entry["snl"]
            sites = snl["sites"]
            symbols = []
            for i, site in enumerate(sites):
                occ = site["species"]
                if len(occ) != 1 or abs(float(occ[0].get("occu", 1.0)) - 1) > 1e-6:
                    raise StructureError(f"structure {sid}: site {i} is disordered")
                symbols.append(occ[0]["element"])
            meta = {k2: str(v) for k2, v in tags.items() if v is not None}
            s = Structure(symbols, [site["abc"] for site in sites], snl["lattice"]["matrix"], id=sid, meta=meta)
            yield Record(str(path), k, sid, structure=s)
        except StructureError as e:
            yield Record(str(path), k, sid, error=str(e))
        except (KeyError, TypeError, ValueError) as e:
            yield Record(str(path), k, sid, error=f"structure {sid}: malformed prototype entry: {e!r}")


def read_prototypes(path: Optional[Path] = None, strict: bool = False,
                    errors: Optional[List[Record]] = None) -> List[Structure]:
    return collect(iter_prototypes(path), strict=strict, errors=errors)
