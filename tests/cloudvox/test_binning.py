"""torch binning of stored reciprocal sets equals the numpy descriptor (the training augmentation path)."""
import numpy as np
import pytest
import torch

from cloudvox.binning import bin_reciprocal, collate_reciprocal
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
