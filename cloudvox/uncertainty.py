"""Is a structure like the training data? A composition descriptor's distance to the training set.

Every structure is described by the atom-fraction-weighted mean, spread, minimum and maximum of its elements'
standardised properties (:data:`PROPERTIES`, :func:`cloudvox.elements.property_weights`): a fixed-length
vector that any model's training set covers, periodic or not. A :class:`DomainReference` keeps the training
set's vectors (a random subsample of at most ``max_points``, standardised) and a threshold: the ``quantile``
of the validation structures' distances to their nearest training vector. A structure farther than that from
every training vector is unlike the training data (flagged by :func:`cloudvox.inference.domain_flags`); the
validation set calibrates the threshold, so that about 1 - ``quantile`` of structures like the training data
are flagged.

The reference is JSON-able (a checkpoint's ``meta["domain"]``): about 30 kB per 1000 points.
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .elements import property_weights

PROPERTIES = ("Z", "row", "group", "X", "radius", "ionization", "affinity")


def composition_features(counts: np.ndarray, properties=PROPERTIES, chunk: int = 4096) -> np.ndarray:
    """(n, 4 K) descriptor of compositions: mean, standard deviation, minimum and maximum over each structure's
    atoms of the K standardised element properties (dimensionless).

    counts: (n, MAX_Z + 1) atoms of each element per structure (structures without atoms give zeros);
    computed ``chunk`` rows at a time."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) > chunk:
        return np.concatenate([composition_features(counts[a:a + chunk], properties, chunk)
                               for a in range(0, len(counts), chunk)])
    P = property_weights(properties)[:, :counts.shape[1]]  # (K, Z)
    total = counts.sum(1, keepdims=True)
    frac = counts / np.where(total > 0, total, 1.0)  # (n, Z)
    mean = frac @ P.T  # (n, K)
    std = np.sqrt(np.maximum(frac @ (P.T ** 2) - mean ** 2, 0.0))
    present = counts > 0
    big = np.where(present[:, None, :], P[None], np.inf)  # (n, K, Z)
    lo = big.min(2)
    hi = np.where(present[:, None, :], P[None], -np.inf).max(2)
    lo[~np.isfinite(lo)], hi[~np.isfinite(hi)] = 0.0, 0.0
    return np.concatenate([mean, std, lo, hi], axis=1)


def nearest_distance(x: np.ndarray, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(n,) Euclidean distance of each row of x (n, d) to its nearest row of points (m, d), in chunks of
    ``chunk`` rows (memory ``chunk`` x m)."""
    out = np.empty(len(x))
    p2 = (points ** 2).sum(1)
    for a in range(0, len(x), chunk):
        xa = x[a:a + chunk]
        d2 = (xa ** 2).sum(1)[:, None] + p2[None, :] - 2.0 * xa @ points.T
        out[a:a + chunk] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


@dataclass
class DomainReference:
    """The training set's composition descriptors (standardised, subsampled) and the distance threshold."""
    center: List[float]
    scale: List[float]
    points: List[List[float]]
    threshold: float
    quantile: float

    @classmethod
    def fit(cls, train_counts: np.ndarray, val_counts: np.ndarray, quantile: float = 0.99,
            max_points: int = 2000, seed: int = 0) -> Optional["DomainReference"]:
        """From (n, MAX_Z + 1) element counts of the training and validation structures; None without
        validation structures (nothing to calibrate the threshold on)."""
        if len(train_counts) == 0 or len(val_counts) == 0:
            return None
        f = composition_features(train_counts)
        center, scale = f.mean(0), f.std(0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = (f - center) / scale
        z = np.unique(np.round(z, 4), axis=0)
        if len(z) > max_points:
            z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
        dv = nearest_distance((composition_features(val_counts) - center) / scale, z)
        return cls(center.round(6).tolist(), scale.round(6).tolist(), z.tolist(),
                   float(np.quantile(dv, quantile)), float(quantile))

    def distance(self, counts: np.ndarray) -> np.ndarray:
        """(n,) distance of each structure's standardised composition descriptor to the nearest training one."""
        z = (composition_features(counts) - np.asarray(self.center)) / np.asarray(self.scale)
        return nearest_distance(z, np.asarray(self.points))

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> Optional["DomainReference"]:
        return cls(**d) if d else None


def fit_uncertainty(residuals: np.ndarray, spread: np.ndarray, distance: np.ndarray) -> Dict[str, float]:
    """Calibrate sigma^2 = spread^2 + floor^2 + (slope * distance)^2 on validation residuals.

    residuals, spread (the ensemble's standard deviation, 0 for one model), distance (:meth:`DomainReference.distance`):
    (n,) each, target units except distance (dimensionless). Maximises the Gaussian likelihood of the residuals
    over floor and slope (a log-spaced grid, then a finer one around its best point), so that the uncertainty
    grows with the distance to the training set as far as the validation errors support it. Returns
    dict(floor=..., slope=...) in target units."""
    r2, s2, d2 = (np.asarray(a, dtype=np.float64) ** 2 for a in (residuals, spread, distance))
    ok = np.isfinite(r2) & np.isfinite(s2) & np.isfinite(d2)
    r2, s2, d2 = r2[ok], s2[ok], d2[ok]
    scale = float(np.sqrt(r2.mean())) if len(r2) and r2.mean() > 0 else 1.0
    dmax = float(np.sqrt(d2.max())) if len(d2) and d2.max() > 0 else 1.0

    def nll(f, a):  # (F, A) grids -> (F, A) mean negative log-likelihood
        var = s2[None, None] + f[..., None] ** 2 + a[..., None] ** 2 * d2[None, None]
        return (np.log(var) + r2[None, None] / var).mean(-1)

    floors = scale * np.logspace(-3, 1, 41)
    slopes = np.concatenate([[0.0], scale / dmax * np.logspace(-3, 2, 40)])
    F, A = np.meshgrid(floors, slopes, indexing="ij")
    i, j = np.unravel_index(np.argmin(nll(F, A)), F.shape)
    f0, a0 = floors[i], slopes[j]
    fine_f = f0 * np.logspace(-0.1, 0.1, 21)
    fine_a = np.unique(np.concatenate([[0.0], (a0 if a0 > 0 else slopes[1]) * np.logspace(-0.15, 0.15, 21)]))
    F, A = np.meshgrid(fine_f, fine_a, indexing="ij")
    i, j = np.unravel_index(np.argmin(nll(F, A)), F.shape)
    return dict(floor=float(fine_f[i]), slope=float(fine_a[j]))


CALIBRATION_FORMAT = 2  # uncertainty.json: 2 adds the method, the extrapolation factor and the scale
ONE_SIGMA = 0.6826894921370859  # the share of a Gaussian within one standard deviation


def fit_uncertainty_folds(val: Sequence[np.ndarray], held: Sequence[np.ndarray]) -> Dict[str, float]:
    """Calibrate sigma = sqrt(scale^2 (spread^2 + floor^2 + (slope distance)^2) + (factor extrapolation)^2) on
    the validation split and on residuals of held-out chemistry (the cross-validation folds' predictions of the
    structures whose elements their training lacked, :mod:`cloudvox.calibration`).

    val, held: (residuals, spread, distance, extrapolation), (n,) arrays each, target units except distance
    (dimensionless). floor and slope are fitted on the validation split as :func:`fit_uncertainty` fits them
    (near the training set); then ``scale`` and ``factor`` are set so that |residual| <= sigma for 68.3 % of
    the validation residuals and 68.3 % of the held-out ones (split-conformal, one factor per regime,
    alternated until both hold): a 1-sigma on both sides of the training set's edge, with the growth off it
    carried by the baseline's extrapolation term (zero for structures of fitted elements) and learned from
    extrapolation. Returns dict(floor, slope, scale, factor)."""
    def clean(parts):
        parts = [np.asarray(x, dtype=np.float64) for x in parts]
        ok = np.logical_and.reduce([np.isfinite(x) for x in parts])
        return [x[ok] for x in parts]

    (rv, sv, dv, ev), (rh, sh, dh, eh) = clean(val), clean(held)
    base = fit_uncertainty(rv, sv, dv)
    inner = [s ** 2 + base["floor"] ** 2 + (base["slope"] * d) ** 2 for s, d in ((sv, dv), (sh, dh))]
    scale = factor = 1.0

    def solve(r, fixed, varying):  # the smallest c with |r| <= sqrt(fixed + c^2 varying) for ONE_SIGMA of r
        if not len(r) or not varying.any():
            return 1.0
        lo, hi = -12.0, 12.0  # log c
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            covered = (r ** 2 <= fixed + np.exp(2 * mid) * varying).mean()
            lo, hi = (lo, mid) if covered >= ONE_SIGMA else (mid, hi)
        return float(np.exp(hi))

    for _ in range(10):
        scale = solve(rv, (factor * ev) ** 2, inner[0])
        factor = solve(rh, scale ** 2 * inner[1], eh ** 2)
    return dict(base, scale=scale, factor=factor)


def uncertainty(spread: np.ndarray, distance: Optional[np.ndarray], calibration: Optional[Dict],
                extrapolation: Optional[np.ndarray] = None) -> np.ndarray:
    """(n,) sigma = sqrt(scale^2 (spread^2 + floor^2 + (slope * distance)^2) + (factor * extrapolation)^2)
    (target units): the ensemble's disagreement, the validation error not explained by it (floor), its growth
    with the distance to the training set, and the composition baseline's error on elements it never fitted
    (:meth:`cloudvox.data.Normalizer.extrapolation_std`), as calibrated (:func:`fit_uncertainty`: scale and
    factor 1; :func:`fit_uncertainty_folds`). Without a calibration (or a distance): the spread and the
    extrapolation term only."""
    cal = calibration or {}
    var = np.asarray(spread, dtype=np.float64) ** 2
    if calibration and distance is not None:
        var = var + calibration["floor"] ** 2 + (calibration["slope"] * np.asarray(distance)) ** 2
    var = cal.get("scale", 1.0) ** 2 * var
    if extrapolation is not None:
        var = var + (cal.get("factor", 1.0) * np.asarray(extrapolation, dtype=np.float64)) ** 2
    return np.sqrt(var)


def element_folds(counts: np.ndarray, k: int, common: float = 0.5) -> List[List[str]]:
    """Leave-chemistry-out folds: the elements of the structures (counts (n, MAX_Z + 1)) in k groups of
    neighbouring periodic-table columns (families), each holding about as many structures as the others.

    Elements in more than ``common`` of the structures (the O of oxides) are in no group: holding them out
    would leave nothing. Sorted by (group, row, Z) and cut into k runs of about equal structure counts, so a
    fold leaves out whole families, as new chemistry does (not one element whose neighbour stays)."""
    from .elements import SYMBOLS, property_weights
    counts = np.asarray(counts)
    present = (counts > 0).sum(0)
    n = max(len(counts), 1)
    zs = [z for z in np.flatnonzero(present) if z > 0 and present[z] <= common * n]
    if not zs:
        return []
    group, row = (property_weights((name,))[0] for name in ("group", "row"))  # standardised: order kept
    zs.sort(key=lambda z: (group[z], row[z], z))
    share = np.cumsum([present[z] for z in zs]) / sum(present[z] for z in zs)
    cut = np.minimum((share * k - 1e-9).astype(int), k - 1)
    return [[SYMBOLS[z] for z, c in zip(zs, cut) if c == i] for i in range(k) if (cut == i).any()]
