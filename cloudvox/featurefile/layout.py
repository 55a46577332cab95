"""The feature file's layout: one documented HDF5 layout for featurized structures (its single definition).

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
                                               cloudvox.lattice.half_ball(lattice, sqrt(3) pi N / L), in its
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
(uncompressed): random access to one structure decompresses at most a few chunks. A job's shards are
uncompressed (or lzf: its ``shard_compression``) and compressed once by the merge.

Files are written in the HDF5 1.10 file format (fixed-array chunk indexes; readers need HDF5 >= 1.10).
Version 1 files (float32 values, stored ``/reciprocal/m``, no scale) are still read; a file newer than the
reader is refused with a message to upgrade.
"""
import functools
import json
import time
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .. import __version__
from ..descriptors import ReciprocalVoxelizer, with_cross
from ..elements import SYMBOLS
from ..properties import UNITS

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
