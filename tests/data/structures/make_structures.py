"""Regenerates the quickstart's own-structure files from the committed AFLOW fixture (real AFLOW entries):

- perovskites.extxyz: the first 240 entries of ../aflow/oxide_perovskites_cP5_300.jsonl as extended XYZ
  (ASE), with ``enthalpy_atom`` (eV/atom), ``compound`` and ``id`` (the auid) in each frame's info;
- new/: three of the other 60 entries (the first of three distinct compositions), as a user's new
  structures to predict: COMPOUND.cif and POSCAR_COMPOUND written by pymatgen, COMPOUND.extxyz by ASE.

    .venv/bin/python tests/data/structures/make_structures.py
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    import ase
    import ase.io
    from cloudvox.io import structure_from_aflow, to_pymatgen
    entries = [json.loads(line) for line in (HERE.parent / "aflow" / "oxide_perovskites_cP5_300.jsonl").open()]

    def atoms(entry):
        s = structure_from_aflow(entry)
        a = ase.Atoms(numbers=s.numbers, positions=s.cart_coords, cell=s.lattice, pbc=True)
        a.info.update(id=entry["auid"], compound=entry["compound"], enthalpy_atom=entry["enthalpy_atom"])
        return a

    ase.io.write(HERE / "perovskites.extxyz", [atoms(e) for e in entries[:240]], format="extxyz")
    rest = entries[240:]
    pick = {}
    for e in rest:
        key = "".join(sorted(e["species"]))
        pick.setdefault(key, e)
    chosen = list(pick.values())[:3]
    (HERE / "new").mkdir(exist_ok=True)
    to_pymatgen(structure_from_aflow(chosen[0])).to(filename=str(HERE / "new" / f"{chosen[0]['compound']}.cif"))
    to_pymatgen(structure_from_aflow(chosen[1])).to(filename=str(HERE / "new" / f"POSCAR_{chosen[1]['compound']}"),
                                                     fmt="poscar")
    ase.io.write(HERE / "new" / f"{chosen[2]['compound']}.extxyz", [atoms(chosen[2])], format="extxyz")
    print(json.dumps([(c["auid"], c["compound"], c["enthalpy_atom"]) for c in chosen]))


if __name__ == "__main__":
    main()
