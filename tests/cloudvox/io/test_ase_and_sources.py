"""The ASE reader (extxyz with info properties, ASE databases, bad frames) and the one format dispatch
(:class:`cloudvox.io.Source`): a streamed line index equal to a plain reading of the file."""
import json

import ase  # a declared dependency (requirements/base.txt): the set-up installs it
import ase.db
import ase.io
import numpy as np
import pytest

from cloudvox.io import Source, format_of, iter_records, read_aflow, read_ase
from cloudvox.io.sources import LineIndex, piece_starts, scan_lines, split_bytes
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


def plain_records(paths, skip_header):
    """(file, line number, text) of every record, from a plain reading of the whole files."""
    out = []
    for f, path in enumerate(paths):
        for k, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if line.strip() and not (skip_header and k == 1):
                out.append((f, k, line))
    return out


def index_in_pieces(paths, skip_header, stride, parts, chunk):
    """What the ranks of a parallel job do (hpc.featurize.index_in_pieces), here in one process."""
    sizes = [p.stat().st_size for p in paths]
    pieces = [piece for part in range(parts) for piece in split_bytes(sizes, parts, part)]
    counts = sorted((f, lo, hi, *scan_lines(paths[f], lo, hi, skip_header, chunk=chunk)[:2]) for f, lo, hi in pieces)
    found = [(c[0], scan_lines(paths[c[0]], c[1], c[2], skip_header, first[0], first[1], stride, chunk=chunk)[2])
             for c, first in zip(counts, piece_starts(counts))]
    return LineIndex.from_pieces(paths, skip_header, stride, counts, found)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 24])
def test_the_line_index_finds_the_records_of_a_plain_reading_whoever_makes_it(tmp_path, rng, chunk):
    """Blank and whitespace-only lines (CR included), a header, files with and without a final newline, a
    limit, any stride: the records read through the index are a plain reading's; made in pieces by 1-5
    "ranks" (pieces cut anywhere, mid-line included) the index is the one-process index, entry for entry."""
    for trial in range(25):
        paths = []
        for j in range(int(rng.integers(1, 4))):
            lines = [["", "  ", "     ", "\t \r", "x" * int(rng.integers(1, 40)), "ab", " y "][int(rng.integers(0, 7))]
                     for _ in range(int(rng.integers(0, 40)))]
            paths.append(tmp_path / f"lines{trial}_{j}.txt")
            paths[-1].write_text("\n".join(lines) + ("\n" if rng.random() < 0.5 else ""))
        skip, stride = bool(rng.integers(0, 2)), int(rng.integers(1, 9))
        expected = plain_records(paths, skip)
        for limit in (None, 0, 1, 5, 17):
            index = LineIndex.serial(paths, skip, limit, stride, chunk)
            want = expected[:limit]
            assert index.n == len(want) and len(index.start) == -(-len(want) // stride), (trial, limit)
            for a, b in [(0, index.n), (0, 1), (index.n // 2, index.n), (1, 3)]:
                if a < b <= index.n:
                    assert list(index.lines(a, b)) == want[a:b], (trial, limit, a, b)
        one = LineIndex.serial(paths, skip, None, stride, chunk)
        for parts in (2, 3, 5):
            pieces = index_in_pieces(paths, skip, stride, parts, chunk)
            assert pieces.n == one.n and pieces.files == one.files, (trial, parts)
            for name in ("file_of", "start", "number"):
                np.testing.assert_array_equal(getattr(pieces, name), getattr(one, name), err_msg=f"{trial} {parts}")


def test_split_bytes_cuts_the_files_laid_end_to_end_once():
    sizes = [10, 0, 7, 3]
    pieces = [split_bytes(sizes, 3, k) for k in range(3)]
    assert pieces == [[(0, 0, 6)], [(0, 6, 10), (2, 0, 3)], [(2, 3, 7), (3, 0, 3)]]
    assert split_bytes([5], 8, 0) == [] and split_bytes([], 2, 1) == []


def test_a_limit_indexes_only_what_it_needs(perovskites_path, tmp_path):
    big = tmp_path / "twice.jsonl"
    big.write_text(perovskites_path.read_text() * 2)
    src = Source("aflow", [big, perovskites_path], limit=7)
    assert len(src) == 7 and src.sources == [str(big)]  # the second file is never opened
    ids = [r.id for r in src]
    assert ids == [json.loads(line)["auid"] for line in perovskites_path.read_text().splitlines()[:7]]


def test_a_source_indexed_in_pieces_reads_the_records_of_one_indexed_whole(perovskites_path, tmp_path):
    """The featurize job indexes on every rank a share of the bytes: the same records, and an index of one
    entry per stride records (28 bytes each), not one per record."""
    half = tmp_path / "half.jsonl"
    lines = perovskites_path.read_text().splitlines(keepends=True)
    half.write_text("".join(lines[:120]) + "\n  \n")
    inputs = [perovskites_path, half]
    whole = Source("aflow", inputs)
    pieces = Source("aflow", inputs, indexer=lambda files, skip, limit: index_in_pieces(files, skip, 16, 3, 1 << 20))
    assert len(whole) == len(pieces) == len(lines) + 120 and pieces.sources == whole.sources
    index = pieces._lines.index
    assert len(index.start) == -(-len(pieces) // 16)
    a, b = whole.records(len(lines) - 10, len(lines) + 5), pieces.records(len(lines) - 10, len(lines) + 5)
    assert [(r.source, r.line, r.id) for r in a] == [(r.source, r.line, r.id) for r in b]
    assert b[-1].source == str(half) and b[-1].line == 5
