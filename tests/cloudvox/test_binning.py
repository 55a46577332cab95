"""torch binning of stored reciprocal sets equals the numpy descriptor (the training augmentation path)."""
import numpy as np
import pytest
import torch

from cloudvox.binning import bin_reciprocal, collate_reciprocal, pack_reciprocal, padded_rows
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.io import read_aflow, read_prototypes


@pytest.fixture(scope="module")
def crystals():
    return read_prototypes()[:60]


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_binning_equals_numpy_descriptor(crystals, mode, rotate, dtype):
    vox = ReciprocalVoxelizer(mode=mode)
    names = vox.channel_names(crystals)
    rng = np.random.default_rng(3)
    R = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in crystals]) if rotate else None
    expected = vox.batch(crystals, R)
    batch = collate_reciprocal([vox.reciprocal(s, names) for s in crystals], dtype=dtype)
    got = bin_reciprocal(batch, len(names), vox.n, vox.length, mode, None if R is None else torch.from_numpy(R))
    assert got.dtype == dtype and got.shape == expected.shape
    diff = np.abs(got.double().numpy() - expected)
    if dtype == torch.float64:
        assert diff.max() <= 1e-6
    else:  # float32 rotation of G: a voxel may flip only for a G within ~1e-7 of an edge
        assert (diff > 1e-5).sum() <= 1e-5 * (expected > 0).sum() + 5


def test_binning_runs_on_the_batch_device_and_matches_structure_rotation(osrti_path):
    structures = read_aflow(osrti_path)[:8]
    vox = ReciprocalVoxelizer(n=16, length=8.0)
    names = vox.channel_names(structures)
    R = torch.from_numpy(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]).expand(8, 3, 3)
    batch = collate_reciprocal([vox.reciprocal(s, names) for s in structures], dtype=torch.float64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    got = bin_reciprocal(batch.to(device), len(names), 16, 8.0, "cartesian", R).cpu().numpy()
    fixed = ReciprocalVoxelizer(n=16, length=8.0, species=names)
    expected = fixed.batch([s.rotated(R[0].numpy()) for s in structures])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["cartesian", "spherical"])
@pytest.mark.parametrize("channels", ["element", "properties"])
def test_half_sets_bin_as_the_full_sets(crystals, mode, channels):
    """A batch of half sets (one of each Friedel pair, what the loader collates) bins to the full sets' voxels,
    rotated and not, compact channel slots (element) and fixed channel lists (properties) alike."""
    vox = ReciprocalVoxelizer(mode=mode, n=16, length=8.0, channels=channels, cross=channels == "element")
    names = vox.channel_names(crystals)
    halves = vox.reciprocal_batch(crystals, names, dtype=np.float64, half=True)
    assert all(h.half and len(h.G) < len(h.full().G) for h in halves)
    rng = np.random.default_rng(5)
    R = torch.from_numpy(np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in crystals]))
    for rotations in (None, R):
        full = bin_reciprocal(collate_reciprocal([h.full() for h in halves], dtype=torch.float64), len(names),
                              vox.n, vox.length, mode, rotations)
        half_batch = collate_reciprocal(halves, dtype=torch.float64)
        assert half_batch.half and half_batch.values.shape[0] == sum(len(h.G) for h in halves)
        got = bin_reciprocal(half_batch, len(names), vox.n, vox.length, mode, rotations)
        assert full.abs().max() > 0
        torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mixes half and full"):
        collate_reciprocal([halves[0], halves[1].full()])


@pytest.mark.parametrize("uniform", [True, False])
def test_packed_batch_equals_a_point_by_point_reference(crystals, uniform):
    """pack_reciprocal (one concatenation when every structure has the batch's K channels, a padded copy
    otherwise) puts each point's values in its structure's slots and -1 past them, as an explicit loop does."""
    vox = ReciprocalVoxelizer(n=16, length=8.0, channels="element", cross=True)
    names = vox.channel_names(crystals)
    sets = vox.reciprocal_batch(crystals, names, dtype=np.float32, half=True)
    sizes = [len(s.channels) for s in sets]
    if uniform:  # the most common channel count among the prototypes, and only those
        k = max(set(sizes), key=sizes.count)
        sets = [s for s in sets if len(s.channels) == k][:12]
    assert len(sets) >= 4 and (len({len(s.channels) for s in sets}) == 1) == uniform
    amps = [np.asfortranarray(s.amp) for s in sets]
    for slots in (None, [s.channels for s in sets]):
        got = pack_reciprocal([s.G for s in sets], amps, slots, True)
        K = max(len(s.channels) for s in sets)
        P = sum(len(s.G) for s in sets)
        values, slot, owner = np.zeros((P, K), np.float32), np.full((len(sets), K), -1), []
        start = 0
        for b, s in enumerate(sets):
            for j in range(len(s.channels)):
                values[start:start + len(s.G), j] = s.amp[j]
                slot[b, j] = j if slots is None else s.channels[j]
            owner += [b] * len(s.G)
            start += len(s.G)
        assert got.values.dtype == torch.float32 and got.values.shape == (P, K)
        np.testing.assert_array_equal(got.values.numpy(), values)
        np.testing.assert_array_equal(got.slot_channel.numpy(), slot)
        np.testing.assert_array_equal(got.point_structure.numpy(), owner)
        np.testing.assert_array_equal(got.G.numpy(), np.concatenate([s.G for s in sets]).astype(np.float32))
        assert got.point_counts == tuple(len(s.G) for s in sets) and got.half


def test_padded_rows():
    rows = [np.array([3, 1]), np.array([], dtype=np.int64), np.array([7, 8, 9])]
    np.testing.assert_array_equal(padded_rows(rows), [[3, 1, -1], [-1, -1, -1], [7, 8, 9]])
    assert padded_rows(rows, 4, fill=0).tolist() == [[3, 1, 0, 0], [0, 0, 0, 0], [7, 8, 9, 0]]
    assert padded_rows([]).shape == (0, 0)
