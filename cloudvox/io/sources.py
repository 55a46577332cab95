"""Random access to the records of an input: what a parallel job needs to parse only its own share.

A :class:`Source` knows how many records an input holds and parses any contiguous run of them. Line-based
inputs (AFLOW JSONL, qm9pack CSV) are indexed by the byte offsets of every stride-th record
(:class:`LineIndex`), found by vectorised passes over the bytes: by one process, or in byte shares by every
rank of a parallel job, which then reads only the lines it is given.
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
from ..errors import ConfigError


INDEX_CHUNK = 1 << 24  # bytes read at a time while indexing: memory stays bounded whatever the file size
INDEX_STRIDE = 256  # records between two entries of a line index (a parallel job uses its block size)
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() strips: a line of only these is blank


def split_bytes(sizes: Sequence[int], parts: int, part: int) -> List[Tuple[int, int, int]]:
    """The ``part``-th of ``parts`` near-equal byte ranges over files of ``sizes`` bytes laid end to end, as
    pieces (file, lo, hi) with lo < hi. Pure: every rank computes every other's pieces."""
    total = int(sum(sizes))
    a, b = (total * part) // parts, (total * (part + 1)) // parts
    out, base = [], 0
    for f, size in enumerate(sizes):
        lo, hi = max(a, base) - base, min(b, base + size) - base
        if lo < hi:
            out.append((f, lo, hi))
        base += size
    return out


def scan_lines(path: Path, lo: int, hi: int, skip_header: bool, first_line: int = 1, first_record: int = 0,
               stride: int = 0, stop_at: Optional[int] = None, chunk: int = INDEX_CHUNK):
    """The lines of ``path`` that start in bytes [lo, hi) (a line starts at byte 0 or after a newline; it may
    end beyond hi): returns (lines, records, checkpoints).

    A record is a line that is not blank (only whitespace) and, with ``skip_header``, not line 1. Given the
    1-based number of the piece's first line and the index of its first record (known from the pieces before
    it), ``checkpoints`` lists (record, start byte, line number) of every record whose index is a multiple of
    ``stride`` (none with stride 0); ``stop_at``: stop after that many records in all (a limit). Streams
    ``chunk`` bytes at a time; vectorised per chunk."""
    size = path.stat().st_size
    hi = min(hi, size)
    checkpoints: List[Tuple[int, int, int]] = []
    if lo >= hi:
        return 0, 0, checkpoints
    with open(path, "rb") as fh:
        start = 0
        if lo > 0:  # the first line start at or after lo: just after the first newline at or after lo - 1
            fh.seek(lo - 1)
            pos, start = lo - 1, -1
            while start < 0:
                data = fh.read(chunk)
                if not data:
                    return 0, 0, checkpoints
                k = data.find(b"\n")
                start = pos + k + 1 if k >= 0 else -1
                pos += len(data)
            if start >= hi:
                return 0, 0, checkpoints
        fh.seek(start)
        pos, line, record, lines = start, first_line, first_record, 0
        cur_start, cur_nonws, done = start, 0, False

        def take(starts: np.ndarray, nonws: np.ndarray) -> None:
            nonlocal line, record, lines, done
            numbers = line + np.arange(len(starts))
            keep = nonws.copy()
            if skip_header:
                keep &= starts != 0  # the header: line 1, the one at byte 0 (known without the line number)
            index = record + np.cumsum(keep) - 1  # each kept line's record index
            if stop_at is not None and record + int(keep.sum()) >= stop_at:  # the limit: nothing after it
                cut = int(np.flatnonzero(keep)[stop_at - 1 - record]) + 1 if stop_at > record else 0
                starts, nonws, numbers, keep, index = starts[:cut], nonws[:cut], numbers[:cut], keep[:cut], index[:cut]
                done = True
            if stride:
                hit = keep & (index % stride == 0)
                checkpoints.extend(zip(index[hit].tolist(), starts[hit].tolist(), numbers[hit].tolist()))
            lines += len(starts)
            line += len(starts)
            record += int(keep.sum())

        while not done:
            data = fh.read(chunk)
            if not data:
                break
            nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if len(nl):
                local = np.concatenate([[cur_start - pos], nl[:-1] + 1])  # the first may begin in an earlier chunk
                nonws = _has_text(data, local, nl)
                nonws[0] |= cur_nonws
                starts = local + pos
                inside = starts < hi
                if not inside.all():
                    starts, nonws, done = starts[inside], nonws[inside], True
                take(starts, nonws)
                cur_start, cur_nonws = int(nl[-1]) + 1 + pos, bool(data[int(nl[-1]) + 1:].strip())
                done = done or cur_start >= hi
            else:
                cur_nonws = cur_nonws or bool(data.strip())
            pos += len(data)
        if not done and cur_start < pos and cur_start < hi:  # the last line, without a newline
            take(np.array([cur_start], dtype=np.int64), np.array([cur_nonws]))
    return lines, record - first_record, checkpoints


def _has_text(data: bytes, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """(L,) bool: whether the lines data[max(start, 0):stop] hold more than whitespace. A line whose first or
    last byte is not whitespace does (nearly every line: O(lines), not O(bytes)); the rest are stripped."""
    arr = np.frombuffer(data, dtype=np.uint8)
    a = np.maximum(starts, 0)
    out = stops > a
    k = np.flatnonzero(out)
    doubt = _WHITESPACE[arr[a[k]]] & _WHITESPACE[arr[stops[k] - 1]]
    for j in k[doubt].tolist():
        out[j] = bool(data[int(a[j]):int(stops[j])].strip())
    return out


def piece_starts(counts: Sequence[Tuple[int, int, int, int, int]]) -> List[Tuple[int, int]]:
    """(first line number, first record index) of each piece, from every piece's (file, lo, hi, lines,
    records) in file and byte order: line numbers start again at 1 in each file, records run on. Pure."""
    out, line, record, current = [], 1, 0, None
    for f, _, _, lines, records in counts:
        if f != current:
            line, current = 1, f
        out.append((line, record))
        line += lines
        record += records
    return out


@dataclass
class LineIndex:
    """Where the records of line-based files (AFLOW JSONL, qm9pack CSV) are: the start byte, file and line
    number of every ``stride``-th record, 28 bytes per ``stride`` records (a featurize job's stride is its
    block size, so each block is one read). Records in between are found by reading from the entry before.

    Built by one process (:meth:`serial`, one pass) or in pieces by many (:func:`scan_lines` over
    :func:`split_bytes`, then :meth:`from_pieces`): the same index either way."""
    files: List[Path]  # the files that hold records (a limit may end before the last input)
    skip_header: bool
    stride: int
    n: int  # records
    file_of: np.ndarray  # (ceil(n / stride),) int32
    start: np.ndarray  # (ceil(n / stride),) int64 byte offsets
    number: np.ndarray  # (ceil(n / stride),) int64 1-based line numbers

    @classmethod
    def serial(cls, files: Sequence[Path], skip_header: bool, limit: Optional[int] = None,
               stride: int = INDEX_STRIDE, chunk: int = INDEX_CHUNK) -> "LineIndex":
        """Index ``files`` in this process, in one pass; with a limit, files after it are not opened."""
        found, per_file = [], [0] * len(files)
        for f, path in enumerate(files):
            if limit is not None and sum(per_file) >= limit:
                break
            _, per_file[f], cps = scan_lines(Path(path), 0, Path(path).stat().st_size, skip_header, 1, sum(per_file),
                                             stride, limit, chunk)
            found.append((f, cps))
        return cls._made(files, skip_header, stride, found, per_file, limit)

    @classmethod
    def from_pieces(cls, files: Sequence[Path], skip_header: bool, stride: int,
                    counts: Sequence[Tuple[int, int, int, int, int]],
                    checkpoints: Sequence[Tuple[int, List[Tuple[int, int, int]]]]) -> "LineIndex":
        """From every piece's counts (file, lo, hi, lines, records) and checkpoints (file, list) found by
        :func:`scan_lines` with the starts of :func:`piece_starts`."""
        per_file = [0] * len(files)
        for f, _, _, _, records in counts:
            per_file[f] += records
        return cls._made(files, skip_header, stride, checkpoints, per_file, None)

    @classmethod
    def _made(cls, files, skip_header, stride, checkpoints, per_file: List[int], limit: Optional[int]) -> "LineIndex":
        total = sum(per_file)
        n = total if limit is None else min(total, int(limit))
        rows = sorted((rec, f, start, line) for f, cps in checkpoints for rec, start, line in cps if rec < n)
        if [r[0] for r in rows] != list(range(0, n, stride)):
            raise RuntimeError(f"line index: entries {[r[0] for r in rows][:5]}... for {n} records of stride {stride}")
        used = len(files)  # with a limit: up to the file of the last record
        if limit is not None:
            used = int(np.searchsorted(np.cumsum(per_file), n, side="left")) + 1 if n else 0
        return cls(files=[Path(p) for p in files][:used], skip_header=skip_header, stride=stride, n=n,
                   file_of=np.array([r[1] for r in rows], dtype=np.int32),
                   start=np.array([r[2] for r in rows], dtype=np.int64),
                   number=np.array([r[3] for r in rows], dtype=np.int64))

    def lines(self, a: int, b: int):
        """(file, line number, text bytes) of records a .. b - 1, read from the index entry before a."""
        k = a // self.stride
        f, pos, line, rec = int(self.file_of[k]), int(self.start[k]), int(self.number[k]), k * self.stride
        nxt = -(-b // self.stride)  # the first entry at or after b: the read stops there
        while rec < b and f < len(self.files):
            end = int(self.start[nxt]) if nxt < len(self.start) and int(self.file_of[nxt]) == f else None
            with open(self.files[f], "rb") as fh:  # streamed: a limit may leave a long file unindexed after b
                fh.seek(pos)
                tail, last = b"", False
                while not last:
                    data = fh.read(INDEX_CHUNK if end is None else min(INDEX_CHUNK, end - pos))
                    pos += len(data)
                    if data:
                        pieces = (tail + data).split(b"\n")
                        tail = pieces.pop()  # the line that goes on in the next read
                    else:
                        pieces, last = [tail], True
                    for raw in pieces:
                        if raw.strip() and not (self.skip_header and line == 1):
                            if rec >= a:
                                yield f, line, raw
                            rec += 1
                            if rec >= b:
                                return
                        line += 1
            f, pos, line = f + 1, 0, 1


@dataclass
class _Lines:
    index: LineIndex
    parse: Callable[[str, int, str, Path], Record]  # (source, line, text, file) -> Record

    def records(self, a: int, b: int) -> List[Record]:
        files = self.index.files
        return [self.parse(str(files[f]), line, raw.decode("utf-8", errors="replace"), files[f])
                for f, line, raw in self.index.lines(a, b)]


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
        indexer: makes the :class:`LineIndex` of line-based inputs, ``indexer(files, skip_header, limit)``;
            default :meth:`LineIndex.serial` (this process reads the files). A parallel job passes one that
            indexes in pieces on every rank (hpc.featurize): every rank reading the whole input would multiply
            the file system's load.

    Line-based inputs (AFLOW JSONL, qm9pack CSV) are indexed by the byte offsets of every 256th record,
    streamed: no file is read whole, and the index holds 28 bytes per 256 records. Item-based inputs (one structure per file, AFLUX JSON lists, ASE files) hold one loader per
    record; frames of an ASE file (not a database) are parsed when the source is made.
    """

    def __init__(self, fmt: str, inputs: Sequence[Union[str, Path]] = (), limit: Optional[int] = None,
                 indexer: Optional[Callable[..., LineIndex]] = None):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown input format {fmt!r}; expected one of {list(FORMATS)}")
        self.fmt = fmt
        inputs = [Path(p) for p in inputs]
        for p in inputs:
            if not p.exists():
                raise FileNotFoundError(f"input {p} does not exist")
        self._lines: Optional[_Lines] = None
        self._items: Optional[list] = None  # (source, load) per record, for item-based formats: load() -> Record
        if fmt == "aflow":
            if not inputs:
                raise ConfigError("format 'aflow' needs at least one input file")
            files = expand(inputs)
            jsonl = [f for f in files if not _starts_with_bracket(f)]
            if len(jsonl) == len(files):
                self._lines = _Lines((indexer or LineIndex.serial)(files, False, limit), _parse_aflow_line)
            else:  # AFLUX JSON lists are loaded whole
                self._items = [item for f in files for item in _aflow_items(f)]
        elif fmt == "qm9":
            files = expand(inputs, "*.xyz")
            if files and all(str(f).endswith(".xyz") for f in files):
                self._items = [(str(f), functools.partial(_first, iter_qm9_xyz, f, k)) for k, f in enumerate(files, 1)]
            else:
                csvs = files or qm9pack_files()
                header = {f: next(csv.reader(open(f, newline="", encoding="utf-8"))) for f in csvs}
                self._lines = _Lines((indexer or LineIndex.serial)(csvs, True, limit),
                                     lambda src, line, text, f: _parse_csv_line(src, line, text, header[f]))
        elif fmt == "files":
            files = expand(inputs)
            self._items = [(str(f), functools.partial(_first, iter_files, f, k)) for k, f in enumerate(files, 1)]
        elif fmt == "ase":
            if not inputs:
                raise ConfigError("format 'ase' needs at least one input file")
            self._items = [item for f in expand(inputs) for item in _ase_items(f)]
        else:  # prototypes: 288 small structures, parsed once
            self._items = [(r.source, functools.partial(_same, r)) for r in iter_prototypes(inputs[0] if inputs else None)]
        self.sources = sorted({str(s) for s in (self._lines.index.files if self._lines else [i[0] for i in self._items])})
        total = self._lines.index.n if self._lines is not None else len(self._items)
        self.n = total if limit is None else min(total, int(limit))

    def __len__(self) -> int:
        return self.n

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


