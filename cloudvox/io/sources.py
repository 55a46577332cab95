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
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from .aflow import _record as _aflow_record
from .prototypes import iter_prototypes
from .pymatgen_io import iter_files
from .qm9 import _csv_record, iter_qm9_xyz, qm9pack_files
from .records import Record


def _line_index(path: Path, skip_header: bool):
    """Byte offsets (start, stop) and 1-based numbers of the non-empty lines of a text file."""
    data = np.fromfile(path, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(data) and data[-1] != 10:
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    ends = ends.astype(np.int64)
    numbers = np.arange(1, len(starts) + 1)
    nonblank = ends - starts > 0
    if nonblank.any():  # lines of only whitespace are blank too
        lengths = ends - starts
        short = np.flatnonzero(nonblank & (lengths < 4))
        for k in short:
            nonblank[k] = bool(bytes(data[starts[k]:ends[k]]).strip())
    if skip_header:
        nonblank[:1] = False
    return starts[nonblank], ends[nonblank], numbers[nonblank]


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


class Source:
    """The records of an input, by position. ``len(source)`` records; ``source.records(a, b)`` parses a run.

    Args:
        fmt: "aflow", "files", "qm9" or "prototypes" (see :func:`cloudvox.io.iter_records`).
        inputs: paths (files or folders); empty for the embedded default of "qm9" and "prototypes".
        limit: only the first ``limit`` records.
    """

    def __init__(self, fmt: str, inputs: Sequence[Union[str, Path]] = (), limit: Optional[int] = None):
        from . import FORMATS, _expand
        if fmt not in FORMATS:
            raise ValueError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
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
            files = _expand(inputs)
            jsonl = [f for f in files if not _starts_with_bracket(f)]
            if len(jsonl) == len(files):
                self._lines = self._index(files, False, _parse_aflow_line)
            else:  # AFLUX JSON lists are loaded whole
                self._items = [item for f in files for item in _aflow_items(f)]
        elif fmt == "qm9":
            files = _expand(inputs, "*.xyz")
            if files and all(str(f).endswith(".xyz") for f in files):
                self._items = [(str(f), functools.partial(_first, iter_qm9_xyz, f, k)) for k, f in enumerate(files, 1)]
            else:
                csvs = files or qm9pack_files()
                header = {f: next(csv.reader(open(f, newline="", encoding="utf-8"))) for f in csvs}
                self._lines = self._index(csvs, True, lambda src, line, text, f: _parse_csv_line(src, line, text, header[f]))
        elif fmt == "files":
            files = _expand(inputs)
            self._items = [(str(f), functools.partial(_first, iter_files, f, k)) for k, f in enumerate(files, 1)]
        else:  # prototypes: 288 small structures, parsed once
            self._items = [(r.source, functools.partial(_same, r)) for r in iter_prototypes(inputs[0] if inputs else None)]
        self.sources = sorted({str(s) for s in (self._lines.files if self._lines else [i[0] for i in self._items])})
        total = len(self._lines.start) if self._lines is not None else len(self._items)
        self.n = total if limit is None else min(total, int(limit))

    @staticmethod
    def _index(files: Sequence[Path], skip_header: bool, parse) -> _Lines:
        parts = [_line_index(f, skip_header) for f in files]
        return _Lines(list(files), np.concatenate([np.full(len(p[0]), k) for k, p in enumerate(parts)]).astype(np.int64),
                      np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                      np.concatenate([p[2] for p in parts]), parse)

    def __len__(self) -> int:
        return self.n

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


