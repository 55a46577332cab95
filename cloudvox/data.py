"""Training data from a feature file: splits, target normalisation, torch datasets and collation.

The HDF5 file is opened lazily in each process (:class:`cloudvox.featurefile.FeatureFile`), so DataLoader
workers each hold their own handle. Batches are dicts keyed by :mod:`cloudvox.properties` batch keys.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import properties as K
from .binning import pack_reciprocal, padded_rows
from .descriptors import DEFAULT_PROPERTIES
from .elements import MAX_Z, property_weights
from .featurefile import DONE, FeatureFile
from .errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
HOLDOUT = "holdout"  # structures of held-out elements (split.hold_out): never trained on, evaluated


# --------------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------------
def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  groups: Optional[Sequence[str]] = None, sizes: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Seeded train/val/test indices of n items; with ``groups``, every group falls in one split only.

    Groups (e.g. the AFLOW ``compound``, so that both site variants of a compound stay together) are
    shuffled and assigned whole, in order, until each split's share of groups is reached. ``sizes``
    (train, val, test counts, e.g. 10000, 1000, 10000 for QM9) replaces fractions for ungrouped splits:
    the first items of one seeded permutation, so a larger train size keeps the same val and test sets.
    """
    if sizes is not None:
        if groups is not None:
            raise ConfigError("split sizes work with ungrouped splits only")
        tr, va, te = (int(x) for x in sizes)
        if tr + va + te > n:
            raise ConfigError(f"split sizes {list(sizes)} exceed the {n} usable structures")
        perm = np.random.default_rng(seed).permutation(n)
        return {"val": np.sort(perm[:va]), "test": np.sort(perm[va:va + te]), "train": np.sort(perm[va + te:va + te + tr])}
    fr = np.asarray(fractions, dtype=np.float64)
    if len(fr) != 3 or (fr < 0).any() or not math.isclose(fr.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        cut = np.round(np.cumsum(fr)[:2] * n).astype(int)
        parts = np.split(perm, cut)
    else:
        names = sorted(set(groups))
        order = rng.permutation(len(names))
        cut = np.round(np.cumsum(fr)[:2] * len(names)).astype(int)
        which = np.empty(len(names), dtype=np.int64)
        for k, part in enumerate(np.split(order, cut)):
            which[part] = k
        lookup = {g: which[i] for i, g in enumerate(names)}
        label = np.array([lookup[g] for g in groups])
        parts = [np.flatnonzero(label == k) for k in range(3)]
    return {name: np.sort(p) for name, p in zip(SPLITS, parts)}


def save_splits(run_dir: Path, ids: Sequence[str], splits: Dict[str, np.ndarray]) -> None:
    """The id lists of each split, one per line, in the run directory (``split_train.txt``...)."""
    for name, idx in splits.items():
        (Path(run_dir) / f"split_{name}.txt").write_text("".join(f"{ids[i]}\n" for i in idx))


def load_splits(run_dir: Path, ids: Sequence[str]) -> Dict[str, np.ndarray]:
    pos = {sid: i for i, sid in enumerate(ids)}
    out = {}
    for name in SPLITS + ((HOLDOUT,) if (Path(run_dir) / f"split_{HOLDOUT}.txt").exists() else ()):
        wanted = (Path(run_dir) / f"split_{name}.txt").read_text().split()
        missing = [w for w in wanted if w not in pos]
        if missing:
            raise DataError(f"split {name} of {run_dir} names {len(missing)} ids absent from the data, e.g. {missing[:3]}")
        out[name] = np.array(sorted(pos[w] for w in wanted), dtype=np.int64)
    return out


# --------------------------------------------------------------------------------------------------------
# target normalisation
# --------------------------------------------------------------------------------------------------------
@dataclass
class Normalizer:
    """y_norm = (y - baseline(composition) - mean) / std; ``kind`` "mean_std" or "composition" (a linear
    per-element baseline: for per-atom targets, sum over elements of the atom fraction times a fitted
    per-element value; fitted by ridge on the training set). Elements absent from the training set get the
    value a linear fit of the fitted values on element properties (:data:`FALLBACK_PROPERTIES`, weighted
    by how often each element occurs) predicts for them, instead of zero."""
    kind: str = "mean_std"
    mean: float = 0.0
    std: float = 1.0
    per_element: Optional[List[float]] = None  # (MAX_Z + 1,) baseline per element (kind "composition")
    extensive: bool = False  # the baseline counts atoms (total energies) instead of atom fractions
    fitted: Optional[List[int]] = None  # atomic numbers whose baseline was fitted (the others: from properties)
    fallback_std: float = 0.0  # typical error of a property-based per-element value (target units, weighted)

    @classmethod
    def fit(cls, y: np.ndarray, counts: Optional[np.ndarray] = None, kind: str = "mean_std",
            extensive: bool = False, ridge: float = 1e-6) -> "Normalizer":
        """y: (n,) targets; counts: (n, MAX_Z + 1) atoms of each element (needed for "composition")."""
        per = None
        resid = np.asarray(y, dtype=np.float64)
        if kind == "composition":
            X = counts if extensive else counts / counts.sum(1, keepdims=True)
            used = np.flatnonzero(X.sum(0) > 0)
            A = X[:, used]
            w = np.linalg.solve(A.T @ A + ridge * np.eye(len(used)), A.T @ resid)
            per, fallback_std = _with_fallback(used, w, X[:, used].sum(0), counts.shape[1])
            resid = resid - X @ per
            per = per.tolist()
        elif kind == "none":  # the targets as they are
            return cls(kind, 0.0, 1.0)
        elif kind != "mean_std":
            raise ConfigError(f"unknown normalisation {kind!r}; use mean_std, composition or none")
        std = float(resid.std()) or 1.0
        if per is None:
            return cls(kind, float(resid.mean()), std, per, extensive)
        return cls(kind, float(resid.mean()), std, per, extensive, [int(z) for z in used], fallback_std)

    def extrapolation_std(self, counts: np.ndarray) -> np.ndarray:
        """(n,) the baseline's uncertainty from elements it did not fit (their values came from element
        properties): fallback_std x sqrt(sum over those elements of (atom fraction, or atoms if extensive)^2),
        target units; zeros where every element was fitted or without a composition baseline."""
        counts = np.asarray(counts, dtype=np.float64)
        if self.per_element is None or self.fitted is None:
            return np.zeros(len(counts))
        X = counts if self.extensive else counts / np.maximum(counts.sum(1, keepdims=True), 1e-300)
        unfitted = np.ones(X.shape[1], dtype=bool)
        unfitted[[z for z in self.fitted if z < X.shape[1]]] = False
        unfitted[0] = False
        return self.fallback_std * np.sqrt((X[:, unfitted] ** 2).sum(1))

    def baseline(self, counts: np.ndarray) -> np.ndarray:
        if self.per_element is None:
            return np.zeros(len(counts))
        X = counts if self.extensive else counts / counts.sum(1, keepdims=True)
        return X @ np.asarray(self.per_element)

    def forward(self, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (y - self.baseline(counts) - self.mean) / self.std

    def inverse(self, y_norm: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return y_norm * self.std + self.mean + self.baseline(counts)

    def to_dict(self) -> Dict:
        return dict(kind=self.kind, mean=self.mean, std=self.std, per_element=self.per_element, extensive=self.extensive,
                    fitted=self.fitted, fallback_std=self.fallback_std)


FALLBACK_PROPERTIES = DEFAULT_PROPERTIES  # the descriptor's default property channels


def _with_fallback(used: np.ndarray, w: np.ndarray, occurrence: np.ndarray, size: int,
                   ridge: float = 1e-3) -> np.ndarray:
    """(size,) per-element values: w at the used elements, elsewhere a property-based estimate (weighted
    ridge fit of w on the standardised element properties of the used elements); and that estimate's typical
    error, the occurrence-weighted RMS of (w - estimate) over the used elements."""
    P = property_weights(FALLBACK_PROPERTIES)[:, :size].T  # (size, K)
    sw = occurrence / occurrence.sum()
    A = P[used] * sw[:, None]
    beta = np.linalg.solve(P[used].T @ A + ridge * np.eye(P.shape[1]), A.T @ w)
    per = P @ beta
    rms = float(np.sqrt((sw * (w - per[used]) ** 2).sum()))
    per[used] = w
    per[0] = 0.0
    return per, rms


def element_counts(ff: FeatureFile, indices: Sequence[int]) -> np.ndarray:
    """(n, MAX_Z + 1) atoms of each element of the given structures (from the stored point clouds)."""
    if len(indices) and ("cloud/numbers" not in ff.h5 or not ff.h5["cloud/numbers"].shape[0]):
        raise DataError(f"{ff.path}: the composition (normalize: composition, element checks) needs the stored "
                         "point clouds; featurize with store: [..., cloud] or use normalize: mean_std")
    off = ff.offsets("cloud/numbers")
    numbers = ff.h5["cloud/numbers"][...]
    out = np.zeros((len(indices), MAX_Z + 1))
    for k, i in enumerate(indices):
        np.add.at(out[k], numbers[off[i]:off[i + 1]].astype(np.int64), 1)
    return out


# --------------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------------
CACHE_BLOCK = 64  # structures a cached dataset reads at once (neighbours in the file)
CACHE_BYTES = 4 * 2 ** 30  # item cache of a rank, shared out among its DataLoader workers


def _item_bytes(item: Dict) -> int:
    return 256 + sum(v.nbytes for v in item.values() if isinstance(v, np.ndarray))


class _FeatureDataset(torch.utils.data.Dataset):
    """Items of usable structures of a feature file, read lazily (per process) and cached after first use, up to
    ``cache_bytes`` per rank (:data:`CACHE_BYTES`, divided among the DataLoader workers; past it items are read
    each time): memory stays bounded whatever the number of structures."""

    def __init__(self, path, indices: Sequence[int], targets: Optional[np.ndarray], cache: bool, dtype):
        self.ff = FeatureFile(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        status = self.ff.status[self.indices] if len(self.indices) else np.array([])
        if (status != DONE).any():
            bad = self.indices[status != DONE][:5].tolist()
            raise DataError(f"structures {bad} of {path} failed featurization and cannot be used")
        self.targets = None if targets is None else np.asarray(targets, dtype=dtype)
        self._cache: Optional[Dict[int, Dict]] = {} if cache else None
        self.cache_bytes = CACHE_BYTES  # this rank's budget (an attribute: set it before the workers start)
        self.cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Dict:
        if self._cache is not None:
            item = self._cache.get(k)
            if item is None and self.cached_bytes < self._budget():  # the file block around it: one read each
                self._fill(int(self.indices[k]) // CACHE_BLOCK)
                item = self._cache.get(k)
            if item is not None:
                return item
        return self._item(k, self._read(int(self.indices[k])))

    def _budget(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.cache_bytes // (info.num_workers if info is not None else 1)

    def _item(self, k: int, item: Dict) -> Dict:
        if self.targets is not None:
            item[K.TARGET] = self.targets[k]
        return item

    def _fill(self, block: int) -> None:
        """Cache the items of this dataset among the file's structures of ``block`` (CACHE_BLOCK of them), read
        with one read per dataset, while the cache is within its budget: a DataLoader worker's cache is full
        after len / CACHE_BLOCK such reads."""
        if not hasattr(self, "_sorted"):  # this dataset's items by file structure: (file rows ascending, items)
            order = np.argsort(self.indices, kind="stable")
            self._sorted = (self.indices[order], order)
        rows, items = self._sorted
        lo = block * CACHE_BLOCK
        a, b = np.searchsorted(rows, [lo, lo + CACHE_BLOCK])
        budget = self._budget()
        with self.ff.reading_block(lo, lo + CACHE_BLOCK):
            for i, k in zip(rows[a:b].tolist(), items[a:b].tolist()):
                if self.cached_bytes >= budget:
                    break
                item = self._cache[k] = self._item(k, self._read(i))
                self.cached_bytes += _item_bytes(item)

    def _read(self, i: int) -> Dict:
        raise NotImplementedError

    _cost_of = None  # the ragged dataset whose row count per structure measures a sample's compute

    def costs(self) -> Optional[np.ndarray]:
        """(len,) each sample's relative compute (its rows of ``_cost_of``: stored reciprocal values or voxels,
        atoms), read once from the offsets: what the trainer balances ranks' shares of a batch by."""
        if self._cost_of is None:
            return None
        if not hasattr(self, "_costs"):
            self._costs = np.diff(self.ff.offsets(self._cost_of))[self.indices].astype(np.float64)
        return self._costs


class VoxelDataset(_FeatureDataset):
    """Structures of a feature file as VoxelNet inputs.

    Args:
        path: the feature file. indices: the structures to use (failed ones are refused).
        targets: (len(indices),) normalised targets (or None to predict).
        source: "voxels" (the stored voxels, no augmentation) or "reciprocal" (the stored reciprocal sets,
            to be binned on the device under random rotations).
        species: the model's channel list for element channels (default the file's).
        cache: keep every item in memory after its first read (small data sets).
    """

    def __init__(self, path, indices: Sequence[int], targets: Optional[np.ndarray] = None, source: str = "voxels",
                 species: Optional[Sequence[str]] = None, cache: bool = True):
        super().__init__(path, indices, targets, cache, np.float32)
        if source not in ("voxels", "reciprocal"):
            raise ValueError(f"unknown source {source!r}")
        self.source = source
        self._cost_of = "reciprocal/values" if source == "reciprocal" else "voxels/values"
        self.species = list(species) if species is not None else None
        self.per_element = self.ff.per_element

    def _read(self, i: int) -> Dict:
        ch = self.ff.channel_index(i, self.species)
        item = {K.INDEX: i, K.ITEM_CHANNELS: ch}
        if self.source == "voxels":
            sv = self.ff.sparse_voxels(i, self.species)
            item.update({K.VOXEL_INDEX: sv.index, K.VOXEL_VALUES: sv.values, K.GRID: int(self.ff.params["n"])})
        else:  # the half set (one of each Friedel pair): half the bytes to cache, collate and send
            rs = self.ff.reciprocal(i, self.species, half=True)
            # G in float32 (the batch's dtype: binning decides voxel edges from it in float64); amp (c, P) in
            # column-major order: the collation copies each point's channel values contiguously
            item.update({K.RECIPROCAL_G: rs.G.astype(np.float32),
                         K.RECIPROCAL_AMP: np.asfortranarray(rs.amp, dtype=np.float32), K.RECIPROCAL_HALF: rs.half})
        return item

    def collate(self, items: List[Dict]) -> Dict:
        """Batch dict: compact voxels with channel ids (element channels) or dense voxels; or reciprocal sets."""
        batch: Dict = {K.INDEX: torch.from_numpy(np.fromiter((it[K.INDEX] for it in items), np.int64, len(items)))}
        if K.TARGET in items[0]:
            batch[K.TARGET] = torch.from_numpy(np.array([it[K.TARGET] for it in items], dtype=np.float32))
        if self.source == "voxels":
            n = items[0][K.GRID]
            if self.per_element:  # only the structures' own channels, padded to the batch's largest set
                ids = torch.from_numpy(padded_rows([it[K.ITEM_CHANNELS] for it in items]))
                vox = torch.zeros(len(items), ids.shape[1], n ** 3)
                for b, it in enumerate(items):
                    m = len(it[K.ITEM_CHANNELS])
                    vox[b, :m, torch.from_numpy(it[K.VOXEL_INDEX].astype(np.int64))] = torch.from_numpy(it[K.VOXEL_VALUES])
                batch[K.CHANNEL_IDS] = ids
            else:
                vox = torch.zeros(len(items), self.ff.n_channels(), n ** 3)
                for b, it in enumerate(items):
                    vox[b, torch.from_numpy(it[K.ITEM_CHANNELS])[:, None],
                        torch.from_numpy(it[K.VOXEL_INDEX].astype(np.int64))[None, :]] = torch.from_numpy(it[K.VOXEL_VALUES])
            batch[K.VOXELS] = vox.view(len(items), -1, n, n, n)
        else:  # element channels: bin into each structure's own slots (compact), ids alongside
            channels = [it[K.ITEM_CHANNELS] for it in items]
            batch[K.RECIPROCAL] = pack_reciprocal([it[K.RECIPROCAL_G] for it in items], [it[K.RECIPROCAL_AMP] for it in items],
                                                  None if self.per_element else channels,
                                                  bool(items[0].get(K.RECIPROCAL_HALF, False)) if items else False)
            if self.per_element:
                batch[K.CHANNEL_IDS] = torch.from_numpy(padded_rows(channels))
        return batch


class CloudDataset(_FeatureDataset):
    """Structures of a feature file as atom clouds with neighbour lists (for AtomCloudNet).

    Neighbour lists within ``cutoff`` (periodic images for crystals) are computed once per structure, in
    numpy, when an item is first read, and cached with it.
    """

    def __init__(self, path, indices: Sequence[int], targets: Optional[np.ndarray], cutoff: float, cache: bool = True):
        super().__init__(path, indices, targets, cache, np.float64)
        if "cloud/positions" not in self.ff.h5 or self.ff.h5["cloud/positions"].shape[0] == 0:
            raise DataError(f"{path} stores no point clouds: featurize with --store cloud")
        self.cutoff = float(cutoff)
        self._cost_of = "cloud/numbers"  # atoms (the edges within the cutoff grow with them)

    def _read(self, i: int) -> Dict:
        pos, z = self.ff.cloud(i)
        lattice = self.ff.row("structures/lattice", i)
        return cloud_item(i, pos, z, None if np.isnan(lattice).any() else lattice, self.cutoff)

    @staticmethod
    def collate(items: List[Dict]) -> Dict:
        return collate_clouds(items)


def cloud_item(index: int, positions: np.ndarray, numbers: np.ndarray, lattice: Optional[np.ndarray],
               cutoff: float) -> Dict:
    """One structure's cloud: positions (Angstrom), numbers and its neighbour list."""
    from .neighbors import neighbor_list
    src, dst, shift = neighbor_list(positions, cutoff, lattice)
    return {K.INDEX: index, K.POSITIONS: positions, K.NUMBERS: numbers, K.EDGE_SRC: src, K.EDGE_DST: dst,
            K.EDGE_SHIFT: shift}


def collate_clouds(items: List[Dict]) -> Dict:
    """Concatenate clouds (no padding): atom indices of edges are offset by the atoms before them."""
    counts = [len(it[K.NUMBERS]) for it in items]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    batch = {
        K.INDEX: torch.tensor([it[K.INDEX] for it in items], dtype=torch.int64),
        K.POSITIONS: torch.from_numpy(np.concatenate([it[K.POSITIONS] for it in items])),  # float64: cast by the task
        K.NUMBERS: torch.from_numpy(np.concatenate([it[K.NUMBERS] for it in items]).astype(np.int64)),
        K.ATOM_STRUCTURE: torch.from_numpy(np.repeat(np.arange(len(items)), counts)),
        K.EDGE_SRC: torch.from_numpy(np.concatenate([it[K.EDGE_SRC] + o for it, o in zip(items, offsets)])),
        K.EDGE_DST: torch.from_numpy(np.concatenate([it[K.EDGE_DST] + o for it, o in zip(items, offsets)])),
        K.EDGE_SHIFT: torch.from_numpy(np.concatenate([it[K.EDGE_SHIFT] for it in items])),
        K.NATOMS: torch.tensor(counts, dtype=torch.int64),
    }
    if K.TARGET in items[0]:
        batch[K.TARGET] = torch.tensor([it[K.TARGET] for it in items], dtype=torch.float32)
    return batch
