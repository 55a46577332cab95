"""The uncertainty's fit and the leave-chemistry-out folds (synthetic data, seeded)."""
import numpy as np
import pytest

from cloudvox.elements import MAX_Z, atomic_numbers
from cloudvox.uncertainty import element_folds, fit_uncertainty, fit_uncertainty_folds, uncertainty


def _synthetic(rng, n_val=400, n_held=600):
    """Validation residuals near the training set (small distance, no extrapolation) and held-out residuals far
    from it, both Gaussian with sigma^2 = 0.1^2 + (0.05 d)^2 + (2 e)^2 (eV/atom)."""
    d = np.concatenate([rng.uniform(0, 1, n_val), rng.uniform(2, 8, n_held)])
    e = np.concatenate([np.zeros(n_val), rng.uniform(0.05, 0.6, n_held)])
    sigma = np.sqrt(0.1 ** 2 + (0.05 * d) ** 2 + (2 * e) ** 2)
    held = np.arange(n_val + n_held) >= n_val
    return rng.normal(0, sigma), d, e, held


def _parts(r, d, e, held):
    zero = np.zeros(len(r))
    return (r[~held], zero[~held], d[~held], e[~held]), (r[held], zero[held], d[held], e[held])


def test_fitted_on_held_out_residuals_the_uncertainty_covers_both_regimes(rng):
    """Fitted on validation and held-out residuals, |error| <= sigma for about 68 % of each regime of a fresh
    sample (the binomial spread of 400-600 samples is 2-3 %), median |error| / sigma near a Gaussian's 0.67;
    fitted on the validation part alone, the held-out errors are far from covered."""
    r, d, e, held = _synthetic(rng)
    cal = fit_uncertainty_folds(*_parts(r, d, e, held))
    assert cal["factor"] > 1  # the baseline's own estimate of its extrapolation error is too small here
    test_r, test_d, test_e, test_held = _synthetic(np.random.default_rng(7))
    sigma = uncertainty(np.zeros_like(test_r), test_d, cal, test_e)
    for part in (test_held, ~test_held):
        ratio = np.abs(test_r[part]) / sigma[part]
        assert 0.61 <= (ratio <= 1).mean() <= 0.76
        assert 0.52 <= np.median(ratio) <= 0.82
    before = fit_uncertainty(r[~held], np.abs(e[~held]), d[~held])
    sigma_before = uncertainty(np.zeros_like(test_r), test_d, before, test_e)
    assert (np.abs(test_r[test_held]) <= sigma_before[test_held]).mean() < 0.5


def test_heavy_tails_are_covered_at_the_one_sigma_rate(rng):
    """Student-t residuals (3 degrees of freedom): 68.3 % covered in each regime (split-conformal), the median
    |error| / sigma then 0.64 (a Gaussian's 0.67)."""
    r, d, e, held = _synthetic(rng)
    r = np.abs(r) / np.abs(r).mean() * np.abs(rng.standard_t(3, len(r))) * np.sign(r) * 0.3
    cal = fit_uncertainty_folds(*_parts(r, d, e, held))
    ratio = np.abs(r) / uncertainty(np.zeros_like(r), d, cal, e)
    for part in (held, ~held):
        assert (ratio[part] <= 1).mean() == pytest.approx(0.683, abs=0.01)
        assert 0.45 <= np.median(ratio[part]) <= 0.8


def test_a_calibration_of_format_1_reads_as_before():
    """floor and slope only: no scale, no extrapolation factor (the extrapolation term counts once)."""
    old = dict(floor=0.1, slope=0.2, threshold=0.5, quantile=0.95)
    got = uncertainty(np.array([0.3]), np.array([2.0]), old, np.array([0.4]))
    assert got[0] == pytest.approx(np.sqrt(0.09 + 0.01 + 0.16 + 0.16), rel=1e-12)


def _counts(formulas):
    out = np.zeros((len(formulas), MAX_Z + 1))
    for k, els in enumerate(formulas):
        for el in els:
            out[k, atomic_numbers([el])[0]] += 1
    out[:, atomic_numbers(["O"])[0]] = 3
    return out


def test_element_folds_are_families_of_equal_weight_and_never_the_common_element():
    """ABO3 compounds: O (in every one) is in no fold; every other element in exactly one; the folds are runs
    along the periodic table's columns (fold k's columns come before fold k + 1's) and hold about equal numbers
    of compounds."""
    a_site = ["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba"]
    b_site = ["Ti", "Zr", "Hf", "Nb", "Ta", "Fe", "Co", "Ni", "Al", "Ga", "Sn", "Pb"]
    counts = _counts([(a, b) for a in a_site for b in b_site])
    folds = element_folds(counts, 4)
    assert len(folds) == 4
    flat = [el for f in folds for el in f]
    assert sorted(flat) == sorted(a_site + b_site) and "O" not in flat
    group = {"Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1, "Mg": 2, "Ca": 2, "Sr": 2, "Ba": 2, "Ti": 4, "Zr": 4,
             "Hf": 4, "Nb": 5, "Ta": 5, "Fe": 8, "Co": 9, "Ni": 10, "Al": 13, "Ga": 13, "Sn": 14, "Pb": 14}
    for f, g in zip(folds, folds[1:]):
        assert max(group[x] for x in f) <= min(group[x] for x in g)
    held = [(counts[:, atomic_numbers(f)] > 0).any(1).sum() for f in folds]
    assert max(held) <= 2 * min(held)
    assert element_folds(_counts([("Sr", "Ti")] * 3), 4) == []  # nothing rare enough to hold out
