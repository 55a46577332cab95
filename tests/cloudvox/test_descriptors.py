"""The voxel descriptor: exactness against the original algorithm and its invariances (float64)."""
import importlib.util
import itertools
import json

import numpy as np
import pytest

from cloudvox import kernel
from cloudvox.descriptors import ReciprocalVoxelizer, voxel_index
from cloudvox.lattice import half_ball
from cloudvox.io import read_aflow, structure_from_aflow
from cloudvox.structure import Structure, StructureError
from tests.conftest import fixture_file, shared_file, shared_reference

RTOL = 1e-12  # float64 invariances


def load_reference():
    spec = importlib.util.spec_from_file_location("original_voxelnet_reference", shared_reference())
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def perovskite(a=3.95, id="SrTiO3"):
    return Structure(["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                     np.eye(3) * a, id=id)


def triclinic(rng, id="tri"):
    lat = np.array([[4.1, 0, 0], [0.9, 4.6, 0], [-0.7, 1.1, 5.2]])
    return Structure(["Sr", "Ti", "O", "O"], rng.uniform(0, 1, (4, 3)), lat, id=id)


def molecule():
    return Structure.molecule([[0, 0, 0], [1.09, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]],
                              ["C", "H", "H", "H", "H"], id="CH4")


def test_voxels_equal_the_original_on_committed_golden_values():
    """The original featurization's output for 10 committed entries (tests/data/reference/make_golden.py)."""
    golden = np.load(fixture_file("reference", "voxels_golden.npz"))
    keys = sorted({k.rsplit(":", 1)[0] for k in golden.files})
    assert len(keys) == 10
    vox = ReciprocalVoxelizer(sigma=0.1, length=12.8, n=32, mode="cartesian")
    worst = 0.0
    for key in keys:
        name, row = key.split(":")
        entry = json.loads(fixture_file("aflow", name).read_text().splitlines()[int(row)])
        s = structure_from_aflow(entry)
        elements = sorted(entry["species"])
        expected = np.zeros(int(np.prod(golden[key + ":shape"])))
        expected[golden[key + ":index"]] = golden[key + ":value"]
        expected = np.swapaxes(expected.reshape(golden[key + ":shape"]), 1, 2)  # the original stores (y, x, z)
        names = vox.channel_names([s])
        got = vox.compact([s], names=names)[0].dense(len(names), 32)[[names.index(e) for e in elements]]
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= 1e-5, f"max abs difference {worst}"


@pytest.mark.shared
@pytest.mark.parametrize("name", ["O-Sr-Ti.jsonl", "oxide_perovskites_cP5.jsonl"])
def test_voxels_equal_the_original_on_every_shared_entry(name):
    path = shared_file("aflow", name)
    ref = load_reference()
    entries = [json.loads(line) for line in open(path)]
    structures = [structure_from_aflow(e) for e in entries]
    vox = ReciprocalVoxelizer(sigma=0.1, length=12.8, n=32, mode="cartesian")
    names = vox.channel_names(structures)
    worst = 0.0
    for entry, sv in zip(entries, vox.compact(structures, names=names)):
        elements = sorted(entry["species"])
        expected = np.swapaxes(ref.featurize(entry, elements), 1, 2)  # the original stores (y, x, z)
        got = sv.dense(len(names), 32)[[names.index(e) for e in elements]]
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= 1e-5, f"max abs difference {worst}"


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
def test_translation_and_permutation_invariance(rng, mode):
    vox = ReciprocalVoxelizer(sigma=0.2, length=10.0, n=16, mode=mode)
    for s in (perovskite(), triclinic(rng)):
        base = vox.reciprocal(s, dtype=np.float64)
        for moved in (s.translated(rng.normal(size=3) * 3), s.permuted(rng.permutation(len(s)))):
            other = vox.reciprocal(moved, dtype=np.float64)
            np.testing.assert_array_equal(other.G, base.G)
            np.testing.assert_allclose(other.amp, base.amp, rtol=RTOL, atol=1e-14)
    m = molecule()
    base = vox(m)
    np.testing.assert_allclose(vox(m.translated([1.3, -2.0, 0.4])), base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vox(m.permuted([4, 2, 0, 1, 3])), base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [(2, 1, 1), (2, 2, 2)])
def test_supercell_gives_the_same_h_at_the_original_G_and_zero_at_new_ones(rng, scale):
    vox = ReciprocalVoxelizer(sigma=0.1, length=12.8, n=32)
    for s in (perovskite(), triclinic(rng)):
        small = vox.reciprocal(s, dtype=np.float64)
        big = vox.reciprocal(s.supercell(scale), dtype=np.float64)
        # G of the supercell on the original reciprocal lattice: integer m in the original basis
        m = big.G @ s.lattice.T / (2 * np.pi)
        on_original = np.all(np.abs(m - np.round(m)) < 1e-9, axis=1)
        assert on_original.sum() == len(small.G)
        key = lambda G: np.round(G @ s.lattice.T / (2 * np.pi)).astype(int)
        order_small = np.lexsort(key(small.G).T)
        order_big = np.lexsort(key(big.G[on_original]).T)
        np.testing.assert_allclose(big.amp[:, on_original][:, order_big], small.amp[:, order_small],
                                   rtol=1e-10, atol=1e-14)
        assert np.abs(big.amp[:, ~on_original]).max() < 1e-12 * small.amp.max()
        np.testing.assert_allclose(vox(s.supercell(scale)), vox(s), rtol=1e-5, atol=1e-7)


def cube_symmetries():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            R = np.zeros((3, 3))
            R[range(3), perm] = signs
            yield R


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
def test_the_48_cube_symmetries_are_exact_on_a_cubic_cell(mode):
    vox = ReciprocalVoxelizer(mode=mode)
    s = perovskite()
    mats = list(cube_symmetries())
    assert len(mats) == 48
    binned = vox.batch([s] * 48, np.stack(mats))
    for R, got in zip(mats, binned):
        np.testing.assert_array_equal(got, vox(s.rotated(R)))
    if mode == "cartesian":  # and the cartesian grid itself permutes: G_x = 0 falls on an edge, so compare G sets
        rs = vox.reciprocal(s, dtype=np.float64)
        for R in mats:
            rr = vox.reciprocal(s.rotated(R), dtype=np.float64)
            a = np.lexsort(np.round(rs.G @ R.T, 9).T)
            b = np.lexsort(np.round(rr.G, 9).T)
            np.testing.assert_allclose((rs.G @ R.T)[a], rr.G[b], atol=1e-12)
            np.testing.assert_allclose(rs.amp[:, a], rr.amp[:, b], rtol=RTOL)


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
def test_binning_rotated_G_equals_the_descriptor_of_the_rotated_structure(rng, mode):
    vox = ReciprocalVoxelizer(mode=mode, n=24, length=10.0)
    for s in (perovskite(), triclinic(rng), molecule()):
        for _ in range(3):
            R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            np.testing.assert_allclose(vox(s, R), vox(s.rotated(R)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
def test_crystal_voxels_are_the_one_enumeration_binned(rng, mode):
    """A crystal's voxels are its half-ball reciprocal set binned (the set the feature file stores and the loader
    bins), bit for bit, with and without a rotation: the cube filter of the unrotated grid drops nothing."""
    from cloudvox.descriptors import bin_sets
    vox = ReciprocalVoxelizer(mode=mode, n=16, length=10.0, cross=True)
    for s in (perovskite(), perovskite(a=2.5), triclinic(rng)):
        names = vox.channel_names([s])
        rs = vox.reciprocal(s, names, dtype=np.float64, half=True)
        for R in (None, np.linalg.qr(rng.normal(size=(3, 3)))[0]):
            sv = vox.compact([s], None if R is None else R[None], names)[0]
            (index, values), = bin_sets([rs], vox.n, vox.length, mode, R)
            np.testing.assert_array_equal(sv.index, index)
            np.testing.assert_array_equal(sv.values, values)
            assert (np.diff(sv.index) > 0).all()  # in voxel order


def test_molecule_descriptor_rotates_with_the_molecule():
    vox = ReciprocalVoxelizer(n=16, length=8.0)
    m = molecule()
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # (x, y, z) -> (-y, x, z)
    rotated = vox(m.rotated(Rz))
    # F_rot(k) = F(Rz^T k); voxel (i, j, l) of the rotated grid is voxel (j, N-1-i, l) of the original
    base = vox(m)
    expected = np.transpose(base, (0, 2, 1, 3))[:, :, ::-1, :]
    np.testing.assert_allclose(rotated, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(rotated, base, atol=1e-3)


def test_analytic_h_equals_the_fft_of_the_sampled_density(rng):
    sigma, M = 0.25, 48
    for s in (perovskite(a=4.2), triclinic(rng)):
        f = (np.stack(np.meshgrid(*[np.arange(M) / M] * 3, indexing="ij"), -1)).reshape(-1, 3)
        x = f @ s.lattice
        images = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3) @ s.lattice
        density = np.zeros(len(x))
        for mu in s.cart_coords:
            for shift in images:
                d2 = ((x - mu - shift) ** 2).sum(1)
                density += np.exp(-d2 / (2 * sigma ** 2))
        density /= (2 * np.pi * sigma ** 2) ** 1.5
        coeff = np.fft.fftn(density.reshape(M, M, M)) / M ** 3  # (1/V) int_cell s(x) exp(-i G.x) dx
        vox = ReciprocalVoxelizer(sigma=sigma, length=12.8, n=16, channels="total")
        rs = vox.reciprocal(s, dtype=np.float64)
        m = np.round(rs.G @ s.lattice.T / (2 * np.pi)).astype(int)
        small = np.all(np.abs(m) < M // 4, axis=1)
        numeric = np.abs(coeff[m[small, 0] % M, m[small, 1] % M, m[small, 2] % M])
        analytic = rs.amp[0, small]
        significant = analytic > 1e-3 * analytic.max()
        assert significant.sum() > 50
        rel = np.abs(numeric[significant] - analytic[significant]) / analytic[significant]
        assert rel.max() <= 1e-3, rel.max()


def test_G_zero_and_edges():
    vox = ReciprocalVoxelizer(n=32, length=12.8)
    G = np.array([[0.0, 0.0, 0.0], [np.pi * 32 / 12.8, 0, 0], [-np.pi * 32 / 12.8, 0, 0]])
    idx = voxel_index(G, 32, 12.8, "cartesian")
    assert idx[0] == (16 * 32 + 16) * 32 + 16 and idx[1] == -1 and idx[2] == (0 * 32 + 16) * 32 + 16
    sph = voxel_index(np.array([[0.0, 0, 0], [0, 0, -1.0], [-1.0, 0, 0]]), 32, 12.8, "spherical")
    assert sph[0] == 0 * 32 * 32 + 0 * 32 + 16  # r = 0, theta = 0 by convention, phi = atan2(0, 0) = 0
    assert (sph[1] // 32) % 32 == 31  # theta = pi falls in the last bin
    assert sph[2] % 32 == 0  # phi = pi wraps to bin 0
    s = perovskite()
    grid = vox(s)
    assert grid[:, 16, 16, 16] == pytest.approx(np.array([3, 1, 1]) / s.volume, rel=1e-6)  # O, Sr, Ti at G = 0


def test_channels_species_and_errors():
    s = perovskite()
    assert ReciprocalVoxelizer()(s).shape == (3, 32, 32, 32)
    vox = ReciprocalVoxelizer(species=("Ba", "O", "Sr", "Ti"))
    x = vox(s)
    assert x.shape == (4, 32, 32, 32) and x[0].max() == 0 and x[1:].min() >= 0 and x[1].max() > 0
    total = ReciprocalVoxelizer(channels="total")(s)
    assert total.shape == (1, 32, 32, 32)
    with pytest.raises(StructureError, match="SrTiO3.*not in the species list"):
        ReciprocalVoxelizer(species=("O", "Ti"))(s)
    for bad in (dict(sigma=0), dict(sigma=-1), dict(n=1), dict(length=0), dict(mode="polar"), dict(channels="x")):
        with pytest.raises(ValueError):
            ReciprocalVoxelizer(**bad)


def test_batch_equals_one_by_one(osrti_path):
    structures = read_aflow(osrti_path)[:20] + [molecule()]
    for mode in ("cartesian", "spherical"):
        vox = ReciprocalVoxelizer(mode=mode, species=("C", "H", "O", "Sr", "Ti"))
        batch = vox.batch(structures)
        for s, got in zip(structures, batch):
            np.testing.assert_array_equal(got, vox(s))


def test_sparse_voxels_are_compact_and_dense_roundtrips(osrti_path):
    structures = read_aflow(osrti_path)[:10]
    vox = ReciprocalVoxelizer()
    names = vox.channel_names(structures)
    for s, sv in zip(structures, vox.compact(structures, names=names)):
        assert len(np.unique(sv.index)) == len(sv.index)
        assert list(sv.channels) == [names.index(e) for e in s.elements]
        dense = sv.dense(len(names), 32)
        assert np.count_nonzero(dense) <= sv.values.size
        np.testing.assert_array_equal(dense.reshape(len(names), -1)[sv.channels][:, sv.index], sv.values)


def test_property_channels_see_the_site_assignment_that_element_channels_cannot():
    a = perovskite()  # Sr on the corner, Ti in the centre
    b = Structure(["Ti", "Sr", "O", "O", "O"], a.frac_coords, a.lattice, id="swapped")
    per_element = ReciprocalVoxelizer(channels="element")
    np.testing.assert_allclose(per_element(a), per_element(b), rtol=1e-6, atol=1e-9)  # blind to the swap
    props = ReciprocalVoxelizer(channels="properties", properties=("one", "Z", "X", "radius"))
    xa, xb = props(a), props(b)
    assert xa.shape == (4, 32, 32, 32)
    np.testing.assert_allclose(xa[0], xb[0], rtol=1e-6)  # "one" is the total density: blind too
    assert np.abs(xa[1:] - xb[1:]).max() > 0.1 * xa[1:].max()
    # still translation invariant and rotating with the crystal
    np.testing.assert_allclose(props(a.translated([0.3, 1.1, -2.0])), xa, rtol=1e-5, atol=1e-7)
    R = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0.0]])
    np.testing.assert_array_equal(props(a, R), props(a.rotated(R)))
    with pytest.raises(ValueError, match="unknown element property"):
        ReciprocalVoxelizer(channels="properties", properties=("one", "shininess"))


def test_cross_spectrum_channels_see_the_site_assignment(rng):
    a = perovskite()  # Sr on the corner, Ti in the centre
    b = Structure(["Ti", "Sr", "O", "O", "O"], a.frac_coords, a.lattice, id="swapped")
    cross = ReciprocalVoxelizer(cross=True)
    assert cross.channel_names([a]) == ("O", "Sr", "Ti", "O*total", "Sr*total", "Ti*total")
    xa, xb = cross(a), cross(b)
    np.testing.assert_allclose(xa[:3], xb[:3], rtol=1e-6, atol=1e-9)  # the moduli are blind to the swap
    assert np.abs(xa[3:] - xb[3:]).max() > 0.5 * np.abs(xa[4]).max()  # the cross-spectra are not
    np.testing.assert_allclose(cross(a.translated([0.3, 1.1, -2.0])), xa, rtol=1e-5, atol=1e-7)
    R = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0.0]])
    np.testing.assert_array_equal(cross(a, R), cross(a.rotated(R)))


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
def test_cross_spectra_follow_their_definition(rng, mode):
    """x_e(G) = Re(h_e(G) conj(h(G))) / h(0) at every G (float64); sum_e x_e = |h|^2 / h(0); |x_e| <= |h_e|;
    invariant to translations and permutations; binning rotated G equals the rotated structure."""
    s = triclinic(rng)
    vox = ReciprocalVoxelizer(sigma=0.2, length=10.0, n=12, mode=mode, cross=True)
    rs = vox.reciprocal(s, dtype=np.float64)
    names = vox.channel_names([s])
    volume = abs(np.linalg.det(s.lattice))
    env = np.exp(-0.2 ** 2 / 2 * (rs.G ** 2).sum(1)) / volume
    phases = np.exp(-1j * rs.G @ s.cart_coords.T)  # (P, J)
    h_total = env * phases.sum(1)
    h0 = len(s) / volume
    for e in s.elements:
        h_e = env * phases[:, np.array(s.symbols) == e].sum(1)
        np.testing.assert_allclose(rs.amp[names.index(e)], np.abs(h_e), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(rs.amp[names.index(e + "*total")], (h_e * np.conj(h_total)).real / h0,
                                   rtol=1e-10, atol=1e-14)
        assert np.all(np.abs(rs.amp[names.index(e + "*total")]) <= rs.amp[names.index(e)] * (1 + 1e-12))
    summed = sum(rs.amp[names.index(e + "*total")] for e in s.elements)
    np.testing.assert_allclose(summed, np.abs(h_total) ** 2 / h0, rtol=1e-10, atol=1e-14)
    for moved in (s.translated(rng.normal(size=3) * 3), s.permuted(rng.permutation(len(s)))):
        np.testing.assert_allclose(vox.reciprocal(moved, dtype=np.float64).amp, rs.amp, rtol=1e-9, atol=1e-14)
    half = vox.reciprocal(s, dtype=np.float64, half=True).full()  # Friedel pairs share the cross-spectra
    order = np.lexsort(half.m.T)
    np.testing.assert_allclose(half.amp[:, order], rs.amp[:, np.lexsort(rs.m.T)], rtol=1e-12, atol=1e-15)
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    np.testing.assert_allclose(vox(s, R), vox(s.rotated(R)), rtol=1e-5, atol=1e-6)


def test_compiled_structure_factors_equal_numpy(rng, monkeypatch):
    """The C++ kernel against the numpy fallback (float64, 1e-12), for one-hot and dense channel weights."""
    import cloudvox.descriptors as d
    m = half_ball(np.array([[4.1, 0, 0], [0.7, 3.9, 0], [0.2, -0.5, 5.2]]), 9.0)
    frac = rng.uniform(-0.2, 1.2, (7, 3))
    for W in (np.eye(3)[rng.integers(0, 3, 7)].T.copy(), rng.normal(size=(4, 7))):
        native = d.structure_factors_at(m, frac, W)
        assert kernel.native() is not None
        monkeypatch.setattr(kernel, "native", lambda: None)
        plain = d.structure_factors_at(m, frac, W)
        monkeypatch.undo()
        np.testing.assert_allclose(native, plain, rtol=1e-12, atol=1e-12 * np.abs(plain).max())


@pytest.mark.parametrize("compiled", [True, False])
def test_structure_factors_of_many_crystals_equal_each_alone(rng, monkeypatch, compiled):
    """structure_factors_many puts each crystal's structure_factors_at, bit for bit, into its rows (the total
    last with total_last) and zeros in the rows it lacks."""
    from cloudvox.descriptors import structure_factors_at, structure_factors_many
    if not compiled:
        monkeypatch.setattr(kernel, "native", lambda: None)
    lattices = _lattices(rng)[:5]
    ms = [half_ball(lat, 6.0) for lat in lattices]
    fracs = [rng.uniform(0, 1, (k, 3)) for k in (1, 5, 3, 7, 2)]
    Ws = [np.eye(c)[rng.integers(0, c, len(f))].T.copy() for c, f in zip((1, 3, 2, 4, 2), fracs)]
    for total_last in (False, True):
        Wt = [np.concatenate([W, np.ones((1, W.shape[1]))]) for W in Ws] if total_last else Ws
        rows = max(len(W) for W in Wt) + (1 if total_last else 0)
        F = structure_factors_many(np.concatenate(ms), [len(m) for m in ms], fracs, Wt, rows, total_last)
        a = 0
        for m, f, W in zip(ms, fracs, Wt):
            alone = structure_factors_at(m, f, W)
            own = list(range(len(W) - 1)) + [rows - 1] if total_last else list(range(len(W)))
            np.testing.assert_array_equal(F[own, a:a + len(m)], alone)
            assert not F[[r for r in range(rows) if r not in own], a:a + len(m)].any()
            a += len(m)


@pytest.mark.parametrize("kwargs", [dict(), dict(cross=True), dict(mode="spherical"), dict(channels="total")])
def test_voxels_of_a_batch_equal_each_structure_alone(rng, kwargs):
    """compact bins many crystals in one pass: each structure's voxels equal those it gets alone, bit for bit,
    with and without rotations, crystals and molecules mixed."""
    vox = ReciprocalVoxelizer(**kwargs)
    structures = [perovskite(), triclinic(rng), perovskite(4.3, id="big"),
                  Structure.molecule([[0, 0, 0], [0, 0, 1.1], [1.0, 0, 0]], ["O", "H", "H"], id="water"),
                  Structure(["Sr", "O"], [[0, 0, 0], [.5, .5, .5]], _lattices(rng)[3], id="skew")]
    names = vox.channel_names(structures)
    R = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in structures])
    for rotations in (None, R):
        together = vox.compact(structures, rotations, names)
        for k, s in enumerate(structures):
            alone, = vox.compact([s], None if rotations is None else rotations[k:k + 1], names)
            np.testing.assert_array_equal(together[k].index, alone.index)
            np.testing.assert_array_equal(together[k].values, alone.values)
            np.testing.assert_array_equal(together[k].channels, alone.channels)
            assert (np.diff(alone.index) > 0).all()


def _lattices(rng):
    """Cubic cells (one with cube corners exactly on the ball), skewed and supercell-like ones."""
    return [np.eye(3) * 6.4, np.eye(3) * 3.2, np.array([[3.1, 0, 0], [1.6, 2.9, 0], [-0.8, 0.7, 3.3]]),
            np.array([[5.0, 0, 0], [14.2, 1.1, 0], [0.3, 9.4, 2.7]])] + \
        [np.triu(rng.uniform(-3, 3, (3, 3))) + np.diag(rng.uniform(2, 9, 3)) for _ in range(20)] + \
        [rng.normal(size=(3, 3)) * 2 + np.eye(3) * rng.uniform(3, 12) for _ in range(20)]


def test_compiled_half_ball_selects_the_same_points_as_numpy(rng, monkeypatch):
    """The kernel's enumeration does numpy's floating-point operations in numpy's order (built without fused
    multiply-adds): the same points, in the same order, also on cells with points exactly on the sphere."""
    assert kernel.native() is not None
    for lattice in _lattices(rng):
        for radius in (np.sqrt(3) * np.pi * 32 / 12.8, np.pi * 16 / 12.8, 2 * np.pi / 3.2):
            compiled = half_ball(lattice, radius)
            monkeypatch.setattr(kernel, "native", lambda: None)
            plain = half_ball(lattice, radius)
            monkeypatch.undo()
            assert compiled.dtype == plain.dtype == np.int32
            np.testing.assert_array_equal(compiled, plain)


def test_compiled_float16_rounding_equals_numpy(rng):
    """Round to nearest even from float64, subnormals and ties included: bit for bit numpy's astype(float16)."""
    import torch
    x = rng.normal(size=200_000) * 10.0 ** rng.uniform(-9, 0, 200_000)
    ties = np.array([2 ** -25, 3 * 2 ** -25, 1.5 * 2 ** -24, 2.5 * 2 ** -24, 2 ** -14, 2 ** -14 * (1 - 2 ** -11),
                     1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 - 2 ** -12, 0.0, -0.0, 1.0, -1.0, 2 ** -26])
    x = np.concatenate([x, ties, -ties])
    got = kernel.native().half_from_double(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("kwargs", [dict(), dict(cross=True), dict(channels="properties"), dict(channels="total"),
                                    dict(sigma=0.6, n=16, length=6.4)])
def test_compiled_stored_values_equal_numpy(rng, monkeypatch, kwargs):
    """What the feature file stores of a crystal, by the one-pass kernel and by numpy: the same channels, the
    scale to 1e-12 and the float16 values within one float16 rounding (the envelope runs as a recurrence)."""
    from cloudvox.featurefile import channel_names
    vox = ReciprocalVoxelizer(**kwargs)
    names = channel_names(vox)
    symbols = ["Sr", "Ti", "O", "O", "O", "Ba", "O"]
    structures = [perovskite(), triclinic(rng)] + [
        Structure(symbols[:k], rng.uniform(-0.1, 1.1, (k, 3)), lat, id=f"s{i}")
        for i, (k, lat) in enumerate(zip(rng.integers(1, 8, 12), _lattices(rng)[2:14]))]
    for s in structures:
        ch, values, scale = vox.stored_values(s, names)
        monkeypatch.setattr(kernel, "native", lambda: None)
        ch_np, values_np, scale_np = vox.stored_values(s, names)
        monkeypatch.undo()
        np.testing.assert_array_equal(ch, ch_np)
        assert values.dtype == values_np.dtype == np.float16 and values.shape == values_np.shape
        assert abs(scale - scale_np) <= 1e-12 * scale_np
        a, b = values.astype(np.float64), values_np.astype(np.float64)
        ulp = np.maximum(np.abs(b), 2 ** -14) * 2 ** -10  # one float16 step (the subnormal one below 2^-14)
        assert (np.abs(a - b) <= ulp).all(), s.id
        assert np.abs(values).max() == 1.0  # relative to the largest modulus


@pytest.mark.parametrize("kwargs", [dict(), dict(cross=True), dict(channels="properties")])
def test_stored_values_of_a_block_equal_each_crystal_alone(rng, kwargs):
    """One compiled call for a block's crystals (different atoms, channels and cells) gives each crystal's own
    values bit for bit, and nothing for no crystals."""
    from cloudvox.featurefile import channel_names
    vox = ReciprocalVoxelizer(**kwargs)
    names = channel_names(vox)
    symbols = ["Sr", "Ti", "O", "O", "O", "Ba", "O"]
    crystals = [perovskite(), triclinic(rng)] + [
        Structure(symbols[:k], rng.uniform(0, 1, (k, 3)), lat, id=f"s{i}")
        for i, (k, lat) in enumerate(zip(rng.integers(1, 8, 8), _lattices(rng)[4:12]))]
    many = vox.stored_values_many(crystals, names)
    assert len(many) == len(crystals) and vox.stored_values_many([], names) == []
    for s, (ch, values, scale) in zip(crystals, many):
        ch1, values1, scale1 = vox.stored_values(s, names)
        np.testing.assert_array_equal(ch, ch1)
        assert values.shape == values1.shape and scale == scale1
        np.testing.assert_array_equal(values.view(np.uint16), values1.view(np.uint16))


@pytest.mark.parametrize("distinct", [False, True])
def test_compiled_cartesian_binning_equals_numpy(rng, monkeypatch, distinct):
    """The kernel's cartesian binning is numpy's bit for bit: the same voxels, each set's own points then its
    mirror points summed in numpy's order (signed zeros included), points exactly on voxel edges, outside the
    grid, non-finite, and an empty set."""
    from cloudvox.descriptors import _bin_points
    n, length = 8, 6.4
    w = 2 * np.pi / length
    sizes = np.array([40, 0, 25, 60, 1])
    P = int(sizes.sum())
    G = rng.uniform(-1.3, 1.3, (P, 3)) * w * n / 2
    G[::7] = np.round(G[::7] / w) * w  # on voxel edges
    G[5] = [np.nan, 0.0, 0.0]
    G[6] = [w * n / 2, 0.0, -w * n / 2]  # the upper edge is outside, the lower inside
    amp = rng.normal(size=(3, P)).astype(np.float32)
    amp[:, ::11] = -0.0
    mirror = rng.random(P) < 0.7
    if not distinct:
        G[70:80] = G[70]  # ten points in one voxel of one set
    assert kernel.native() is not None
    compiled = _bin_points(G, amp, sizes, mirror, n, length, "cartesian", None, distinct)
    monkeypatch.setattr(kernel, "native", lambda: None)
    plain = _bin_points(G, amp, sizes, mirror, n, length, "cartesian", None, distinct)
    assert len(compiled) == len(plain) == len(sizes) and len(compiled[1][0]) == 0
    for (ic, vc), (ip, vp) in zip(compiled, plain):
        assert ic.dtype == ip.dtype == np.int32 and vc.dtype == vp.dtype == np.float32
        np.testing.assert_array_equal(ic, ip)
        np.testing.assert_array_equal(vc.view(np.uint32), vp.view(np.uint32))
    assert any(len(i) for i, _ in plain) and (distinct or len(plain[3][0]) < 60)


# sha256 (first 32 hex digits) of the channels and float16 bits of every committed AFLOW fixture crystal's stored
# values, and the sum of their scales, as the compiled pass gave them before it was made faster (c2a202d)
STORED_BITS = {"default": ({}, "e48fa520ab93ea329bcd45915a14ff34", 20.743225619388923),
               "cross": (dict(cross=True), "ae4b0eb929c9987df0b62d3789d47026", 20.743225619388934),
               "wide": (dict(sigma=0.6, n=16, length=6.4), "5579d33c283ecd163cd6c6e602cf3275", 20.743225619388923)}


@pytest.mark.parametrize("setting", sorted(STORED_BITS))
def test_stored_values_are_bit_for_bit_those_of_before(setting):
    """The feature file's values of the 435 committed fixture crystals, float16 bit for bit as the earlier pass
    stored them (the scales, float64, to 1e-12: they may differ in the last bit with the C library)."""
    import hashlib
    from cloudvox.featurefile import channel_names
    kwargs, digest, scales = STORED_BITS[setting]
    structures = read_aflow(fixture_file("aflow", "O-Sr-Ti.jsonl")) + \
        read_aflow(fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"))
    vox = ReciprocalVoxelizer(**kwargs)
    h, total = hashlib.sha256(), 0.0
    for ch, values, scale in vox.stored_values_many(structures, channel_names(vox)):
        h.update(np.asarray(ch, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(values).view(np.uint16).tobytes())
        total += scale
    assert len(structures) == 435
    assert h.hexdigest()[:32] == digest
    assert total == pytest.approx(scales, rel=1e-12)
