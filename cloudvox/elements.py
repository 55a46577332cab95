"""Chemical elements: symbols, atomic numbers (Z), the conversions between them, and element properties."""
import csv
import functools
import io
from importlib import resources
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

from .errors import ConfigError, UserError

SYMBOLS: Tuple[str, ...] = (
    "X",  # Z = 0 placeholder, never a valid atom
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
    "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
    "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn",
    "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr",
    "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
)
MAX_Z = len(SYMBOLS) - 1
_Z_OF = {s: z for z, s in enumerate(SYMBOLS) if z > 0}


class UnknownElementError(UserError, ValueError):
    """An element symbol or atomic number that is not a chemical element."""


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol ('Ti' -> 22); accepts AFLOW's pseudopotential suffixes ('Sr_sv')."""
    key = str(symbol).strip().split("_")[0]
    key = key[:1].upper() + key[1:].lower()
    try:
        return _Z_OF[key]
    except KeyError:
        raise UnknownElementError(f"unknown element {symbol!r}") from None


def symbol(z: int) -> str:
    """Element symbol of an atomic number (22 -> 'Ti')."""
    if not 1 <= int(z) <= MAX_Z:
        raise UnknownElementError(f"unknown atomic number {z!r}")
    return SYMBOLS[int(z)]


def atomic_numbers(symbols: Iterable[str]) -> np.ndarray:
    """(n,) int64 atomic numbers of a sequence of symbols."""
    return np.array([atomic_number(s) for s in symbols], dtype=np.int64)


PROPERTY_NAMES = ("row", "group", "X", "radius", "mendeleev", "ionization", "affinity", "mass")


@functools.lru_cache(maxsize=None)
def _property_table() -> Dict[str, np.ndarray]:
    """Raw element properties from ``cloudvox/resources/elements.csv`` (NaN where unknown), indexed by Z."""
    text = resources.files("cloudvox").joinpath("resources/elements.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    table = {}
    for name in PROPERTY_NAMES:
        col = np.full(MAX_Z + 1, np.nan)
        for r in rows:
            col[int(r["Z"])] = float(r[name]) if r[name] else np.nan
        table[name] = col
    table["Z"] = np.arange(MAX_Z + 1, dtype=np.float64)
    table["one"] = np.ones(MAX_Z + 1)
    return table


def property_weights(names: Sequence[str]) -> np.ndarray:
    """(K, MAX_Z + 1) per-element weights for property-weighted density channels.

    Each property is standardised over the elements that have it (zero mean, unit variance over Z = 1..103),
    and unknown values are set to the mean (0). "one" is 1 for every element (the total density), "Z" the
    atomic number divided by its standard deviation (the X-ray-like structure factor, unshifted).
    Names: "one", "Z" and the columns of ``cloudvox/resources/elements.csv`` (:data:`PROPERTY_NAMES`).
    """
    table = _property_table()
    out = np.zeros((len(names), MAX_Z + 1))
    for k, name in enumerate(names):
        if name not in table:
            raise ConfigError(f"unknown element property {name!r}; choose from {['one', 'Z'] + list(PROPERTY_NAMES)}")
        col = table[name].copy()
        known = np.isfinite(col[1:104])
        if name == "one":
            out[k] = col
            continue
        vals = col[1:104][known]
        mean, std = (0.0, vals.std()) if name == "Z" else (vals.mean(), vals.std())
        col = np.where(np.isfinite(col), (col - mean) / std, 0.0)
        col[0] = 0.0
        out[k] = col
    return out
