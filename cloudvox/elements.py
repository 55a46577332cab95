"""Chemical elements: symbols, atomic numbers (Z) and the conversions between them."""
from typing import Iterable, Tuple

import numpy as np

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


class UnknownElementError(ValueError):
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
