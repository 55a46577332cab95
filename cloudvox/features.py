"""The feature file: one documented HDF5 layout for featurized structures, its writer and its reader.

Layout (``format = "cloudvox-features"``, ``format_version = 2``); S structures in input order::

    /                          attrs: format, format_version, cloudvox_version, created (ISO 8601 UTC),
                                      command, input (JSON list of paths), input_format, species (JSON list:
                                      the elements present, sorted), descriptor (JSON: sigma, length, n, mode,
                                      channels, species, properties, cross), channel_names (JSON list: what
                                      /channels/index points into: every element symbol H..Og for element
                                      channels, else ["total"] or the property names; with cross followed
                                      by the same names + "*total", the cross-spectrum channels), units (JSON: sigma and length "Angstrom",
                                      positions "Angstrom", lattice "Angstrom", voxels "1/Angstrom^3"),
                                      store (JSON list of what is stored), job (JSON: parameters and input
                                      fingerprint that a rerun must match to reuse the file)
    /structures/id             (S,) fixed-length UTF-8 bytes   structure id (AFLOW auid, qm9:<index>, file stem)
    /structures/formula        (S,) fixed-length UTF-8 bytes
    /structures/natoms         (S,) int32
    /structures/status         (S,) int8     1 done, 2 failed (see /failures)
    /structures/lattice        (S, 3, 3) float64  rows a, b, c in Angstrom; NaN for molecules and failures
    /structures/source         (S,) int16    index into the root attribute ``input``
    /structures/line           (S,) int64    line (JSONL, CSV) or item number of the record in its source
    /structures/props/<name>   (S,) float64  numeric properties, NaN where absent; attr ``unit``
    /structures/meta/<name>    (S,) fixed-length UTF-8 bytes   string metadata (compound, smiles, ...)
    /cloud/positions           (A, 3) float64  Cartesian positions, Angstrom     ragged: positions_offsets
    /cloud/numbers             (A,) uint8      atomic numbers                    ragged: numbers_offsets
    /channels/index            (Cs,) int16     each structure's own channels, as indices into channel_names
                                                                                 ragged: index_offsets
    /voxels/index              (K,) int32      occupied flat voxels (i0 N + i1) N + i2, axis order (x, y, z)
    /voxels/values             (sum c_i K_i,) float32  per structure a (c_i, K_i) block, 1/Angstrom^3
    /reciprocal/values         (sum c_i P_i,) float16  per crystal a (c_i, P_i) block of |h| / scale (and the
                                               cross-spectra / scale), at the P_i Miller indices m of
                                               cloudvox.descriptors.half_ball(lattice, sqrt(3) pi N / L), in its
                                               order: one of each Friedel pair (|h(-G)| = |h(G)|), G = m @ recip
    /reciprocal/scale          (S,) float32    per structure: the largest |value| of its block, 1/Angstrom^3
                                               (values = float16 * scale; NaN without a reciprocal set)
    /failures/{index, id, source, line, reason}   one row per bad record

Every ragged dataset ``<group>/<name>`` has ``<group>/<name>_offsets`` (S + 1,) int64: structure i owns
rows ``offsets[i]:offsets[i + 1]``. Descriptor data are stored compactly (each structure's own elements,
occupied voxels only); :class:`FeatureFile` returns dense tensors for any species list.
A file is written as ``NAME.part`` and renamed when complete. The same layout serves the per-block shard
files of a parallel job (:func:`write_features`), which are concatenated into the final file.

Segments. A job with several writers (by default one per node, ``merge_writers``) writes ``NAME`` with the root
attributes above and every dataset as an HDF5 virtual dataset over ``NAME.segments/segment-K.h5``: segment K
holds a contiguous run of rows of every dataset (its own structures, their ragged rows and offsets, which
keep the whole file's values; the last segment also the closing offset), in datasets of the same names,
dtypes, chunks and filters. The root attribute ``segments`` (JSON list) names them relative to the file's
folder; HDF5 finds them there wherever the two are moved together, and the reader refuses a file whose
segments are missing (HDF5 would read their rows as zeros). Readers see one file of the layout above.

What is stored (``store``, default ``reciprocal`` + ``cloud``): a crystal's descriptor is its reciprocal
set; its voxels are binned from it when read (:meth:`FeatureFile.sparse_voxels`, or on the training device
under random rotations), so they are stored only when ``voxels`` is asked for. A molecule's reciprocal set
is its transform sampled at the voxel centres, i.e. its voxels: with ``reciprocal`` a molecule's voxels are
stored. Bytes, measured on the AFLOW-like mix (bench/featurize_scale.py, docs/scaling.md): the Miller
indices are regenerated from the lattice instead of stored (they were 17% of a version-1 file); amplitudes
are float16 relative to the per-structure scale (relative error <= 2^-11 down to 6e-5 of the scale, then
absolute 6e-8 of the scale; tested against float64 |h|): half the bytes of float32 and they compress better
(shuffle + deflate: 10.6-11.2 kB per structure with zlib level 1 against 29 kB for float32). The chunks are
HDF5's gzip filter (shuffle + deflate, read by any HDF5), deflated by ISA-L at its level 1 (the isal package;
zlib level 1 where it is missing): 5-6x zlib's speed for 11% more bytes (13.2 kB per structure), which moved
the merge off the compression; zlib level 4 would save 4% at 1.3x zlib level 1's time. Chunks of 256 kB
(uncompressed): random access to one structure decompresses at most a few chunks. Shards use lzf (fast,
1.3x larger) and are recompressed once by the merge.

Files are written in the HDF5 1.10 file format (fixed-array chunk indexes; readers need HDF5 >= 1.10).
Version 1 files (float32 values, stored ``/reciprocal/m``, no scale) are still read; a file newer than the
reader is refused with a message to upgrade.
"""
import contextlib
import functools
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .descriptors import (ReciprocalSet, ReciprocalVoxelizer, SparseVoxels, bin_sets, half_ball, reciprocal_lattice,
                          with_cross)
from .elements import SYMBOLS
from .io.records import Record
from .properties import UNITS
from .structure import Structure, StructureError
from .errors import DataError, FormatError

FORMAT = "cloudvox-features"
FORMAT_VERSION = 2
DONE, FAILED = 1, 2
ALL_ELEMENTS = SYMBOLS[1:]  # channel index + 1 = Z
STORE_ITEMS = ("voxels", "reciprocal", "cloud")
STORE_DEFAULT = ("reciprocal", "cloud")  # a crystal's voxels are binned from its reciprocal set when read

# ragged datasets: name -> (dtype, trailing shape, what it belongs to)
RAGGED: Dict[str, Tuple[np.dtype, Tuple[int, ...]]] = {
    "cloud/positions": (np.dtype(np.float64), (3,)),
    "cloud/numbers": (np.dtype(np.uint8), ()),
    "channels/index": (np.dtype(np.int16), ()),
    "voxels/index": (np.dtype(np.int32), ()),
    "voxels/values": (np.dtype(np.float32), ()),
    "reciprocal/values": (np.dtype(np.float16), ()),
}
# one row per structure: name -> (dtype or "str", trailing shape)
FIXED: Dict[str, Tuple[object, Tuple[int, ...]]] = {
    "structures/id": ("str", ()),
    "structures/formula": ("str", ()),
    "structures/natoms": (np.dtype(np.int32), ()),
    "structures/status": (np.dtype(np.int8), ()),
    "structures/lattice": (np.dtype(np.float64), (3, 3)),
    "structures/source": (np.dtype(np.int16), ()),
    "structures/line": (np.dtype(np.int64), ()),
    "reciprocal/scale": (np.dtype(np.float32), ()),
}
FAILURES: Dict[str, Tuple[object, Tuple[int, ...]]] = {
    "failures/index": (np.dtype(np.int64), ()),
    "failures/id": ("str", ()),
    "failures/source": (np.dtype(np.int16), ()),
    "failures/line": (np.dtype(np.int64), ()),
    "failures/reason": ("str", ()),
}
CHUNK_CACHE_BYTES = 256 << 20  # per open file (per process): decompressed chunks kept for random access
CHUNK_BYTES = 256 << 10  # target uncompressed chunk size of the final file's datasets
COMPRESSED = ("cloud/positions", "voxels/index", "voxels/values", "reciprocal/values")
GZIP_LEVEL = 1  # zlib's level where isal is missing (docstring: level 4 saves 4% of the bytes at 1.3x the time)
ISAL_LEVEL = 1  # ISA-L's level for the final file's chunks (see deflate)


@functools.lru_cache(maxsize=None)
def _compressor():
    try:
        from isal import isal_zlib
        return functools.partial(isal_zlib.compress, level=ISAL_LEVEL)
    except ImportError:
        return functools.partial(zlib.compress, level=GZIP_LEVEL)


def deflate(data: bytes) -> bytes:
    """A zlib stream (what HDF5's gzip filter stores and every HDF5 reader inflates) of ``data``: ISA-L at
    level 1 (isal: 5-6x zlib's speed on shuffled float16 amplitudes, 11% more bytes than zlib level 1), or
    zlib at GZIP_LEVEL where the isal package is not installed."""
    return _compressor()(data)


def encode(strings: Sequence[str]) -> np.ndarray:
    """Fixed-length UTF-8 bytes (parallel HDF5 cannot write variable-length strings)."""
    raw = [s.encode("utf-8") for s in strings]
    return np.array(raw, dtype=f"S{max([len(r) for r in raw] + [1])}")


def decode(array: np.ndarray) -> List[str]:
    return [b.decode("utf-8") for b in np.asarray(array).tolist()]


# ------------------------------------------------------------------------------------------------------
# computing a block
# ------------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """Featurized records ``start .. start + len(ids)`` of a dataset, in memory (one shard file)."""
    start: int
    fixed: Dict[str, object]  # FIXED name -> array (strings as python lists)
    props: Dict[str, np.ndarray]
    meta: Dict[str, List[str]]
    ragged: Dict[str, Tuple[np.ndarray, np.ndarray]]  # name -> (counts (S,), data)
    failures: Dict[str, object]
    elements: List[str] = field(default_factory=list)  # sorted elements of the good structures

    @property
    def size(self) -> int:
        return len(self.fixed["structures/id"])


def featurize_block(records: Sequence[Record], start: int, voxelizer: ReciprocalVoxelizer,
                    sources: Sequence[str], store: Sequence[str] = STORE_DEFAULT) -> Block:
    """Compute everything the feature file holds for a run of records (bad ones recorded as failures).

    records: S records in dataset order, the first being dataset record ``start``; sources: the input
    paths (``Record.source`` is looked up there); store: any of :data:`STORE_ITEMS` (a molecule's "reciprocal" set is its voxels, see the module docstring).
    """
    S = len(records)
    structures: List[Optional[Structure]] = [r.structure for r in records]
    reasons: List[Optional[str]] = [r.error for r in records]
    names = channel_names(voxelizer)
    if voxelizer.species is not None and voxelizer.channels == "element":  # elements outside the list fail early
        for k, s in enumerate(structures):
            extra = [] if s is None else [e for e in s.elements if e not in names]
            if extra:
                structures[k], reasons[k] = None, f"structure {s.id}: element(s) {extra} not in the species list {list(names)}"
    for k, s in enumerate(structures):  # resource limits, before anything of that size is allocated
        if s is not None:
            try:
                voxelizer.check_cost(s, voxels="voxels" in store)
            except StructureError as e:
                structures[k], reasons[k] = None, str(e)
    good = [k for k, s in enumerate(structures) if s is not None]
    todo = [structures[k] for k in good]
    binned = [k for k, s in enumerate(todo) if "voxels" in store or ("reciprocal" in store and not s.is_periodic)]
    sparse = [None] * len(todo)
    for k, sv in zip(binned, voxelizer.compact([todo[k] for k in binned], names=names)):
        sparse[k] = sv
    recip = [None] * len(todo)  # crystals: (channels, float16 values relative to the scale, scale)
    scale = np.full(S, np.nan, dtype=np.float32)
    if "reciprocal" in store:
        for k, s in enumerate(todo):
            if s.is_periodic:
                recip[k] = voxelizer.stored_values(s, names)

    parts: Dict[str, List[np.ndarray]] = {name: [np.empty((0,) + RAGGED[name][1], RAGGED[name][0])] * S
                                          for name in RAGGED}
    for k, s, sv, rs in zip(good, todo, sparse, recip):
        if "cloud" in store:
            parts["cloud/positions"][k] = s.cart_coords
            parts["cloud/numbers"][k] = s.numbers.astype(np.uint8)
        channels = sv.channels if sv is not None else (rs[0] if rs is not None else None)
        if channels is not None:
            parts["channels/index"][k] = channels.astype(np.int16)
        if sv is not None:
            parts["voxels/index"][k] = sv.index
            parts["voxels/values"][k] = sv.values.reshape(-1)
        if rs is not None:
            scale[k] = rs[2]
            parts["reciprocal/values"][k] = rs[1].reshape(-1)
    ragged = {name: (np.array([len(p) for p in ps], dtype=np.int64),
                     np.concatenate(ps) if S else np.empty((0,) + RAGGED[name][1], RAGGED[name][0]))
              for name, ps in parts.items()}

    status = np.array([DONE if s is not None else FAILED for s in structures], dtype=np.int8)
    source_index = {src: i for i, src in enumerate(sources)}
    fixed = {
        "structures/id": [r.id or (s.id if s is not None else "") for r, s in zip(records, structures)],
        "structures/formula": [s.formula if s is not None else "" for s in structures],
        "structures/natoms": np.array([len(s) if s is not None else 0 for s in structures], dtype=np.int32),
        "structures/status": status,
        "structures/lattice": np.stack([s.lattice if (s is not None and s.is_periodic) else np.full((3, 3), np.nan)
                                        for s in structures]) if S else np.empty((0, 3, 3)),
        "structures/source": np.array([source_index.get(r.source, -1) for r in records], dtype=np.int16),
        "structures/line": np.array([r.line for r in records], dtype=np.int64),
        "reciprocal/scale": scale,
    }
    prop_names = sorted({p for s in structures if s is not None for p in s.props})
    props = {p: np.array([s.props.get(p, np.nan) if s is not None else np.nan for s in structures]) for p in prop_names}
    meta_names = sorted({m for s in structures if s is not None for m in s.meta})
    meta = {m: [s.meta.get(m, "") if s is not None else "" for s in structures] for m in meta_names}
    bad = np.flatnonzero(status == FAILED)
    failures = {
        "failures/index": (start + bad).astype(np.int64),
        "failures/id": [fixed["structures/id"][k] for k in bad],
        "failures/source": fixed["structures/source"][bad],
        "failures/line": fixed["structures/line"][bad],
        "failures/reason": [reasons[k] or "unknown error" for k in bad],
    }
    elements = sorted({e for s in structures if s is not None for e in s.elements})
    return Block(start, fixed, props, meta, ragged, failures, elements)


def write_features(path, block: Block, attrs: Dict[str, object]) -> None:
    """Write one block as a complete feature file (serial h5py): ``path.part``, then renamed to ``path``."""
    import h5py
    path = Path(path)
    part = path.with_name(path.name + ".part")
    with h5py.File(part, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["block_start"] = block.start
        f.attrs["elements"] = json.dumps(block.elements)
        for name, value in list(block.fixed.items()) + list(block.failures.items()):
            f.create_dataset(name, data=encode(value) if isinstance(value, list) else value)
        for name, value in block.props.items():
            f.create_dataset(f"structures/props/{name}", data=value)
        for name, value in block.meta.items():
            f.create_dataset(f"structures/meta/{name}", data=encode(value))
        for name, (counts, data) in block.ragged.items():
            opts = dict(compression="lzf", shuffle=True) if name in COMPRESSED and len(data) else {}
            f.create_dataset(name, data=data, **opts)
            f.create_dataset(f"{name}_offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    os.replace(part, path)


def channel_names(voxelizer: ReciprocalVoxelizer) -> Tuple[str, ...]:
    """What /channels/index points into: all elements (or the given species), "total", or the properties;
    followed by their cross-spectrum channels (``<name>*total``) for a ``cross`` descriptor."""
    if voxelizer.channels == "element":
        base = ALL_ELEMENTS if voxelizer.species is None else voxelizer.species
        return with_cross(base) if voxelizer.cross else base
    return voxelizer.channel_names()


def root_attributes(voxelizer: ReciprocalVoxelizer, sources: Sequence[str], input_format: str, command: str,
                    species: Sequence[str] = ()) -> Dict[str, object]:
    """The root attributes of the layout."""
    return {
        "channel_names": json.dumps(list(channel_names(voxelizer))),
        "format": FORMAT, "format_version": FORMAT_VERSION, "cloudvox_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
        "input": json.dumps([str(s) for s in sources]), "input_format": input_format,
        "species": json.dumps(list(species)), "descriptor": json.dumps(voxelizer.params),
        "units": json.dumps({"sigma": "Angstrom", "length": "Angstrom", "positions": "Angstrom",
                             "lattice": "Angstrom", "voxels": "1/Angstrom^3", "reciprocal": "1/Angstrom"}),
    }


def prop_unit(name: str) -> str:
    return UNITS.get(name, "")


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------
class FeatureFile:
    """Reader of a feature file; the h5py handle is opened lazily, once per process (DataLoader workers).

    Args:
        path: the .h5 file (or a shard).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = None
        self._pid = None
        self._offsets: Dict[str, np.ndarray] = {}
        self._dsets: Dict[str, object] = {}
        self._block = None  # (lo, hi, {dataset: what was read}) inside reading_block
        f = self.h5
        if f.attrs.get("format") != FORMAT:
            raise FormatError(f"{self.path} is not a cloudvox feature file (format attribute {f.attrs.get('format')!r})")
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise FormatError(f"{self.path} has format version {f.attrs['format_version']}, newer than this "
                             f"cloudvox ({FORMAT_VERSION}): upgrade cloudvox")
        self.params = json.loads(f.attrs["descriptor"])
        self.params.setdefault("cross", False)  # files written before cross-spectrum channels existed
        self.species: List[str] = json.loads(f.attrs["species"])
        self.channel_names: List[str] = json.loads(f.attrs["channel_names"])
        self.n = int(f["structures/status"].shape[0])
        self.version = int(f.attrs["format_version"])
        self.segments: List[Path] = [self.path.parent / s for s in json.loads(f.attrs.get("segments", "[]"))]
        missing = [s for s in self.segments if not s.is_file()]
        if missing:  # HDF5 would read the missing rows as zeros
            raise FormatError(f"{self.path} reads its datasets from {len(self.segments)} segment files beside it and "
                             f"{len(missing)} are missing (first: {missing[0]}); copy or move {self.path.name} "
                             f"together with its folder {Path(self.segments[0]).parent.name}/")

    @property
    def h5(self):
        import h5py
        if self._file is None or self._pid != os.getpid():
            # a large chunk cache: random access to small ragged rows must not decompress a chunk per read
            self._file = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=100003)
            self._pid = os.getpid()
            self._offsets, self._dsets = {}, {}
        return self._file

    def dataset(self, name: str):
        """The h5py dataset ``name``, looked up once per process: a lookup costs as much as a small read, and
        a training item reads several."""
        f = self.h5
        if name not in self._dsets:
            self._dsets[name] = f[name]
        return self._dsets[name]

    def __getstate__(self):  # a DataLoader worker reopens the file itself
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _offsets={}, _dsets={}, _block=None)
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return self.n

    def attrs(self) -> Dict[str, object]:
        return dict(self.h5.attrs)

    def offsets(self, name: str) -> np.ndarray:
        if name not in self._offsets:
            self._offsets[name] = self.h5[f"{name}_offsets"][...]
        return self._offsets[name]

    def ragged(self, name: str, i: int) -> np.ndarray:
        o = self.offsets(name)
        block = self._block
        if block is not None and block[0] <= i < block[1]:  # inside :meth:`reading_block`: one read per dataset
            start = o[block[0]]
            return self._block_read(name, start, o[block[1]])[o[i] - start:o[i + 1] - start]
        return self.dataset(name)[o[i]:o[i + 1]]

    def row(self, name: str, i: int) -> np.ndarray:
        """Row i of the per-structure dataset ``name`` (``structures/lattice``, ``reciprocal/scale``, ...)."""
        block = self._block
        if block is not None and block[0] <= i < block[1]:
            return self._block_read(name, block[0], block[1])[i - block[0]]
        return self.dataset(name)[i]

    def _block_read(self, name: str, start: int, stop: int) -> np.ndarray:
        """``name[start:stop]`` for the current block, read on first use."""
        read = self._block[2]
        if name not in read:
            read[name] = self.dataset(name)[start:stop]
        return read[name]

    @contextlib.contextmanager
    def reading_block(self, lo: int, hi: int):
        """Within this context, what :meth:`ragged` and :meth:`row` read of structures lo..hi-1 comes from one
        read per dataset of the whole range (kept until the context ends): for filling a cache with a block of
        neighbouring structures at the cost of one structure's reads."""
        self._block = (lo, min(hi, self.n), {})
        try:
            yield self
        finally:
            self._block = None

    @property
    def ids(self) -> List[str]:
        return decode(self.h5["structures/id"][...])

    @property
    def status(self) -> np.ndarray:
        return self.h5["structures/status"][...]

    def _status(self) -> np.ndarray:
        """(n,) uint8 status, read once (1 byte a structure) for the per-item checks; kept with the offsets."""
        if "status" not in self._offsets:
            self._offsets["status"] = self.status
        return self._offsets["status"]

    def prop(self, name: str) -> np.ndarray:
        if f"structures/props/{name}" not in self.h5:
            raise KeyError(f"{self.path} has no property {name!r}; it has {self.prop_names}")
        return self.h5[f"structures/props/{name}"][...]

    @property
    def prop_names(self) -> List[str]:
        return sorted(self.h5["structures/props"].keys()) if "structures/props" in self.h5 else []

    def meta(self, name: str) -> List[str]:
        return decode(self.h5[f"structures/meta/{name}"][...])

    def failures(self) -> List[Dict[str, object]]:
        f = self.h5
        if "failures/index" not in f:
            return []
        sources = json.loads(f.attrs["input"])
        return [dict(index=int(i), id=d, source=sources[s] if 0 <= s < len(sources) else "", line=int(l), reason=r)
                for i, d, s, l, r in zip(f["failures/index"][...], decode(f["failures/id"][...]),
                                         f["failures/source"][...], f["failures/line"][...],
                                         decode(f["failures/reason"][...]))]

    def _check(self, i: int) -> int:
        if not -self.n <= i < self.n:
            raise IndexError(f"structure index {i} out of range: {self.path} holds {self.n} structures")
        i = i % self.n
        if self._status()[i] != DONE:
            raise DataError(f"structure {i} ({self.ids[i]}) failed featurization; see /failures")
        return i

    @property
    def per_element(self) -> bool:
        return self.params["channels"] == "element"

    def model_channels(self, species: Optional[Sequence[str]] = None) -> List[str]:
        """The channel list of a model on this file: for element channels the species (default: the file's
        elements), followed by their cross-spectrum channels for a ``cross`` descriptor; else the file's
        fixed channel list."""
        if not self.per_element:
            return list(self.channel_names)
        base = list(species if species is not None else self.species)
        return list(with_cross(base)) if self.params.get("cross") else base

    def channel_index(self, i: int, channels: Optional[Sequence[str]] = None) -> np.ndarray:
        """(c,) indices of structure i's channels in the model's channel list.

        For element channels that list is ``channels`` (default: :meth:`model_channels`); for "total" and
        "properties" channels it is the file's fixed channel list and ``channels`` is ignored.
        """
        stored = self.ragged("channels/index", i).astype(np.int64)
        if not self.per_element:
            return stored
        channels = list(channels if channels is not None else self.model_channels())
        names = [self.channel_names[k] for k in stored]
        try:
            return np.array([channels.index(e) for e in names], dtype=np.int64)
        except ValueError:
            raise DataError(f"structure {self.ids[i]} has channels {names} outside the channel list "
                             f"{channels}") from None

    def n_channels(self, channels: Optional[Sequence[str]] = None) -> int:
        if not self.per_element:
            return len(self.channel_names)
        return len(channels if channels is not None else self.model_channels())

    def sparse_voxels(self, i: int, channels: Optional[Sequence[str]] = None) -> SparseVoxels:
        """Structure i's occupied voxels and values (c, K) float32 with its channels' indices in the channel
        list (default :meth:`model_channels`): the stored voxels, or binned from the reciprocal set (a crystal
        featurized without ``voxels``), as the descriptor bins it."""
        i = self._check(i)
        ch = self.channel_index(i, channels)
        index = self.ragged("voxels/index", i)
        if len(index) == 0 and self.has_reciprocal(i):
            rs = self.reciprocal(i, channels)
            p = self.params
            (index, values), = bin_sets([rs], int(p["n"]), float(p["length"]), str(p["mode"]))
            return SparseVoxels(index, values, rs.channels)
        values = self.ragged("voxels/values", i).reshape(len(ch), len(index))
        return SparseVoxels(index, values, ch)

    def voxels(self, i: int, channels: Optional[Sequence[str]] = None) -> np.ndarray:
        """(C, N, N, N) float32 dense voxels of structure i for a channel list (default :meth:`model_channels`)."""
        return self.sparse_voxels(i, channels).dense(self.n_channels(channels), int(self.params["n"]))

    def voxels_batch(self, indices: Sequence[int], channels: Optional[Sequence[str]] = None) -> np.ndarray:
        """(B, C, N, N, N) float32 dense voxels of several structures (the model's input)."""
        n = int(self.params["n"])
        out = np.zeros((len(indices), self.n_channels(channels), n, n, n), dtype=np.float32)
        for k, i in enumerate(indices):
            out[k] = self.voxels(i, channels)
        return out

    def has_reciprocal(self, i: int) -> bool:
        o = self.offsets("reciprocal/values")
        return bool(o[i + 1] > o[i])

    def reciprocal(self, i: int, channels: Optional[Sequence[str]] = None, half: bool = False) -> ReciprocalSet:
        """The reciprocal set of crystal i (both halves unless ``half``), channels indexed in ``channels``
        (default :meth:`model_channels`), amplitudes float32 in 1/Angstrom^3."""
        i = self._check(i)
        lattice = self.row("structures/lattice", i)
        if np.isnan(lattice).any() or not self.has_reciprocal(i):
            raise DataError(f"structure {i} ({self.ids[i]}) of {self.path} has no reciprocal set (a molecule, or "
                             "featurized without store: reciprocal)")
        if self.version >= 2:
            p = self.params
            m = half_ball(lattice, float(np.sqrt(3) * np.pi * int(p["n"]) / float(p["length"])))
            scale = np.float32(self.row("reciprocal/scale", i))
            raw = self.ragged("reciprocal/values", i).astype(np.float32) * scale
        else:  # version 1: stored indices, float32 values
            m = self.ragged("reciprocal/m", i).astype(np.int32)
            raw = self.ragged("reciprocal/values", i)
        ch = self.channel_index(i, channels)
        values = raw.reshape(len(ch), len(m))
        G = m @ reciprocal_lattice(lattice)
        rs = ReciprocalSet(G, values, ch, m, half=True)
        return rs if half else rs.full()

    def cloud(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(natoms, 3) Cartesian positions (Angstrom) and (natoms,) atomic numbers of structure i."""
        i = self._check(i)
        return self.ragged("cloud/positions", i), self.ragged("cloud/numbers", i).astype(np.int64)

    def structure(self, i: int) -> Structure:
        pos, z = self.cloud(i)
        lattice = self.h5["structures/lattice"][i]
        lat = None if np.isnan(lattice).any() else lattice
        props = {p: float(self.h5[f"structures/props/{p}"][i]) for p in self.prop_names}
        return Structure(z, pos, lat, cartesian=True, id=self.ids[i], props={k: v for k, v in props.items() if v == v})

    def summary(self) -> Dict[str, object]:
        """Counts, parameters, failures and size, for ``cloudvox info``."""
        st = self.status
        return dict(path=str(self.path), structures=self.n, done=int((st == DONE).sum()), failed=int((st == FAILED).sum()),
                    descriptor=self.params, species=self.species, properties=self.prop_names,
                    size_bytes=sum(p.stat().st_size for p in [self.path] + self.segments), cloudvox_version=str(self.h5.attrs["cloudvox_version"]),
                    created=str(self.h5.attrs["created"]), input=json.loads(self.h5.attrs["input"]))


if __name__ == "__main__":  # python -m cloudvox.features > docs/hdf5_layout.md
    print("# The cloudvox feature file (HDF5)\n\nThis page is generated from the docstring of `cloudvox/features.py` "
          "(`python -m cloudvox.features > docs/hdf5_layout.md`), the single definition of the layout.\n\n```\n"
          + __doc__.strip() + "\n```")
