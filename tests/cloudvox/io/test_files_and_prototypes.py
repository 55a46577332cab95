import numpy as np
import pytest

from cloudvox.io import from_pymatgen, iter_records, read_files, read_prototypes, to_pymatgen
from cloudvox.structure import Structure

pymatgen = pytest.importorskip("pymatgen.core")


def test_prototype_library_has_288_structures():
    errors = []
    protos = read_prototypes(errors=errors)
    assert len(protos) + len(errors) == 288 and len(protos) >= 280
    assert all(s.is_periodic for s in protos)
    assert len({s.id for s in protos}) == len(protos)
    assert "pearson" in protos[0].meta


def test_cif_poscar_xyz_roundtrip_and_bad_file(tmp_path):
    s = Structure(["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                  np.eye(3) * 3.9, id="sto")
    pmg = to_pymatgen(s)
    pmg.to(filename=str(tmp_path / "sto.cif"))
    pmg.to(filename=str(tmp_path / "POSCAR"))
    mol = pymatgen.Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    mol.to(filename=str(tmp_path / "water.xyz"))
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a nonsense\n")
    errors = []
    got = read_files(sorted(tmp_path.iterdir()), errors=errors)
    assert len(errors) == 1 and "broken" in errors[0].error
    by_id = {g.id: g for g in got}
    for key in ("sto", "POSCAR"):
        g = by_id[key]
        assert g.formula == "O3SrTi" and g.volume == pytest.approx(3.9 ** 3, rel=1e-6)
    assert not by_id["water"].is_periodic and by_id["water"].formula == "H2O"
    assert from_pymatgen(pmg, id="x").formula == "O3SrTi"
    assert sum(1 for _ in iter_records("files", [tmp_path])) == 4
