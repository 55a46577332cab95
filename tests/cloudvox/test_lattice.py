"""The lattice: cell, reciprocal and the one enumeration of reciprocal points (float64, explicit tolerances)."""
import numpy as np
import pytest

from cloudvox.lattice import Lattice, half_ball, lattice_from_parameters, reciprocal_box, reciprocal_lattice
from cloudvox.structure import Structure

SKEWED = np.array([[3.1, 0, 0], [1.6, 2.9, 0], [-0.8, 0.7, 3.3]])


def test_lattice_from_parameters_follows_aflow_convention():
    lat = lattice_from_parameters(3.0, 4.0, 5.0, 80.0, 95.0, 110.0)
    assert lat[0, 1] == 0 and lat[0, 2] == 0 and lat[1, 2] == 0  # a along x, b in the xy plane
    np.testing.assert_allclose(np.linalg.norm(lat, axis=1), [3, 4, 5], rtol=1e-12)
    cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(np.degrees(np.arccos([cos(lat[1], lat[2]), cos(lat[0], lat[2]), cos(lat[0], lat[1])])),
                               [80, 95, 110], rtol=1e-12)
    assert np.linalg.det(lat) > 0


def test_lattice_owns_its_reciprocal_and_is_read_only():
    lat = Lattice(SKEWED)
    np.testing.assert_allclose(lat.matrix @ lat.reciprocal.T, 2 * np.pi * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(lat.inverse, np.linalg.inv(SKEWED), rtol=1e-12)
    assert lat.volume == pytest.approx(abs(np.linalg.det(SKEWED)), rel=1e-12)
    for a in (lat.matrix, lat.reciprocal, lat.inverse):
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
    assert lat.reciprocal is lat.reciprocal  # computed once
    src = SKEWED.copy()
    lat2 = Lattice(src)
    src[0, 0] = 9.0  # the lattice holds its own copy
    assert lat2 == lat and hash(lat2) == hash(lat) and lat != Lattice(SKEWED * 1.01)
    np.testing.assert_array_equal(np.asarray(lat), SKEWED)


def test_from_parameters_round_trips_lengths_and_angles():
    lat = Lattice.from_parameters(3.0, 4.0, 5.0, 80.0, 95.0, 110.0)
    np.testing.assert_allclose(lat.abc, [3, 4, 5], rtol=1e-12)
    np.testing.assert_allclose(lat.angles, [80, 95, 110], rtol=1e-12)
    assert "Lattice(abc=(3, 4, 5)" in repr(lat)


@pytest.mark.parametrize("matrix, problem", [(np.eye(2), "shape"), (np.full((3, 3), np.nan), "non-finite"),
                                             (np.ones((3, 3)), "singular")])
def test_bad_lattices_are_refused_naming_the_problem(matrix, problem):
    with pytest.raises(ValueError, match=problem):
        Lattice(matrix)


def test_a_structure_s_cell_is_its_lattice_and_molecules_have_none():
    s = Structure(["Sr", "Ti"], [[0, 0, 0], [.5, .5, .5]], SKEWED, id="x")
    assert isinstance(s.cell, Lattice) and s.cell.matrix is s.lattice
    assert s.volume == s.cell.volume
    m, G = s.cell.reciprocal_points(4.0)
    np.testing.assert_array_equal(m, half_ball(SKEWED, 4.0))
    np.testing.assert_allclose(G, m @ reciprocal_lattice(SKEWED), rtol=0, atol=0)
    assert Structure.molecule([[0, 0, 0], [0, 0, 1.0]], ["H", "H"]).cell is None


def test_half_ball_is_the_lexicographic_half_of_the_ball(rng):
    """half_ball against its definition (the box filtered by |G| <= radius, the m lexicographically <= 0), on
    skewed cells and on a cubic cell whose cube corners lie exactly on the ball (a = L / 2)."""
    lattices = [np.eye(3) * 6.4, np.array([[3.1, 0, 0], [1.6, 2.9, 0], [-0.8, 0.7, 3.3]]),
                np.array([[5.0, 0, 0], [14.2, 1.1, 0], [0.3, 9.4, 2.7]])] + \
        [np.triu(rng.uniform(-3, 3, (3, 3))) + np.diag(rng.uniform(3, 8, 3)) for _ in range(3)]
    radius = np.sqrt(3) * np.pi * 32 / 12.8
    for lattice in lattices:
        e = reciprocal_box(lattice, radius)
        box = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in e], indexing="ij"), -1).reshape(-1, 3)
        half = box[:len(box) // 2 + 1]  # lexicographic order: the first half ends at m = 0
        G = half @ reciprocal_lattice(lattice)
        expected = half[(G * G).sum(1) <= radius ** 2 * (1 + 1e-12)]
        got = half_ball(lattice, radius)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)
    corner = half_ball(np.eye(3) * 6.4, radius)
    assert (corner == [-8, -8, -8]).all(1).any()  # exactly on the sphere: kept


@pytest.mark.parametrize("compiled", [True, False])
def test_half_balls_of_many_lattices_are_each_lattice_s_half_ball(rng, monkeypatch, compiled):
    """One call for many lattices: each lattice's points in order, the counts and its reciprocal bit for bit;
    with a cube, a superset of the points inside it (the caller's exact test keeps the same ones)."""
    from cloudvox import kernel
    from cloudvox.lattice import half_balls
    if not compiled:
        monkeypatch.setattr(kernel, "native", lambda: None)
    lattices = [Lattice(np.eye(3) * 6.4), Lattice(SKEWED)] + \
        [Lattice(np.triu(rng.uniform(-3, 3, (3, 3))) + np.diag(rng.uniform(2, 9, 3))) for _ in range(8)]
    radius = np.sqrt(3) * np.pi * 32 / 12.8
    m, counts, recips = half_balls(lattices, radius)
    assert m.dtype == np.int32 and counts.sum() == len(m)
    starts = np.cumsum(counts) - counts
    for lat, a, k, r in zip(lattices, starts, counts, recips):
        np.testing.assert_array_equal(m[a:a + k], lat.half_ball(radius))
        np.testing.assert_array_equal(r, lat.reciprocal)
    hw = np.pi * 32 / 12.8
    mc, cc, _ = half_balls(lattices, radius, cube=hw)
    for lat, a, k, ac, kc in zip(lattices, starts, counts, np.cumsum(cc) - cc, cc):
        G = m[a:a + k] @ lat.reciprocal
        exact = m[a:a + k][(np.abs(G) <= hw * (1 + 1e-9)).all(1)]
        got = mc[ac:ac + kc]
        got = got[(np.abs(got @ lat.reciprocal) <= hw * (1 + 1e-9)).all(1)]
        np.testing.assert_array_equal(got, exact)
        assert kc < k  # the caps were left out
    assert [len(x) for x in half_balls([], radius)] == [0, 0, 0]
