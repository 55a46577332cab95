"""Reading a feature file: :class:`FeatureFile` (dense tensors for any species list from the compact layout)."""
import contextlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..descriptors import ReciprocalSet, SparseVoxels, bin_sets, with_cross
from ..lattice import Lattice
from ..errors import DataError, FormatError
from ..structure import Structure
from .layout import CHUNK_CACHE_BYTES, DONE, FAILED, FORMAT, FORMAT_VERSION, decode


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
        matrix = self.row("structures/lattice", i)
        if np.isnan(matrix).any() or not self.has_reciprocal(i):
            raise DataError(f"structure {i} ({self.ids[i]}) of {self.path} has no reciprocal set (a molecule, or "
                             "featurized without store: reciprocal)")
        lattice = Lattice(matrix)
        if self.version >= 2:
            p = self.params
            m = lattice.half_ball(float(np.sqrt(3) * np.pi * int(p["n"]) / float(p["length"])))
            scale = np.float32(self.row("reciprocal/scale", i))
            raw = self.ragged("reciprocal/values", i).astype(np.float32) * scale
        else:  # version 1: stored indices, float32 values
            m = self.ragged("reciprocal/m", i).astype(np.int32)
            raw = self.ragged("reciprocal/values", i)
        ch = self.channel_index(i, channels)
        values = raw.reshape(len(ch), len(m))
        G = m @ lattice.reciprocal
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
