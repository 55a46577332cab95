"""Computing a block: everything the feature file holds for a run of records, in memory."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..descriptors import ReciprocalVoxelizer
from ..io.records import Record
from ..structure import Structure, StructureError
from .layout import DONE, FAILED, RAGGED, STORE_DEFAULT, channel_names


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
                voxelizer.check_cost(s)
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
        crystals = [k for k, s in enumerate(todo) if s.is_periodic]
        for k, values in zip(crystals, voxelizer.stored_values_many([todo[k] for k in crystals], names)):
            recip[k] = values

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
