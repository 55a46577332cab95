import json

import numpy as np
import pytest

from cloudvox.io import InputError, iter_aflow, read_aflow, structure_from_aflow

GOOD = {"auid": "aflow:good", "compound": "O3Sr1Ti1", "species": ["O", "Sr", "Ti"], "composition": [3, 1, 1],
        "natoms": 5, "geometry": [3.9, 3.9, 3.9, 90, 90, 90], "enthalpy_atom": -8.0,
        "positions_fractional": [[.5, .5, 0], [0, .5, .5], [.5, 0, .5], [0, 0, 0], [.5, .5, .5]]}


def bad(**changes):
    e = dict(GOOD, **changes)
    for k, v in list(e.items()):
        if v is None:
            del e[k]
    return e


MALFORMED = [
    (bad(auid="aflow:missing", positions_fractional=None), "missing keyword"),
    (bad(auid="aflow:nan", positions_fractional=[[.5, .5, float("nan")]] + GOOD["positions_fractional"][1:]), "non-finite"),
    (bad(auid="aflow:flat", geometry=[3.9, 3.9, 3.9, 90, 90, 180]), "lattice"),
    (bad(auid="aflow:zero", geometry=[3.9, 3.9, 0.0, 90, 90, 90]), "cell lengths"),
    (bad(auid="aflow:element", species=["O", "Sr", "Qq"]), "unknown element"),
    (bad(auid="aflow:overlap", positions_fractional=[[0, 0, 0.001]] + GOOD["positions_fractional"][1:]), "apart"),
    (bad(auid="aflow:count", natoms=7), "natoms"),
    (bad(auid="aflow:comp", composition=[3, 1]), "composition"),
]


def write_jsonl(path, entries, extra_lines=()):
    with open(path, "w") as fh:
        for e in entries:
            fh.write(json.dumps(e) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")


def test_reads_aflow_files_with_aflow_conventions(osrti_path, perovskites_path):
    osrti = read_aflow(osrti_path)
    assert len(osrti) == 135
    first = json.loads(open(osrti_path).readline())
    s = osrti[0]
    assert s.id == first["auid"] and len(s) == first["natoms"]
    np.testing.assert_allclose(np.linalg.norm(s.lattice, axis=1), first["geometry"][:3], rtol=1e-12)
    counts = dict(zip(first["species"], first["composition"]))
    assert {e: s.symbols.count(e) for e in s.elements} == counts
    assert s.symbols[:first["composition"][0]] == (first["species"][0],) * first["composition"][0]
    assert s.props["enthalpy_atom"] == first["enthalpy_atom"] and s.meta["compound"] == first["compound"]
    np.testing.assert_allclose(s.cart_coords, first["positions_cartesian"], atol=2e-5)
    assert len(read_aflow(perovskites_path)) == 300


def test_bad_entries_are_reported_with_auid_and_line_and_the_rest_read(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [GOOD] + [e for e, _ in MALFORMED] + [dict(GOOD, auid="aflow:last")],
                extra_lines=["{not json", "[1, 2]"])
    errors = []
    good = read_aflow(path, errors=errors)
    assert [s.id for s in good] == ["aflow:good", "aflow:last"]
    assert len(errors) == len(MALFORMED) + 2
    for (entry, message), err in zip(MALFORMED, errors):
        assert err.id == entry["auid"] and entry["auid"] in err.error and message in err.error, err.error
    assert errors[len(MALFORMED)].line == len(MALFORMED) + 3 and "invalid JSON" in errors[len(MALFORMED)].error
    assert "not a JSON object" in errors[-1].error
    with pytest.raises(InputError, match="aflow:missing"):
        read_aflow(path, strict=True)


def test_aflux_json_list(tmp_path):
    path = tmp_path / "page.json"
    path.write_text(json.dumps([GOOD, dict(GOOD, auid="aflow:two")]))
    records = list(iter_aflow(path))
    assert [r.id for r in records] == ["aflow:good", "aflow:two"] and all(r.ok for r in records)


def test_structure_from_aflow_matches_reference_basis():
    s = structure_from_aflow(dict(GOOD, geometry=[3.0, 4.0, 5.0, 80.0, 95.0, 110.0]))
    assert s.lattice[0, 1] == 0 and s.lattice[1, 2] == 0
