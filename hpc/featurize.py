"""Featurization scattered over MPI ranks into one parallel HDF5 file: resumable and bad-input-safe.

The job (every rank runs :func:`run_featurize` with the same arguments):

1. Every rank indexes the input (:class:`cloudvox.io.sources.Source`: byte offsets, no parsing).
2. The records are cut into fixed blocks (:func:`hpc.partition.pending_blocks`); ranks take the next
   unfinished block from a job-wide counter (:class:`hpc.comm.WorkCounter`), so cheap and expensive
   structures balance themselves. Each finished block is written as a shard file
   ``OUT.h5.parts/block-<start>-<stop>.h5`` (written as ``.part``, then renamed): a killed job loses at
   most the blocks in flight, and a restarted one skips the shards that exist.
3. The shards are concatenated into ``OUT.h5.part`` in dataset order: metadata and dataset creation
   collective (mpio driver), each rank writing the rows of a contiguous, size-balanced run of shards with
   offsets from an exclusive scan; without parallel HDF5, rank 0 writes alone. The file is renamed to
   ``OUT.h5`` when complete and the shards are removed.

Bad records (unparsable, invalid structures) are written with status failed and a reason in /failures,
and logged by rank 0; they never stop the job. A stop request (``stop()`` true on some rank: SIGUSR1 or
SIGTERM from SLURM) lets every rank finish its current block and leave before the merge; the summary then
says ``interrupted`` and the same command continues from the finished blocks.
"""
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cloudvox.config import ConfigError, validate_featurize
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.features import (CHUNK_BYTES, COMPRESSED, FAILURES, FIXED, RAGGED, STORE_DEFAULT, FeatureFile,
                               featurize_block, prop_unit, root_attributes, write_features)
from cloudvox.io.sources import Source

from .comm import WorkCounter, is_mpi
from .h5mpi import has_parallel_hdf5, open_file, write_rows
from .partition import pending_blocks, weighted_split

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class JobError(RuntimeError):
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
    parallel_hdf5: str  # auto | on | off
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
                   parallel_hdf5=cfg["parallel_hdf5"], command=command)

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
                    records=len(source), limit=self.limit, input=source.fingerprint())


# --------------------------------------------------------------------------------------------------------
def run_featurize(job: FeaturizeJob, comm, stop: Callable[[], bool] = lambda: False) -> Dict[str, object]:
    """Run the job on every rank of ``comm``; returns the run summary (the same dict on every rank).

    ``stop``: polled before each block; once true on any rank, every rank leaves after its current block,
    the merge is skipped and the summary has ``interrupted: True`` (the finished blocks are kept)."""
    t0 = time.perf_counter()
    rank, size = comm.Get_rank(), comm.Get_size()
    unknown = set(job.store) - set(STORE_DEFAULT)
    if unknown:
        raise JobError(f"unknown store item(s) {sorted(unknown)}; choose from {list(STORE_DEFAULT)}")
    if job.block_size < 1:
        raise JobError(f"block_size must be >= 1, got {job.block_size}")
    try:
        vox = job.voxelizer()
    except ValueError as e:
        raise JobError(f"invalid descriptor parameters: {e}") from None
    try:
        source = Source(job.format, job.inputs, job.limit)
    except (FileNotFoundError, ValueError) as e:
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
    _merge(comm, job, parts, output, attrs, identity)
    merge_time = time.perf_counter() - t_merge
    busy_all = comm.allgather(busy)
    summary = _summary_from_file(output, time.perf_counter() - t0, size) if rank == 0 else None
    if rank == 0:
        mean = float(np.mean(busy_all))
        summary.update(load_imbalance=(max(busy_all) / mean) if mean > 0 else 1.0, busy_seconds=busy_all,
                       merge_seconds=merge_time, blocks_computed=len(pending))
        _log_summary(summary, output)
    return comm.bcast(summary, root=0)


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
        if parts.exists():
            shutil.rmtree(parts)
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
    bar = None
    if comm.Get_rank() == 0 and pending:
        from tqdm import tqdm
        bar = tqdm(total=len(pending), unit="block", desc="featurize", disable=None)
    busy, stopped = 0.0, False
    try:
        while True:
            if stop():
                stopped = True
                break
            k = counter.next()
            if k >= len(pending):
                break
            a, b = pending[k]
            t = time.perf_counter()
            block = featurize_block(source.records(a, b), a, vox, source.sources, job.store)
            write_features(parts / f"block-{a:010d}-{b:010d}.h5", block, attrs)
            busy += time.perf_counter() - t
            if bar is not None:
                bar.n = min(k + 1, len(pending))
                bar.refresh()
    finally:
        comm.Barrier()
        counter.free()
        if bar is not None:
            bar.n = bar.n if stopped else len(pending)
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
        h["bytes"] = sum(f[n].id.get_storage_size() for n in RAGGED) + 1
    return h


def _merge(comm, job: FeaturizeJob, parts: Path, output: Path, attrs: Dict, identity: Dict) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    shards = sorted(parts.glob("block-*.h5"), key=_range_of)
    headers = _agree(comm, lambda: [_shard_header(p) for p in shards])
    parallel = is_mpi(comm) and size > 1 and job.parallel_hdf5 != "off" and has_parallel_hdf5()
    if job.parallel_hdf5 == "on" and is_mpi(comm) and size > 1 and not parallel:
        raise JobError("parallel_hdf5: on, but h5py was built without MPI support")
    writers = size if parallel else 1
    part_path = output.with_name(output.name + ".part")
    if not parallel and rank != 0:
        comm.Barrier()
        return
    # every writing rank: the same layout decisions from the same headers
    n = sum(h["size"] for h in headers)
    species = sorted({e for h in headers for e in h["elements"]})
    root = dict(attrs, species=json.dumps(species), job=json.dumps(identity), store=json.dumps(sorted(job.store)))
    spans = weighted_split([h["bytes"] for h in headers], writers)
    mine = headers[spans[rank][0]:spans[rank][1]] if rank < writers else []
    with open_file(part_path, "w", comm if parallel else None) as f:
        for k, v in root.items():
            f.attrs[k] = v
        _create_layout(f, headers, n)
        data = _load_shards(mine)
        _write_rows(f, headers, spans[rank] if rank < writers else (0, 0), data, parallel)
    if parallel:
        comm.Barrier()  # every rank has closed the file
    if rank == 0:
        os.replace(part_path, output)
        shutil.rmtree(parts, ignore_errors=True)
    if not parallel:
        comm.Barrier()  # the others wait for rank 0 above


def _chunked(shape, dtype, name: str) -> Dict[str, object]:
    if shape[0] == 0:
        return {}
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = int(max(1, min(shape[0], CHUNK_BYTES // max(row, 1))))
    opts: Dict[str, object] = dict(chunks=(rows,) + tuple(shape[1:]))
    if name in COMPRESSED:
        opts.update(compression="gzip", compression_opts=4, shuffle=True)
    return opts


def _create_layout(f, headers: List[Dict], n: int) -> None:
    """Create every dataset with its final shape (collective: same calls on every rank)."""
    strings = {}
    for h in headers:
        for name, width in h["strings"].items():
            strings[name] = max(strings.get(name, 1), width)
    n_fail = sum(h["failures"] for h in headers)
    for table, rows in ((FIXED, n), (FAILURES, n_fail)):
        for name, (dtype, tail) in table.items():
            dt = np.dtype(f"S{strings.get(name, 1)}") if dtype == "str" else dtype
            f.create_dataset(name, shape=(rows,) + tail, dtype=dt, **_chunked((rows,) + tail, dt, name))
    for p in sorted({p for h in headers for p in h["props"]}):
        d = f.create_dataset(f"structures/props/{p}", shape=(n,), dtype=np.float64, **_chunked((n,), np.float64, p))
        d.attrs["unit"] = prop_unit(p)
    meta = {}
    for h in headers:
        for name, width in h["meta"].items():
            meta[name] = max(meta.get(name, 1), width)
    for name in sorted(meta):
        dt = np.dtype(f"S{meta[name]}")
        f.create_dataset(f"structures/meta/{name}", shape=(n,), dtype=dt, **_chunked((n,), dt, name))
    for name, (dtype, tail) in RAGGED.items():
        total = sum(h["ragged"][name] for h in headers)
        f.create_dataset(name, shape=(total,) + tail, dtype=dtype, **_chunked((total,) + tail, dtype, name))
        f.create_dataset(f"{name}_offsets", shape=(n + 1,), dtype=np.int64, **_chunked((n + 1,), np.int64, name))


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


def _write_rows(f, headers: List[Dict], span: Tuple[int, int], data: Dict, collective: bool) -> None:
    """Write this rank's contiguous run of shards into every dataset (every rank calls for every dataset)."""
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
        write_rows(f[name], row0, rows_of(name, f[name].dtype), collective)
    for name in FAILURES:
        write_rows(f[name], fail0, rows_of(name, f[name].dtype), collective)
    for group in ("structures/props", "structures/meta"):
        for key in sorted(f[group].keys()) if group in f else []:
            name = f"{group}/{key}"
            write_rows(f[name], row0, rows_of(name, f[name].dtype), collective)
    for name in RAGGED:
        base = sum(h["ragged"][name] for h in headers[:span[0]])
        write_rows(f[name], base, rows_of(name, f[name].dtype, RAGGED[name][1]), collective)
        offsets = []
        running = base
        for h, arr in sorted(data.get(f"{name}_offsets", []), key=lambda x: x[0]["start"]):
            offsets.append(arr[:-1] + running)
            running += int(arr[-1])
        if mine and span[1] == len(headers):
            offsets.append(np.array([running], dtype=np.int64))  # the closing offset
        write_rows(f[f"{name}_offsets"], row0, np.concatenate(offsets) if offsets else None, collective)


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
