"""Regenerate cloudvox/resources/elements.csv (element properties for property-weighted channels) from pymatgen.

Columns: Z, symbol, row, group, X (Pauling electronegativity), radius (atomic radius, Angstrom), mendeleev
(Mendeleev number), ionization (first ionization energy, eV), affinity (electron affinity, eV), mass (u).
Missing values (noble gases' electronegativity, heavy elements' radii) are left empty; cloudvox fills them
with the column mean. Usage: python scripts/make_element_table.py > cloudvox/resources/elements.csv
"""
import math
import warnings

from pymatgen.core.periodic_table import Element

FIELDS = (("row", "row"), ("group", "group"), ("X", "X"), ("radius", "atomic_radius"), ("mendeleev", "mendeleev_no"),
          ("ionization", "ionization_energy"), ("affinity", "electron_affinity"), ("mass", "atomic_mass"))


def value(element, attr):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = float(getattr(element, attr))
    except Exception:
        return ""
    return f"{v:.6g}" if math.isfinite(v) else ""


print("Z,symbol," + ",".join(name for name, _ in FIELDS))
for z in range(1, 104):
    e = Element.from_Z(z)
    print(f"{z},{e.symbol}," + ",".join(value(e, attr) for _, attr in FIELDS))
