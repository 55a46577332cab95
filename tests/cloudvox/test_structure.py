import numpy as np
import pytest

from cloudvox.structure import Structure, StructureError, find_overlap


def cubic(a=4.0, **kw):
    return Structure(["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]], np.eye(3) * a, id="SrTiO3", **kw)


def test_coordinates_and_immutability():
    s = cubic()
    np.testing.assert_allclose(s.cart_coords, s.frac_coords @ s.lattice)
    assert s.symbols[:2] == ("Sr", "Ti") and s.elements == ("O", "Sr", "Ti")
    assert s.volume == pytest.approx(64.0)
    with pytest.raises(ValueError):
        s.cart_coords[0, 0] = 1.0
    assert s.formula == "O3SrTi"


@pytest.mark.parametrize("kwargs, message", [
    (dict(numbers=[], coords=np.zeros((0, 3))), "empty structure"),
    (dict(numbers=["Sr", "Xx"], coords=[[0, 0, 0], [.5, .5, .5]]), "unknown element"),
    (dict(numbers=[38, 130], coords=[[0, 0, 0], [.5, .5, .5]]), "unknown element"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0, np.nan], [.5, .5, .5]]), "non-finite"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0, np.inf], [.5, .5, .5]]), "non-finite"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0, 0], [.5, .5, .5]], lattice=[[4, 0, 0], [8, 0, 0], [0, 0, 4]]),
     "singular"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0, 0], [.5, .5, .5]], lattice=np.eye(3) * 0.05), "volume"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0, 0], [.01, 0, 0]]), "apart"),
    (dict(numbers=["Sr", "Ti"], coords=[[0.001, 0, 0], [0.999, 0, 0]]), "apart"),  # across the cell boundary
    (dict(numbers=["Sr"], coords=[[0, 0, 0]], lattice=np.diag([0.05, 20, 20])), "its own periodic image"),
    (dict(numbers=["Sr", "Ti"], coords=[[0, 0], [1, 1]]), "shape"),
])
def test_bad_structures_raise_naming_the_structure(kwargs, message):
    kwargs.setdefault("lattice", np.eye(3) * 4)
    with pytest.raises(StructureError) as err:
        Structure(kwargs.pop("numbers"), kwargs.pop("coords"), kwargs.pop("lattice"), id="bad-42")
    assert "bad-42" in str(err.value) and message in str(err.value)


def test_molecule_overlap_and_no_lattice():
    with pytest.raises(StructureError, match="apart"):
        Structure.molecule([[0, 0, 0], [0, 0, 0.05]], ["H", "H"], id="H2")
    m = Structure.molecule([[0, 0, 0], [0, 0, 0.74]], ["H", "H"], id="H2")
    assert not m.is_periodic and m.lattice is None
    with pytest.raises(AttributeError):
        m.frac_coords


def test_overlap_search_matches_brute_force_on_skewed_cells(rng):
    for _ in range(30):
        lat = rng.normal(size=(3, 3)) * 2 + np.eye(3) * 3
        cart = rng.uniform(0, 1, size=(6, 3)) @ lat
        cutoff = 1.2
        # brute force over many images
        n = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3) @ lat
        best = np.inf
        for i in range(6):
            for j in range(i, 6):
                d = np.linalg.norm(cart[j] - cart[i] + n, axis=1)
                if i == j:
                    d = d[d > 1e-12]
                best = min(best, d.min())
        found = find_overlap(cart, lat, cutoff)
        assert (found is not None) == (best < cutoff)
        if found is not None:
            assert found[2] < cutoff


def test_compiled_overlap_search_equals_numpy(rng, monkeypatch):
    """The kernel's search finds the same first pair at the same distance as numpy's: cells whose planes are
    closer than twice the cutoff (images, an atom near its own image) and wide ones (no images)."""
    from cloudvox import kernel
    assert kernel.native() is not None
    cases = 0
    for trial in range(60):
        scale = 1.0 if trial % 2 else 4.0
        lat = (rng.normal(size=(3, 3)) + np.eye(3) * 3) * scale
        cart = rng.uniform(0, 1, size=(int(rng.integers(1, 12)), 3)) @ lat
        for cutoff in (0.5, 1.2, 2.5):
            compiled = find_overlap(cart, lat, cutoff)
            monkeypatch.setattr(kernel, "native", lambda: None)
            plain = find_overlap(cart, lat, cutoff)
            monkeypatch.undo()
            assert (compiled is None) == (plain is None)
            if plain is not None:
                assert compiled[:2] == plain[:2] and compiled[2] == pytest.approx(plain[2], rel=1e-12)
                cases += 1
    assert 20 < cases < 180  # both outcomes were seen


def test_derived_structures():
    s = cubic()
    sc = s.supercell([2, 1, 1])
    assert len(sc) == 10 and sc.volume == pytest.approx(2 * s.volume)
    t = s.translated([0.3, -1.0, 7.0])
    np.testing.assert_allclose(t.cart_coords, s.cart_coords + [0.3, -1.0, 7.0])
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    r = s.rotated(R)
    np.testing.assert_allclose(r.cart_coords, s.cart_coords @ R.T, atol=1e-12)
    p = s.permuted([4, 3, 2, 1, 0])
    assert p.symbols == s.symbols[::-1]
