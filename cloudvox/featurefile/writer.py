"""Writing one block as a complete feature file (serial h5py; the parallel job's shards and the merge:
:mod:`hpc.featurize`)."""
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .block import Block
from .layout import COMPRESSED, encode


def write_features(path, block: Block, attrs: Dict[str, object], compression: Optional[str] = "lzf") -> None:
    """Write one block as a complete feature file (serial h5py): ``path.part``, then renamed to ``path``.

    compression: the HDF5 filter of the large ragged datasets (with byte shuffling), or None (a job's shards,
    read once by its merge: about 4x faster to write, 1.6x the bytes)."""
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
            compressed = compression and name in COMPRESSED and len(data)
            opts = dict(compression=compression, shuffle=True) if compressed else {}
            f.create_dataset(name, data=data, **opts)
            f.create_dataset(f"{name}_offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    os.replace(part, path)
