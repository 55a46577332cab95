"""The ASE reader (extxyz with info properties, ASE databases, bad frames) and the one format dispatch
(:class:`cloudvox.io.Source`): a streamed line index equal to a plain reading of the file."""
import json

import ase  # a declared dependency (requirements/base.txt): the set-up installs it
import ase.db
import ase.io
import numpy as np
import pytest

from cloudvox.io import Source, format_of, iter_records, read_aflow, read_ase
from cloudvox.io.sources import _line_index
from tests.conftest import fixture_file

EXTXYZ = fixture_file("structures", "perovskites.extxyz")


def test_extxyz_frames_with_info_properties_equal_the_aflow_entries(perovskites_path):
    structures = read_ase([EXTXYZ])
    aflow = {s.id: s for s in read_aflow(perovskites_path)}
    assert len(structures) == 240
    for s in structures[::17]:
        a = aflow[s.id]  # ids come from info["id"]
        assert s.props["enthalpy_atom"] == a.props["enthalpy_atom"] and s.meta["compound"] == a.meta["compound"]
        assert s.is_periodic and sorted(s.symbols) == sorted(a.symbols)
        np.testing.assert_allclose(s.lattice, a.lattice, atol=1e-6)
        np.testing.assert_allclose(np.sort(s.cart_coords, axis=0), np.sort(a.cart_coords, axis=0), atol=1e-6)


def test_ase_database_rows_with_key_value_pairs_and_energy(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    path = tmp_path / "mine.db"
    frames = ase.io.read(EXTXYZ, index=":5")
    with ase.db.connect(str(path)) as db:
        for k, atoms in enumerate(frames):
            atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - k)
            db.write(atoms, key_value_pairs=dict(band_gap=1.5 + k, label=f"s{k}"))
        db.write(ase.Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]))  # a molecule, no properties
    records = list(iter_records("ase", [path]))
    assert [r.ok for r in records] == [True] * 6
    s = records[1].structure
    assert s.props == {"band_gap": 2.5, "energy": -11.0} and s.meta["label"] == "s1" and s.id == "mine:2"
    assert not records[5].structure.is_periodic and len(records[5].structure) == 2
    assert format_of(path) == "ase" and len(Source("ase", [path])) == 6


def test_bad_frames_are_records_with_reasons(tmp_path):
    slab = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[3, 3, 10], pbc=[True, True, False])
    overlapping = ase.Atoms("O2", positions=[[0, 0, 0], [0.01, 0, 0]])
    good = ase.Atoms("O2", positions=[[0, 0, 0], [1.2, 0, 0]])
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [good, slab, overlapping, good], format="extxyz")
    records = list(iter_records("ase", [path]))
    assert [r.ok for r in records] == [True, False, False, True]
    assert "partly periodic" in records[1].error and "mixed:1" in records[1].error
    assert "apart" in records[2].error
    (tmp_path / "broken.extxyz").write_text("3\nLattice=\"1 0 0\" nonsense\nO 0 0\n")
    broken = list(iter_records("ase", [tmp_path / "broken.extxyz"]))
    assert len(broken) == 1 and not broken[0].ok and "cannot read broken.extxyz" in broken[0].error


def test_format_of_each_kind_of_file(tmp_path, perovskites_path):
    (tmp_path / "plain.xyz").write_text("2\nwater fragment\nO 0 0 0\nH 0.96 0 0\n")
    (tmp_path / "gdb.xyz").write_text("2\ngdb 1 1 2 3\nC 0 0 0 0\nH 1 0 0 0\n")
    assert format_of(perovskites_path) == "aflow" and format_of(EXTXYZ) == "ase"
    assert format_of(tmp_path / "plain.xyz") == "files" and format_of(tmp_path / "gdb.xyz") == "qm9"
    assert format_of(fixture_file("structures", "new", "O3Pb1Rh1.cif")) == "files"
    with pytest.raises(ValueError, match="unknown input format 'xyz'.*'ase'"):
        Source("xyz", [EXTXYZ])


def reference_index(path, skip_header):
    """The plain reading: every line of the file, with its offsets and number."""
    data, out, pos = open(path, "rb").read(), [], 0
    for k, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            out.append((pos, pos + len(line), k))
        pos += len(line) + 1
    return out[1:] if skip_header and out and out[0][2] == 1 else out


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 24])
def test_streamed_line_index_equals_a_plain_reading(tmp_path, rng, chunk):
    path = tmp_path / "lines.txt"
    for trial in range(20):
        lines = [["", "  ", "x" * int(rng.integers(1, 40)), "ab"][int(rng.integers(0, 4))]
                 for _ in range(int(rng.integers(0, 50)))]
        path.write_text("\n".join(lines) + ("\n" if trial % 2 else ""))
        for skip in (False, True):
            expected = reference_index(path, skip)
            for limit in (None, 0, 1, 5):
                s, e, n = _line_index(path, skip, limit=limit, chunk=chunk)
                assert list(zip(s.tolist(), e.tolist(), n.tolist())) == expected[:limit], (trial, skip, limit)


def test_a_limit_indexes_only_what_it_needs(perovskites_path, tmp_path):
    big = tmp_path / "twice.jsonl"
    big.write_text(perovskites_path.read_text() * 2)
    src = Source("aflow", [big, perovskites_path], limit=7)
    assert len(src) == 7 and src.sources == [str(big)]  # the second file is never opened
    ids = [r.id for r in src]
    assert ids == [json.loads(line)["auid"] for line in perovskites_path.read_text().splitlines()[:7]]


def test_a_source_made_from_another_ranks_index_reads_the_same_records(perovskites_path, tmp_path):
    """The featurize job indexes on rank 0 and passes the index on: the same records without reading the file."""
    from cloudvox.io.sources import Source
    full = Source("aflow", [perovskites_path], limit=50)
    index = full.line_index()
    assert [a.dtype for a in index] == [np.dtype(t) for t in (np.int16, np.int64, np.int64, np.int32)]  # 22 B
    assert len(index[1]) == 50
    again = Source("aflow", [perovskites_path], limit=50, index=index)
    assert len(again) == 50
    a, b = full.records(10, 20), again.records(10, 20)
    assert [r.line for r in a] == [r.line for r in b] and [r.id for r in a] == [r.id for r in b]
    assert Source("prototypes").line_index() is None
