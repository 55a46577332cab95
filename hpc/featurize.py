"""Featurization scattered over MPI ranks into one HDF5 file: resumable and bad-input-safe.

The job (every rank runs :func:`run_featurize` with the same arguments):

1. Every rank indexes a share of the input's bytes (:func:`index_in_pieces`: the byte offset of every
   block's first record, streamed, no parsing) and the ranks exchange the entries (28 bytes per block);
   item-based inputs are listed by every rank.
2. The records are cut into fixed blocks (:func:`hpc.partition.pending_blocks`); ranks take the next
   unfinished block from a job-wide counter (:class:`hpc.comm.WorkCounter`), so cheap and expensive
   structures balance themselves. Each finished block is written as a shard file
   ``OUT.h5.parts/block-<start>-<stop>.h5`` (written as ``.part``, then renamed): a killed job loses at
   most the blocks in flight, and a restarted one skips the shards that exist.
3. The shards are concatenated in dataset order (:func:`_merge`): every rank reads the headers of a share
   of the shards, then a contiguous, size-balanced run of shards in bounded groups, and compresses its whole
   chunks; one writer per node (``merge_writers``) writes its node's chunks unchanged (direct chunk writes)
   with the rows of chunks shared by two ranks. One writer writes ``OUT.h5.part``; several write the segments
   ``OUT.h5.segments/segment-K.h5`` and rank 0 a ``OUT.h5.part`` of virtual datasets over them. The file is
   renamed to ``OUT.h5`` when complete and the shards are removed.

Bad records (unparsable, invalid structures) are written with status failed and a reason in /failures,
and logged by rank 0; they never stop the job. A stop request (``stop()`` true on some rank: SIGUSR1 or
SIGTERM from SLURM) lets every rank finish its current block and leave before the merge; the summary then
says ``interrupted`` and the same command continues from the finished blocks.
"""
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cloudvox.config import validate_featurize
from cloudvox.errors import ConfigError
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.errors import UserError
from cloudvox.featurefile import (CHUNK_BYTES, COMPRESSED, DONE, FAILED, FAILURES, FIXED, FORMAT_VERSION, GZIP_LEVEL, RAGGED,
                               STORE_ITEMS, FeatureFile, deflate, featurize_block, prop_unit, root_attributes,
                               write_features)
from cloudvox.io.sources import LineIndex, Source, piece_starts, scan_lines, split_bytes
from cloudvox.progress import Progress

from .comm import WorkCounter
from .h5mpi import open_file
from .partition import blockdist, pending_blocks, weighted_split, writer_groups

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class JobError(UserError, RuntimeError):
    """A refusal before any work (bad parameters, unwritable output, mismatching existing output)."""


@dataclass
class FeaturizeJob:
    """What to featurize and how: a featurize config validated by :mod:`cloudvox.config` (where the defaults
    are), see :meth:`from_config`."""
    inputs: List[str]
    format: str
    output: str
    descriptor: Dict[str, object]  # ReciprocalVoxelizer keyword arguments
    store: Tuple[str, ...]
    block_size: int
    limit: Optional[int]
    overwrite: bool
    strict: bool
    collective_timeout: float  # seconds (hpc/watchdog.py)
    progress_every: float  # seconds between progress lines off a terminal
    shard_compression: Optional[str] = None  # the shards' filter (None or "lzf"), see FeaturizeConfig
    merge_buffer: int = 64 << 20  # bytes of shards (uncompressed) a merging rank holds at once
    merge_writers: int = 0  # 0: one writer per node; N: N writers (hpc.partition.writer_groups)
    command: str = ""

    @classmethod
    def from_config(cls, raw: Dict[str, object], command: str = "") -> "FeaturizeJob":
        """From a featurize config (YAML keys, see cloudvox.config.FeaturizeConfig); raises ConfigError."""
        cfg = validate_featurize(raw)
        if not cfg["output"] or not cfg["format"]:
            raise ConfigError("featurize needs an output file and an input format: --output OUT.h5 --format FORMAT "
                              "(or output: / format: in the config)")
        return cls(inputs=[str(p) for p in cfg["input"]], format=cfg["format"], output=str(cfg["output"]),
                   descriptor=cfg["descriptor"], store=tuple(cfg["store"]), block_size=int(cfg["block_size"]),
                   limit=cfg["limit"], overwrite=bool(cfg["overwrite"]), strict=bool(cfg["strict"]),
                   shard_compression=None if cfg["shard_compression"] == "none" else cfg["shard_compression"],
                   merge_buffer=int(float(cfg["merge_buffer_mb"]) * 2 ** 20), merge_writers=int(cfg["merge_writers"]),
                   collective_timeout=float(cfg["collective_timeout"]), progress_every=float(cfg["progress_every"]),
                   command=command)

    def voxelizer(self) -> ReciprocalVoxelizer:
        d = dict(self.descriptor)
        d["species"] = tuple(d["species"]) if d.get("species") else None
        if d.get("properties"):
            d["properties"] = tuple(d["properties"])
        else:
            d.pop("properties", None)
        return ReciprocalVoxelizer(**d)

    def identity(self, source: Source) -> Dict[str, object]:
        """Everything that must match for existing shards or an existing output to be reused."""
        return dict(descriptor=self.voxelizer().params, store=sorted(self.store), format=self.format,
                    records=len(source), limit=self.limit, input=source.fingerprint(), layout=FORMAT_VERSION)


# --------------------------------------------------------------------------------------------------------
def run_featurize(job: FeaturizeJob, comm, stop: Callable[[], bool] = lambda: False) -> Dict[str, object]:
    """Run the job on every rank of ``comm``; returns the run summary (the same dict on every rank).

    ``stop``: polled before each block; once true on any rank, every rank leaves after its current block,
    the merge is skipped and the summary has ``interrupted: True`` (the finished blocks are kept)."""
    t0 = time.perf_counter()
    rank, size = comm.Get_rank(), comm.Get_size()
    unknown = set(job.store) - set(STORE_ITEMS)
    if unknown:
        raise JobError(f"unknown store item(s) {sorted(unknown)}; choose from {list(STORE_ITEMS)}")
    if job.block_size < 1:
        raise JobError(f"block_size must be >= 1, got {job.block_size}")
    try:
        vox = job.voxelizer()
    except ConfigError as e:
        raise JobError(f"invalid descriptor parameters: {e}") from None
    try:  # line-based input is indexed in pieces by every rank (hpc.featurize.index_in_pieces)
        source = Source(job.format, job.inputs, job.limit, indexer=partial(index_in_pieces, comm, job.block_size))
    except (FileNotFoundError, UserError) as e:  # the same inputs on every rank: every rank refuses them
        raise JobError(str(e)) from None
    output = Path(job.output)
    parts = output.with_name(output.name + ".parts")
    identity = job.identity(source)

    verdict = _agree(comm, lambda: _prepare(job, output, parts, identity))
    if verdict == "complete":
        log.info("%s is already complete with these parameters: nothing to do", output)
        return _summary_from_file(output, time.perf_counter() - t0, size)

    done = _agree(comm, lambda: [_range_of(p) for p in sorted(parts.glob("block-*.h5"))])
    pending = pending_blocks(len(source), job.block_size, done)
    if rank == 0:
        log.info("featurizing %d records of %s on %d rank(s): %d blocks of %d, %d already done",
                 len(source), ", ".join(source.sources) or job.format, size, len(pending) + len(done),
                 job.block_size, len(done))
    attrs = root_attributes(vox, source.sources, job.format, job.command)
    busy, stopped = _featurize_blocks(comm, source, vox, job, pending, parts, attrs, stop)
    if any(comm.allgather(stopped)):
        finished = len(list(parts.glob("block-*.h5")))
        if rank == 0:
            log.warning("stopped on request: %d of %d blocks finished (in %s); run the same command to continue",
                        finished, len(pending) + len(done), parts)
        return dict(output=str(output), interrupted=True, blocks_finished=finished,
                    blocks=len(pending) + len(done), wall_seconds=time.perf_counter() - t0, ranks=size)

    t_merge = time.perf_counter()
    merge = _merge(comm, job, parts, output, attrs, identity)
    merge_time = time.perf_counter() - t_merge
    busy_all = comm.allgather(busy)
    summary = _summary_from_file(output, time.perf_counter() - t0, size) if rank == 0 else None
    if rank == 0:
        mean = float(np.mean(busy_all))
        summary.update(load_imbalance=(max(busy_all) / mean) if mean > 0 else 1.0, busy_seconds=busy_all,
                       merge_seconds=merge_time, merge=merge, blocks_computed=len(pending))
        _log_summary(summary, output)
    return comm.bcast(summary, root=0)


def index_in_pieces(comm, stride: int, files: Sequence[Path], skip_header: bool, limit: Optional[int]) -> LineIndex:
    """The :class:`LineIndex` of line-based input files (every ``stride``-th record), made by every rank of
    ``comm`` for a near-equal share of the bytes: one pass counts each share's lines and records, a second
    finds the entries in it; only the counts and the entries travel (28 bytes per ``stride`` records), so
    no rank reads more than its share and none holds an entry per record. With a limit, rank 0 indexes up
    to it alone (a short read)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if limit is not None or size == 1:
        return _agree(comm, lambda: LineIndex.serial(files, skip_header, limit, stride))
    sizes = [Path(f).stat().st_size for f in files]
    mine = split_bytes(sizes, size, rank)
    counts = [(f, lo, hi, *scan_lines(Path(files[f]), lo, hi, skip_header)[:2]) for f, lo, hi in mine]
    every = sorted(c for part in comm.allgather(counts) for c in part)
    starts = dict(zip([c[:2] for c in every], piece_starts(every)))
    found = [(f, scan_lines(Path(files[f]), lo, hi, skip_header, *starts[(f, lo)], stride)[2]) for f, lo, hi in mine]
    return LineIndex.from_pieces(files, skip_header, stride, every, [x for part in comm.allgather(found) for x in part])


def _agree(comm, fn):
    """Run fn on rank 0 and give every rank its result, or raise its JobError on every rank."""
    result, error = None, None
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except JobError as e:
            error = str(e)
    result, error = comm.bcast((result, error), root=0)
    if error is not None:
        raise JobError(error)
    return result


def _prepare(job: FeaturizeJob, output: Path, parts: Path, identity: Dict) -> str:
    """Rank 0: check the output path and any earlier run; set up the shard folder. Returns a verdict."""
    folder = output.parent if str(output.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"cannot create the output folder {folder}: {e.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JobError(f"output folder {folder} is not writable")
    if output.exists() and not job.overwrite:
        try:
            existing = json.loads(str(FeatureFile(output).attrs().get("job", "{}")))
        except Exception as e:  # unreadable, or not a feature file
            raise JobError(f"{output} exists and is not a readable cloudvox feature file ({e}); "
                           "use --overwrite to replace it") from None
        if existing != identity:
            raise JobError(f"{output} exists, made with other parameters or input; use --overwrite to replace it. "
                           f"existing: {_diff(existing, identity)}")
        if parts.exists():
            shutil.rmtree(parts)
        return "complete"
    if job.overwrite:
        for folder in (parts, output.with_name(output.name + SEGMENTS)):
            if folder.exists():
                shutil.rmtree(folder)
        if output.exists():
            output.unlink()
    manifest = parts / MANIFEST
    if parts.exists() and manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous.get("identity") != identity or previous.get("block_size") != job.block_size:
            raise JobError(f"{parts} holds an unfinished run with other parameters or input; use --overwrite "
                           f"to discard it. differences: {_diff(previous.get('identity', {}), identity)}")
        log.info("resuming the run in %s", parts)
        return "resume"
    parts.mkdir(exist_ok=True)
    tmp = manifest.with_suffix(".part")
    tmp.write_text(json.dumps(dict(identity=identity, block_size=job.block_size), indent=1))
    os.replace(tmp, manifest)
    return "new"


def _diff(a: Dict, b: Dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys) or "none"


def _range_of(path: Path) -> Tuple[int, int]:
    _, a, b = path.stem.split("-")
    return int(a), int(b)


def _featurize_blocks(comm, source: Source, vox, job, pending, parts: Path, attrs, stop) -> Tuple[float, bool]:
    """Take blocks from the job-wide counter until none are left or ``stop()``; returns this rank's busy
    seconds and whether it stopped early."""
    counter = WorkCounter(comm)
    rank = comm.Get_rank()
    bar = Progress(len(pending), "featurize", unit="blocks", every_s=job.progress_every, enabled=rank == 0 and bool(pending))
    progress = getattr(comm, "progress", lambda: None)  # a WatchedComm: a block done is progress
    busy, stopped, done, failures = 0.0, False, 0, 0
    try:
        while True:
            if stop():
                stopped = True
                break
            k = counter.next(done, failures)
            if rank == 0:
                bar.set(*counter.totals())
            if k >= len(pending):
                break
            a, b = pending[k]
            t = time.perf_counter()
            block = featurize_block(source.records(a, b), a, vox, source.sources, job.store)
            write_features(parts / f"block-{a:010d}-{b:010d}.h5", block, attrs, compression=job.shard_compression)
            busy += time.perf_counter() - t
            done += 1
            failures += len(block.failures["failures/index"])
            progress()
    finally:
        counter.free()  # collective: every rank has left the loop
        if rank == 0 and not stopped:
            bar.set(*counter.totals())
        bar.close()
    return busy, stopped


# --------------------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------------------
def _shard_header(path: Path) -> Dict[str, object]:
    import h5py
    with h5py.File(path, "r") as f:
        h = dict(path=str(path), start=int(f.attrs["block_start"]), size=int(f["structures/status"].shape[0]),
                 failures=int(f["failures/index"].shape[0]),
                 ragged={name: int(f[name].shape[0]) for name in RAGGED},
                 strings={name: int(f[name].dtype.itemsize) for name in list(FIXED) + list(FAILURES)
                          if f[name].dtype.kind == "S"},
                 props=sorted(f["structures/props"].keys()) if "structures/props" in f else [],
                 meta={k: int(v.dtype.itemsize) for k, v in f["structures/meta"].items()} if "structures/meta" in f else {},
                 elements=json.loads(f.attrs["elements"]))
        h["bytes"] = sum(int(f[n].shape[0]) * int(np.prod(f[n].shape[1:], dtype=np.int64)) * f[n].dtype.itemsize
                         for n in RAGGED) + 1  # uncompressed: what the merge holds in memory
        done = f["structures/status"][...] == DONE
        h["ids"] = _id_hashes(f["structures/id"][...])[done]  # (done,) uint64, for the duplicate check
        h["id_rows"] = np.flatnonzero(done).astype(np.int64)
    return h


def _id_hashes(ids: np.ndarray) -> np.ndarray:
    """(S,) uint64 hashes of fixed-length id strings (8 bytes per structure for the duplicate check)."""
    return np.array([int.from_bytes(hashlib.blake2b(x, digest_size=8).digest(), "little") for x in ids.tolist()],
                    dtype=np.uint64)


def _duplicates(headers: List[Dict]) -> List[Tuple[int, int]]:
    """(row, first row) of every good structure whose id an earlier good structure already has, in file order.

    Memory: the 8-byte hashes of the good structures and one sorted copy (16 bytes per structure, freed on
    return); only the rows of repeated hashes are formed. Hash matches are confirmed against the stored ids
    (no false positives from hash collisions)."""
    if not headers:
        return []
    keys = np.sort(np.concatenate([h["ids"] for h in headers]))
    repeated = np.unique(keys[1:][keys[1:] == keys[:-1]])
    del keys
    if not len(repeated):
        return []
    rows = np.concatenate([h["start"] + h["id_rows"][np.isin(h["ids"], repeated)] for h in headers])
    read_id = _shard_values(headers)["id"]
    first: Dict[str, int] = {}
    out = []
    for r in np.sort(rows).tolist():  # file order: the first row of each id is met first
        sid = read_id(r)
        if sid in first:
            out.append((r, first[sid]))
        else:
            first[sid] = r
    return out


def _merge(comm, job: FeaturizeJob, parts: Path, output: Path, attrs: Dict, identity: Dict) -> Dict[str, object]:
    """Concatenate the shards into OUT.h5; returns the merge's figures (on rank 0; None elsewhere).

    Every rank reads a contiguous, size-balanced run of shards (in groups of at most ``merge_buffer`` bytes)
    and compresses their whole chunks; a writer writes them unchanged (HDF5 direct chunk writes, serial h5py).
    The ranks form writer groups (:func:`hpc.partition.writer_groups`: by default one per node), each the
    writer of one contiguous run of rows of every dataset, its *segment*. With one group the segment is the
    file itself (``OUT.h5.part``, renamed ``OUT.h5``). With several, each writer writes
    ``OUT.h5.segments/segment-K.h5`` and rank 0 writes ``OUT.h5``: the root attributes and every dataset as an
    HDF5 virtual dataset over the segments, so the write side grows with the nodes and no chunk crosses the
    network. Parallel HDF5's collective writes of compressed datasets, the other way to many writers, failed at
    a million structures on this stack (HDF5 1.10.8 and Open MPI 4.1.4: OMPIO "Bad address", a ROMIO segfault
    in the metadata cache's sync point, and with the 1.8 file format a stall in v1 B-tree inserts)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    t = time.perf_counter()
    headers, duplicates = _headers(comm, parts)
    headers_seconds = time.perf_counter() - t
    plan = _layout_plan(headers, sum(h["size"] for h in headers), extra_failures=len(duplicates))  # on every rank
    hosts = comm.allgather(socket.gethostname())
    groups = writer_groups(hosts, job.merge_writers)
    slots = dict(zip([r for g in groups for r in g], weighted_split([h["bytes"] for h in headers], size)))
    segments = _segments(headers, plan, [(slots[g[0]][0], slots[g[-1]][1]) for g in groups], len(duplicates))
    k = next(i for i, g in enumerate(groups) if rank in g)
    rounds = max(len(_buffer_groups(headers, *slots[r], job.merge_buffer)) for r in range(size))
    part_path = output.with_name(output.name + ".part")
    path = part_path if len(groups) == 1 else parts / SEGMENTS / _segment_name(k)
    root = dict(attrs, **_root_attributes(headers, identity, job))
    stats = _write_segment(comm, job, headers, duplicates, segments[k], groups[k], hosts, slots[rank], rounds, path,
                           root, whole=len(groups) == 1)
    stats = comm.gather(stats, root=0)
    figures = None
    if rank == 0:
        t = time.perf_counter()
        final_segments = output.with_name(output.name + SEGMENTS)
        if final_segments.exists():  # an earlier run's
            shutil.rmtree(final_segments)
        if len(groups) > 1:
            with open_file(part_path, "w") as f:
                f.attrs.update(root)
                _create_virtual_layout(f, plan, segments, output.name + SEGMENTS)
            os.replace(parts / SEGMENTS, final_segments)
        os.replace(part_path, output)
        shutil.rmtree(parts, ignore_errors=True)
        figures = dict(writers=len(groups), writer_ranks=[g[0] for g in groups], writer_hosts=[hosts[g[0]] for g in groups],
                       write_seconds=[stats[g[0]]["write_seconds"] for g in groups],
                       written_bytes=[stats[g[0]]["bytes"] for g in groups],
                       from_other_nodes_bytes=[stats[g[0]]["remote_bytes"] for g in groups],
                       headers_seconds=headers_seconds, shards=len(headers),
                       prep_seconds=[s["prep_seconds"] for s in stats], finish_seconds=time.perf_counter() - t)
        log.info("merged %d shards: %d writer(s) (%s), %.1f MB written, slowest writer %.1f s", len(headers),
                 len(groups), ", ".join(figures["writer_hosts"]), sum(figures["written_bytes"]) / 1e6,
                 max(figures["write_seconds"]))
    comm.Barrier()
    return figures


def _headers(comm, parts: Path) -> Tuple[List[Dict], List[Tuple[int, int]]]:
    """Every shard's header (every rank reads a share: a file open each) and the duplicate ids (found on
    rank 0, whose hashes stay there); the same on every rank."""
    rank, size = comm.Get_rank(), comm.Get_size()
    shards = sorted(parts.glob("block-*.h5"), key=_range_of)
    found = comm.gather([_shard_header(p) for p in shards[slice(*blockdist(len(shards), size, rank))]], root=0)

    def on_root():
        shutil.rmtree(parts / SEGMENTS, ignore_errors=True)  # an interrupted merge's (maybe of more writers)
        headers = [h for part in found for h in part]
        dups = _duplicates(headers)
        for h in headers:
            h.pop("ids"), h.pop("id_rows")
        return headers, dups
    return _agree(comm, on_root)


def _write_segment(comm, job: FeaturizeJob, headers: List[Dict], duplicates: List[Tuple[int, int]], seg: Dict,
                   group: List[int], hosts: List[str], slot: Tuple[int, int], rounds: int, path: Path,
                   root: Dict, whole: bool) -> Dict[str, float]:
    """One writer group's side of the merge: every member prepares (reads, compresses) its slot of shards
    round by round and sends the operations to the group's writer (its first rank), which writes the segment
    ``path`` (with the root attributes ``root`` when the segment is the ``whole`` file). Returns this rank's
    seconds and bytes."""
    rank, writer, (A, B) = comm.Get_rank(), group[0], seg["shards"]
    mine = _buffer_groups(headers, *slot, job.merge_buffer)
    prep = _ChunkPrep(seg["plan"])
    row0, row1 = seg["rows"]["structures/status"]
    failed_rows = [row - row0 for row, _ in duplicates if row0 <= row < row1]
    bases = {name: seg["rows"][name][0] for name in RAGGED}
    stats = dict(prep_seconds=0.0, write_seconds=0.0, bytes=0, remote_bytes=0)
    f = sink = None
    if rank == writer and seg["nonempty"]:
        path.parent.mkdir(exist_ok=True)
        f = open_file(path, "w")
        if whole:
            f.attrs.update(root)
        _create_layout(f, seg["plan"])
        sink = _ChunkSink(f, seg["plan"])
    try:
        for g in range(rounds + 1):  # the last round: what waited for the rest of its chunk
            t = time.perf_counter()
            if g < rounds:
                a, b = mine[g] if g < len(mine) else (A, A)
                ops = _write_rows(prep, headers[A:B], (a - A, b - A), _load_shards(headers[a:b]), failed_rows, bases,
                                  seg["tail"])
            else:
                ops = prep.flush()
            stats["prep_seconds"] += time.perf_counter() - t
            if rank != writer:
                comm.send(ops, dest=writer, tag=g)
                continue
            for r in group:
                got = ops if r == writer else comm.recv(source=r, tag=g)
                t = time.perf_counter()
                nbytes = _apply(sink, got)
                stats["write_seconds"] += time.perf_counter() - t
                stats["bytes"] += nbytes
                stats["remote_bytes"] += nbytes if hosts[r] != hosts[writer] else 0
        if sink is not None:
            t = time.perf_counter()
            sink.finish()
            if seg["tail"]:
                fail0 = sum(h["failures"] for h in headers[A:B])
                _record_duplicates(f, duplicates, _shard_values(headers), fail0, json.loads(str(root["input"])))
            stats["write_seconds"] += time.perf_counter() - t
    finally:
        if f is not None:
            f.close()
    return stats


SEGMENTS = ".segments"  # OUT.h5.segments/: the segment files of a file written by several writers


def _segment_name(k: int) -> str:
    return f"segment-{k:04d}.h5"


def _root_attributes(headers: List[Dict], identity: Dict, job: FeaturizeJob) -> Dict[str, str]:
    """The root attributes the shards do not carry: the species of all of them, the job's identity, the store."""
    species = sorted({e for h in headers for e in h["elements"]})
    return dict(species=json.dumps(species), job=json.dumps(identity), store=json.dumps(sorted(job.store)))


def _segments(headers: List[Dict], plan: Dict[str, Dict], shard_ranges: List[Tuple[int, int]],
              n_duplicates: int) -> List[Dict]:
    """Each writer group's segment: its shards (A, B), its rows (start, stop) of every dataset of ``plan``,
    its own plan (shapes of its rows, chunks to match) and whether it is the tail (the segment of the last
    shard, which also holds the duplicate-id failure rows and the closing offsets). Pure: the same on
    every rank."""
    sizes = np.array([h["size"] for h in headers], dtype=np.int64)
    fails = np.array([h["failures"] for h in headers], dtype=np.int64)
    ragged = {name: np.array([h["ragged"][name] for h in headers], dtype=np.int64) for name in RAGGED}
    tail = max([k for k, (a, b) in enumerate(shard_ranges) if b > a], default=0)
    out = []
    for k, (a, b) in enumerate(shard_ranges):
        extra = 1 if k == tail else 0
        per_structure = (int(sizes[:a].sum()), int(sizes[:b].sum()))
        rows = {}
        for name in plan:
            if name in FAILURES:
                rows[name] = (int(fails[:a].sum()), int(fails[:b].sum()) + extra * n_duplicates)
            elif name in RAGGED:
                rows[name] = (int(ragged[name][:a].sum()), int(ragged[name][:b].sum()))
            elif name.endswith("_offsets") and name[:-len("_offsets")] in RAGGED:
                rows[name] = (per_structure[0], per_structure[1] + extra)
            else:
                rows[name] = per_structure
        seg_plan = {}
        for name, d in plan.items():
            shape = (rows[name][1] - rows[name][0],) + tuple(d["shape"][1:])
            seg_plan[name] = dict(d, shape=shape, opts=_chunked(shape, d["dtype"], name))
        out.append(dict(shards=(a, b), rows=rows, plan=seg_plan, tail=k == tail,
                        nonempty=any(stop > start for start, stop in rows.values())))
    for name, d in plan.items():  # the segments tile every dataset
        covered = sorted(s["rows"][name] for s in out if s["rows"][name][1] > s["rows"][name][0])
        if sum(b - a for a, b in covered) != d["shape"][0] or any(x[1] != y[0] for x, y in zip(covered, covered[1:])):
            raise RuntimeError(f"merge: segments do not tile {name}: {covered} of {d['shape'][0]}")
    return out


def _create_virtual_layout(f, plan: Dict[str, Dict], segments: List[Dict], folder: str) -> None:
    """Every dataset of ``plan`` as a virtual dataset over the segment files in ``folder`` (a path relative to
    the file: HDF5 looks for it beside the file, wherever the two are moved together)."""
    import h5py
    files = {k: f"{folder}/{_segment_name(k)}" for k, s in enumerate(segments) if s["nonempty"]}
    for name, d in plan.items():
        if d["shape"][0] == 0:
            f.create_dataset(name, shape=d["shape"], dtype=d["dtype"])
        else:
            layout = h5py.VirtualLayout(shape=d["shape"], dtype=d["dtype"])
            for k, path in files.items():
                a, b = segments[k]["rows"][name]
                if b > a:
                    layout[a:b] = h5py.VirtualSource(path, name, shape=segments[k]["plan"][name]["shape"])
            f.create_virtual_dataset(name, layout)
        if d["unit"] is not None:
            f[name].attrs["unit"] = d["unit"]
    f.attrs["segments"] = json.dumps(list(files.values()))


def _apply(sink, ops: List) -> int:
    """Apply a rank's write operations at its writer; returns their bytes (compressed chunks as stored)."""
    if sink is None:
        if ops:
            raise RuntimeError("merge: rows for a segment without rows")
        return 0
    sink.apply(ops)
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for _, _, _, p in ops)


def _buffer_groups(headers: List[Dict], a: int, b: int, limit: int) -> List[Tuple[int, int]]:
    """Shards a..b cut into contiguous groups of at most ``limit`` uncompressed bytes (at least one shard)."""
    out, start, held = [], a, 0
    for k in range(a, b):
        if k > start and held + headers[k]["bytes"] > limit:
            out.append((start, k))
            start, held = k, 0
        held += headers[k]["bytes"]
    if b > start:
        out.append((start, b))
    return out


def _record_duplicates(f, duplicates: List[Tuple[int, int]], ids: Dict, fail0: int, sources: List[str]) -> None:
    """A failure row for each later structure with an id seen before (its status is written failed by
    :func:`_write_rows`), after the shards' rows: by the writer of the tail segment."""
    if not duplicates:
        return
    rows = {name: [] for name in ("index", "id", "source", "line", "reason")}
    for row, first in duplicates:
        sid, src, line = ids["id"](row), ids["source"](row), ids["line"](row)
        first_src, first_line = ids["source"](first), ids["line"](first)
        where = f"{sources[first_src] if 0 <= first_src < len(sources) else '?'}:{first_line}"
        reason = f"structure {sid}: duplicate id, already featurized from {where} (record {first}); not used"
        for name, value in (("index", row), ("id", sid.encode()), ("source", src), ("line", line),
                            ("reason", reason.encode()[:f["failures/reason"].dtype.itemsize])):
            rows[name].append(value)
    for name, values in rows.items():  # the duplicates' rows follow the shards' failures
        f[f"failures/{name}"][fail0:fail0 + len(values)] = np.array(values, dtype=f[f"failures/{name}"].dtype)


def _chunked(shape, dtype, name: str) -> Dict[str, object]:
    if shape[0] == 0:
        return {}
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = int(max(1, min(shape[0], CHUNK_BYTES // max(row, 1))))
    opts: Dict[str, object] = dict(chunks=(rows,) + tuple(shape[1:]))
    if name in COMPRESSED:
        opts.update(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
    return opts


DUPLICATE_REASON_BYTES = 200  # room in /failures/reason for the duplicate-id message


def _layout_plan(headers: List[Dict], n: int, extra_failures: int = 0) -> Dict[str, Dict]:
    """Every dataset of the final file: name -> shape, dtype, creation options (chunks, filters), unit."""
    strings = {}
    for h in headers:
        for name, width in h["strings"].items():
            strings[name] = max(strings.get(name, 1), width)
    if extra_failures:
        strings["failures/reason"] = max(strings.get("failures/reason", 1), DUPLICATE_REASON_BYTES)
        strings["failures/id"] = max(strings.get("failures/id", 1), strings.get("structures/id", 1))
    n_fail = sum(h["failures"] for h in headers) + extra_failures
    plan: Dict[str, Dict] = {}

    def add(name, shape, dtype, unit=None):
        plan[name] = dict(shape=shape, dtype=np.dtype(dtype), opts=_chunked(shape, dtype, name), unit=unit)
    for table, rows in ((FIXED, n), (FAILURES, n_fail)):
        for name, (dtype, tail) in table.items():
            add(name, (rows,) + tail, np.dtype(f"S{strings.get(name, 1)}") if dtype == "str" else dtype)
    for p in sorted({p for h in headers for p in h["props"]}):
        add(f"structures/props/{p}", (n,), np.float64, unit=prop_unit(p))
    meta = {}
    for h in headers:
        for name, width in h["meta"].items():
            meta[name] = max(meta.get(name, 1), width)
    for name in sorted(meta):
        add(f"structures/meta/{name}", (n,), np.dtype(f"S{meta[name]}"))
    for name, (dtype, tail) in RAGGED.items():
        add(name, (sum(h["ragged"][name] for h in headers),) + tail, dtype)
        add(f"{name}_offsets", (n + 1,), np.int64)
    return plan


def _create_layout(f, plan: Dict[str, Dict]) -> None:
    for name, d in plan.items():
        ds = f.create_dataset(name, shape=d["shape"], dtype=d["dtype"], **d["opts"])
        if d["unit"] is not None:
            ds.attrs["unit"] = d["unit"]


def _shard_values(headers: List[Dict]) -> Dict:
    """Readers of single rows of id, source and line from the shards (for the duplicate records)."""
    starts = np.array([h["start"] for h in headers])

    def shard_value(name):
        def read(row: int):
            import h5py
            h = headers[int(np.searchsorted(starts, row, side="right")) - 1]
            with h5py.File(h["path"], "r") as g:
                v = g[name][row - h["start"]]
            return v.decode() if isinstance(v, bytes) else int(v)
        return read
    return {k: shard_value(f"structures/{k}") for k in ("id", "source", "line")}


def _load_shards(headers: Sequence[Dict]) -> Dict[str, List[np.ndarray]]:
    """Every dataset of a run of shards, as lists of per-shard arrays."""
    import h5py
    out: Dict[str, List[np.ndarray]] = {}
    for h in headers:
        with h5py.File(h["path"], "r") as f:
            names = list(FIXED) + list(FAILURES) + [n for n in RAGGED] + [f"{n}_offsets" for n in RAGGED]
            names += [f"structures/props/{p}" for p in f.get("structures/props", {})]
            names += [f"structures/meta/{m}" for m in f.get("structures/meta", {})]
            for name in names:
                out.setdefault(name, []).append((h, f[name][...]))
    return out


def _deflate(rows: np.ndarray, chunk_rows: int) -> bytes:
    """One chunk as HDF5 stores it with shuffle + gzip: padded to the chunk's rows with the fill value (0),
    bytes shuffled by element size, then deflated (:func:`cloudvox.featurefile.deflate`)."""
    if len(rows) == chunk_rows:
        full = np.ascontiguousarray(rows)
    else:
        full = np.zeros((chunk_rows,) + rows.shape[1:], dtype=rows.dtype)
        full[:len(rows)] = rows
    shuffled = full.view(np.uint8).reshape(-1, rows.dtype.itemsize).T.tobytes()
    return deflate(shuffled)


class _ChunkPrep:
    """One rank's side of the merge: its rows of every dataset, in order, turned into write operations for
    rank 0: ``("rows", name, start, array)`` for uncompressed datasets; for compressed ones each whole chunk
    compressed here, ``("chunk", name, k, bytes)``, and the rows of a chunk shared with the neighbouring
    rank's range, ``("piece", name, start, array)``. Rows that do not fill their last chunk wait for the next
    group (:meth:`flush` passes what is left as pieces)."""

    def __init__(self, plan: Dict[str, Dict]):
        self.plan = plan
        self.pending: Dict[str, Tuple[int, List[np.ndarray]]] = {}

    def write(self, name: str, start: int, rows: Optional[np.ndarray], ops: List) -> None:
        if rows is None or not len(rows):
            return
        d = self.plan[name]
        if "compression" not in d["opts"]:
            ops.append(("rows", name, start, rows))
            return
        c, end_all = d["opts"]["chunks"][0], d["shape"][0]
        s0, parts = self.pending.get(name, (start, []))
        parts = parts + [rows]
        end = s0 + sum(len(p) for p in parts)
        cut = end if end == end_all else (end // c) * c
        if cut <= s0:
            self.pending[name] = (s0, parts)
            return
        rows_all = np.concatenate(parts) if len(parts) > 1 else parts[0]
        pos = s0
        while pos < cut:
            k = pos // c
            stop = min((k + 1) * c, cut)
            piece = rows_all[pos - s0:stop - s0]
            if pos % c == 0 and (stop == (k + 1) * c or stop == end_all):
                ops.append(("chunk", name, k, _deflate(piece, c)))
            else:
                ops.append(("piece", name, pos, piece))
            pos = stop
        rest = rows_all[cut - s0:]
        self.pending[name] = (cut, [rest] if len(rest) else [])

    def flush(self) -> List:
        ops = []
        for name, (s0, parts) in self.pending.items():
            if parts:
                ops.append(("piece", name, s0, np.concatenate(parts)))
        self.pending = {}
        return ops


class _ChunkSink:
    """Rank 0's side: applies the operations of every rank to the open file; pieces of a chunk are collected
    until the chunk is whole, then compressed and written like the others."""

    def __init__(self, f, plan: Dict[str, Dict]):
        self.f, self.plan = f, plan
        self.pieces: Dict[Tuple[str, int], List[Tuple[int, np.ndarray]]] = {}

    def apply(self, ops: List) -> None:
        for kind, name, where, payload in ops:
            dset = self.f[name]
            if kind == "rows":
                dset[where:where + len(payload)] = payload
            elif kind == "chunk":
                self._write_chunk(name, where, payload)
            else:
                c = self.plan[name]["opts"]["chunks"][0]
                k = where // c
                got = self.pieces.setdefault((name, k), [])
                got.append((where, payload))
                need = min(c, self.plan[name]["shape"][0] - k * c)
                if sum(len(p) for _, p in got) == need:
                    self._assemble(name, k)

    def _write_chunk(self, name: str, k: int, blob: bytes) -> None:
        c = self.plan[name]["opts"]["chunks"][0]
        self.f[name].id.write_direct_chunk((k * c,) + (0,) * (len(self.plan[name]["shape"]) - 1), blob)

    def _assemble(self, name: str, k: int) -> None:
        got = sorted(self.pieces.pop((name, k)), key=lambda x: x[0])
        c = self.plan[name]["opts"]["chunks"][0]
        self._write_chunk(name, k, _deflate(np.concatenate([p for _, p in got]), c))

    def finish(self) -> None:
        if self.pieces:  # every row belongs to some rank: a chunk left incomplete is a bug
            raise RuntimeError(f"merge: incomplete chunks {sorted(self.pieces)[:5]}")


def _write_rows(prep: _ChunkPrep, headers: List[Dict], span: Tuple[int, int], data: Dict,
                failed_rows: Sequence[int] = (), bases: Optional[Dict[str, int]] = None, closing: bool = True) -> List:
    """The write operations of the contiguous run of shards ``span`` of ``headers`` (a segment's shards; rows
    are counted from its first) for every dataset. ``failed_rows``: rows whose status is written as failed
    (duplicate ids); ``bases``: per ragged dataset, the segment's first row in the whole file (the offsets
    stored are the file's); ``closing``: the segment ends the file (it holds the closing offset)."""
    plan = prep.plan
    ops: List = []
    row0 = sum(h["size"] for h in headers[:span[0]])
    fail0 = sum(h["failures"] for h in headers[:span[0]])
    mine = headers[span[0]:span[1]]

    def rows_of(name, fill_dtype, tail=()):
        parts = []
        by_start = {h["start"]: arr for h, arr in data.get(name, [])}
        for h in mine:
            arr = by_start.get(h["start"])
            if arr is None:  # a property or metadata field this shard does not have
                arr = np.full((h["size"],) + tail, np.nan if fill_dtype.kind == "f" else b"", dtype=fill_dtype)
            parts.append(arr)
        return np.concatenate(parts) if parts else None

    for name in FIXED:
        rows = rows_of(name, plan[name]["dtype"], FIXED[name][1])
        if name == "structures/status" and rows is not None:
            hit = [r - row0 for r in failed_rows if row0 <= r < row0 + len(rows)]
            rows[hit] = FAILED
        prep.write(name, row0, rows, ops)
    for name in FAILURES:
        prep.write(name, fail0, rows_of(name, plan[name]["dtype"]), ops)
    for name in plan:
        if name.startswith(("structures/props/", "structures/meta/")):
            prep.write(name, row0, rows_of(name, plan[name]["dtype"]), ops)
    for name in RAGGED:
        local = sum(h["ragged"][name] for h in headers[:span[0]])
        prep.write(name, local, rows_of(name, plan[name]["dtype"], RAGGED[name][1]), ops)
        offsets = []
        running = local + (bases or {}).get(name, 0)
        for h, arr in sorted(data.get(f"{name}_offsets", []), key=lambda x: x[0]["start"]):
            offsets.append(arr[:-1] + running)
            running += int(arr[-1])
        if mine and span[1] == len(headers) and closing:
            offsets.append(np.array([running], dtype=np.int64))  # the closing offset
        prep.write(f"{name}_offsets", row0, np.concatenate(offsets) if offsets else None, ops)
    return ops


# --------------------------------------------------------------------------------------------------------
def _summary_from_file(output: Path, wall: float, ranks: int) -> Dict[str, object]:
    ff = FeatureFile(output)
    s = ff.summary()
    s.update(wall_seconds=wall, ranks=ranks, failures=ff.failures())
    s["throughput"] = s["structures"] / wall if wall > 0 else 0.0
    ff.close()
    return s


def _log_summary(s: Dict, output: Path) -> None:
    for fail in s["failures"][:20]:
        log.warning("bad input %s:%s (%s): %s", fail["source"], fail["line"], fail["id"], fail["reason"])
    if len(s["failures"]) > 20:
        log.warning("... and %d more bad records (cloudvox info %s lists them)", len(s["failures"]) - 20, output)
    log.info("wrote %s: %d structures (%d done, %d failed), %.1f MB, %.1f s on %d rank(s) (%.0f structures/s), "
             "load imbalance max/mean busy %.2f", output, s["structures"], s["done"], s["failed"],
             s["size_bytes"] / 1e6, s["wall_seconds"], s["ranks"], s["throughput"], s.get("load_imbalance", 1.0))
