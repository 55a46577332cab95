"""Random access to the records of an input: what a parallel job needs to parse only its own share.

A :class:`Source` knows how many records an input holds and parses any contiguous run of them. Line-based
inputs (AFLOW JSONL, qm9pack CSV) are indexed by byte offsets found with one vectorised pass over the bytes,
so every rank can index a large file cheaply and read only the lines it is given.
"""
import csv
import dataclasses
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .aflow import _record as _aflow_record
from .prototypes import iter_prototypes
from .pymatgen_io import iter_files
from .qm9 import _csv_record, iter_qm9_xyz, qm9pack_files
from .records import Record


INDEX_CHUNK = 1 << 24  # bytes read at a time while indexing: memory stays bounded whatever the file size


def _line_index(path: Path, skip_header: bool, limit: Optional[int] = None, chunk: int = INDEX_CHUNK):
    """Byte offsets (start, stop) and 1-based numbers of the non-empty lines of a text file.

    Streams the file in ``chunk``-byte pieces (only the offsets are kept) and stops after ``limit``
    non-empty lines. A line of only whitespace is blank."""
    want = None if limit is None else limit + (1 if skip_header else 0)
    starts, stops, numbers = [], [], []
    found, line_no, pos, line_start = 0, 0, 0, 0
    pending = b""  # the unfinished line at the end of the previous chunk (to test it for blankness)
    with open(path, "rb") as fh:
        while want is None or found < want:
            data = fh.read(chunk)
            if not data:
                break
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + pos
            if len(ends):
                s = np.concatenate([[line_start], ends[:-1] + 1]).astype(np.int64)
                e = ends.astype(np.int64)
                keep = _nonblank(s, e, data, pos, pending)
                nums = np.arange(line_no + 1, line_no + len(s) + 1)
                starts.append(s[keep]); stops.append(e[keep]); numbers.append(nums[keep])
                found += int(keep.sum())
                line_no += len(s)
                line_start = int(ends[-1]) + 1
                pending = data[line_start - pos:]
            else:
                pending += data
            pos += len(data)
        if (want is None or found < want) and pos > line_start and pending.strip():  # last line, no newline
            starts.append(np.array([line_start])); stops.append(np.array([pos])); numbers.append(np.array([line_no + 1]))
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    starts, stops, numbers = cat(starts), cat(stops), cat(numbers)
    if skip_header and len(numbers) and numbers[0] == 1:
        starts, stops, numbers = starts[1:], stops[1:], numbers[1:]
    if limit is not None:
        starts, stops, numbers = starts[:limit], stops[:limit], numbers[:limit]
    return starts, stops, numbers


def _nonblank(starts: np.ndarray, stops: np.ndarray, data: bytes, pos: int, pending: bytes) -> np.ndarray:
    """Which of the lines [starts, stops) (file offsets; the first may begin in ``pending``) hold more than
    whitespace. Long lines always do in practice; short ones are checked byte by byte."""
    keep = stops - starts > 0
    for k in np.flatnonzero(keep & (stops - starts < 4)):
        a, b = int(starts[k]) - pos, int(stops[k]) - pos
        text = (pending + data[:b]) if a < 0 else data[a:b]
        keep[k] = bool(text.strip())
    return keep


@dataclass
class _Lines:
    files: List[Path]
    file_of: np.ndarray  # (n,) which file
    start: np.ndarray  # (n,) byte offsets
    stop: np.ndarray
    number: np.ndarray  # (n,) 1-based line numbers
    parse: Callable[[str, int, str, Path], Record]  # (source, line, text, file) -> Record

    def records(self, a: int, b: int) -> List[Record]:
        out: List[Record] = []
        k = a
        while k < b:
            f = int(self.file_of[k])
            e = k
            while e < b and self.file_of[e] == f:
                e += 1
            with open(self.files[f], "rb") as fh:
                fh.seek(int(self.start[k]))
                blob = fh.read(int(self.stop[e - 1] - self.start[k]))
            base = int(self.start[k])
            for j in range(k, e):
                text = blob[self.start[j] - base:self.stop[j] - base].decode("utf-8", errors="replace")
                out.append(self.parse(str(self.files[f]), int(self.number[j]), text, self.files[f]))
            k = e
        return out


FORMATS = {
    "aflow": "AFLOW AFLUX JSON or JSONL files (AFLOW keyword names)",
    "files": "CIF, POSCAR, XYZ, ... files or folders, read by pymatgen",
    "ase": "anything ase.io.read reads (extxyz with info properties, trajectories, ...) and ASE databases (.db)",
    "qm9": "QM9: the qm9pack CSVs (default: the installed package) or original .xyz files",
    "prototypes": "pymatgen's AFLOW prototype library (default: the installed copy)",
}


def expand(inputs: Sequence[Union[str, Path]], pattern: str = "*") -> List[Path]:
    """Files of the inputs: a folder stands for its files matching ``pattern`` (sorted)."""
    out: List[Path] = []
    for p in map(Path, inputs):
        out.extend(sorted(q for q in p.glob(pattern) if q.is_file()) if p.is_dir() else [p])
    return out


def format_of(path: Union[str, Path]) -> str:
    """The input format of one file, from its name (and, for .xyz, its comment line)."""
    from .ase_io import is_database
    name = str(path).lower()
    if name.endswith((".json", ".jsonl")):
        return "aflow"
    if is_database(name) or name.endswith((".extxyz", ".traj")):
        return "ase"
    if name.endswith(".xyz"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.readline()
            comment = fh.readline()
        if comment.startswith("gdb"):
            return "qm9"
        if "Properties=" in comment or "Lattice=" in comment or "=" in comment:
            return "ase"  # extended XYZ
    return "files"


class Source:
    """The records of an input, by position: the one place that dispatches on the input format.
    ``len(source)`` records; ``source.records(a, b)`` parses a run; iterating yields every record.

    Args:
        fmt: one of :data:`FORMATS`.
        inputs: paths (files or folders); empty for the embedded default of "qm9" and "prototypes".
        limit: only the first ``limit`` records (line-based inputs are then indexed only that far).
        index: the :meth:`line_index` of the same source made elsewhere (a parallel job indexes once, on one
            rank, and passes it on: every rank reading the whole input would multiply the file system's load).

    Line-based inputs (AFLOW JSONL, qm9pack CSV) are indexed by byte offsets, streamed: no file is read
    whole. Item-based inputs (one structure per file, AFLUX JSON lists, ASE files) hold one loader per
    record; frames of an ASE file (not a database) are parsed when the source is made.
    """

    def __init__(self, fmt: str, inputs: Sequence[Union[str, Path]] = (), limit: Optional[int] = None,
                 index: Optional[Tuple[np.ndarray, ...]] = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown input format {fmt!r}; expected one of {list(FORMATS)}")
        self.fmt = fmt
        inputs = [Path(p) for p in inputs]
        for p in inputs:
            if not p.exists():
                raise FileNotFoundError(f"input {p} does not exist")
        self._lines: Optional[_Lines] = None
        self._items: Optional[list] = None  # (source, load) per record, for item-based formats: load() -> Record
        if fmt == "aflow":
            if not inputs:
                raise ValueError("format 'aflow' needs at least one input file")
            files = expand(inputs)
            jsonl = [f for f in files if not _starts_with_bracket(f)]
            if len(jsonl) == len(files):
                self._lines = self._index(files, False, _parse_aflow_line, limit, index)
            else:  # AFLUX JSON lists are loaded whole
                self._items = [item for f in files for item in _aflow_items(f)]
        elif fmt == "qm9":
            files = expand(inputs, "*.xyz")
            if files and all(str(f).endswith(".xyz") for f in files):
                self._items = [(str(f), functools.partial(_first, iter_qm9_xyz, f, k)) for k, f in enumerate(files, 1)]
            else:
                csvs = files or qm9pack_files()
                header = {f: next(csv.reader(open(f, newline="", encoding="utf-8"))) for f in csvs}
                self._lines = self._index(csvs, True, lambda src, line, text, f: _parse_csv_line(src, line, text, header[f]),
                                          limit, index)
        elif fmt == "files":
            files = expand(inputs)
            self._items = [(str(f), functools.partial(_first, iter_files, f, k)) for k, f in enumerate(files, 1)]
        elif fmt == "ase":
            if not inputs:
                raise ValueError("format 'ase' needs at least one input file")
            self._items = [item for f in expand(inputs) for item in _ase_items(f)]
        else:  # prototypes: 288 small structures, parsed once
            self._items = [(r.source, functools.partial(_same, r)) for r in iter_prototypes(inputs[0] if inputs else None)]
        self.sources = sorted({str(s) for s in (self._lines.files if self._lines else [i[0] for i in self._items])})
        total = len(self._lines.start) if self._lines is not None else len(self._items)
        self.n = total if limit is None else min(total, int(limit))

    @staticmethod
    def _index(files: Sequence[Path], skip_header: bool, parse, limit: Optional[int] = None,
               index: Optional[Tuple[np.ndarray, ...]] = None) -> _Lines:
        if index is not None:
            file_of, start, stop, number = index
            used = int(file_of.max()) + 1 if len(file_of) else 0
            return _Lines(list(files)[:used], file_of, start, stop, number, parse)
        parts = []
        for f in files:  # files after the one that reaches the limit are not opened
            left = None if limit is None else limit - sum(len(p[0]) for p in parts)
            if left is not None and left <= 0:
                break
            parts.append(_line_index(f, skip_header, left))
        files = list(files)[:len(parts)]
        numbers = np.concatenate([p[2] for p in parts])
        # 22 bytes per record: the smallest integer types that hold the file and line numbers
        file_dtype = np.int16 if len(files) < 2 ** 15 else np.int32
        line_dtype = np.int32 if (numbers.max(initial=0) < 2 ** 31) else np.int64
        return _Lines(list(files), np.concatenate([np.full(len(p[0]), k, dtype=file_dtype) for k, p in enumerate(parts)]),
                      np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                      numbers.astype(line_dtype), parse)

    def __len__(self) -> int:
        return self.n

    def line_index(self) -> Optional[Tuple[np.ndarray, ...]]:
        """(file, start, stop, line number) integer arrays of a line-based source (22 bytes per record), for
        ``Source(..., index=...)``; None for item-based sources."""
        if self._lines is None:
            return None
        L = self._lines
        return L.file_of, L.start, L.stop, L.number

    def __iter__(self):
        for a in range(0, self.n, 256):
            yield from self.records(a, a + 256)

    def records(self, a: int, b: int) -> List[Record]:
        """Parsed records a .. b - 1 (bad ones as error records)."""
        a, b = max(0, a), min(b, self.n)
        if a >= b:
            return []
        if self._lines is not None:
            return self._lines.records(a, b)
        return [load() for _, load in self._items[a:b]]

    def fingerprint(self) -> List[dict]:
        """Paths, sizes and modification times of the inputs, to detect a changed input on resume."""
        out = []
        for s in self.sources:
            p = Path(s)
            st = p.stat()
            out.append(dict(path=str(p.resolve()), size=st.st_size, mtime=int(st.st_mtime)))
        return out


def _ase_items(path: Path):
    from .ase_io import database_rows, is_database, iter_ase_file, _db_record
    if is_database(path):
        return [(str(path), functools.partial(_db_record, path, rid)) for rid in database_rows(path)]
    return [(str(path), functools.partial(_same, r)) for r in iter_ase_file(path)]


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return head[:1] == b"["


def _aflow_items(path: Path):
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [(str(path), functools.partial(_same, Record(str(path), e.lineno, "", error=f"invalid JSON: {e.msg}")))]
    return [(str(path), functools.partial(_aflow_record, str(path), i, entry)) for i, entry in enumerate(entries, 1)]


def _same(record: Record) -> Record:
    return record


def _first(reader, path: Path, number: int) -> Record:
    """The record of a one-structure file, numbered by the file's position in the input."""
    return dataclasses.replace(next(iter(reader([path]))), line=number)


def _parse_aflow_line(src: str, line: int, text: str, _file) -> Record:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as e:
        return Record(src, line, "", error=f"invalid JSON: {e.msg} at column {e.colno}")
    return _aflow_record(src, line, entry)


def _parse_csv_line(src: str, line: int, text: str, header: List[str]) -> Record:
    try:
        row = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration) as e:
        return Record(src, line, "", error=f"malformed CSV line: {e}")
    return _csv_record(src, line, dict(zip(header, row)))


