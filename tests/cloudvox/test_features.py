from pathlib import Path

import numpy as np
import pytest

from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.featurefile import STORE_ITEMS, FeatureFile, featurize_block, root_attributes, write_features
from cloudvox.io.sources import Source

ROOT = Path(__file__).resolve().parents[2]


def test_layout_doc_is_current():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "cloudvox.featurefile"], capture_output=True, text=True, check=True).stdout
    assert (ROOT / "docs" / "hdf5_layout.md").read_text().strip() == out.strip()


def test_block_roundtrip_and_reader_errors(tmp_path, osrti_path):
    src = Source("aflow", [osrti_path])
    vox = ReciprocalVoxelizer()
    block = featurize_block(src.records(0, 10), 0, vox, src.sources, STORE_ITEMS)  # voxels stored: exact
    path = tmp_path / "b.h5"
    write_features(path, block, dict(root_attributes(vox, src.sources, "aflow", "test"), species='["O", "Sr", "Ti"]'))
    ff = FeatureFile(path)
    assert ff.n == 10 and ff.species == ["O", "Sr", "Ti"]
    structures = [r.structure for r in src.records(0, 10)]
    expected = ReciprocalVoxelizer(species=("Ba", "O", "Sr", "Ti")).batch(structures)
    np.testing.assert_array_equal(ff.voxels(2, ["Ba", "O", "Sr", "Ti"]), expected[2])
    np.testing.assert_array_equal(ff.voxels_batch([4, 1], ["Ba", "O", "Sr", "Ti"]), expected[[4, 1]])
    with pytest.raises(IndexError, match="out of range"):
        ff.voxels(10)
    with pytest.raises(ValueError, match="outside the channel list"):
        ff.voxels(0, ["O", "Ti"])
    assert ff.structure(3).id == structures[3].id
    with pytest.raises(ValueError, match="not a cloudvox feature file"):
        import h5py
        h5py.File(tmp_path / "other.h5", "w").close()
        FeatureFile(tmp_path / "other.h5")


F16 = 2.0 ** -11  # float16: relative rounding of a normal value
F16_FLOOR = 2.0 ** -24  # float16: the subnormal step, relative to the per-structure scale


def test_reduced_dtypes_keep_float64_amplitudes_to_the_documented_tolerance(tmp_path, osrti_path):
    """Stored reciprocal sets (float16 relative to a per-structure scale, Miller indices regenerated from the
    lattice) against float64 |h| and cross-spectra; voxels binned from them against the exact voxels."""
    src = Source("aflow", [osrti_path])
    structures = [r.structure for r in src.records(0, 40)]
    for cross in (False, True):
        vox = ReciprocalVoxelizer(cross=cross)
        block = featurize_block(src.records(0, 40), 0, vox, src.sources)  # the default store: no voxels
        path = tmp_path / f"r{cross}.h5"
        write_features(path, block, dict(root_attributes(vox, src.sources, "aflow", "test"), species='["O", "Sr", "Ti"]'))
        ff = FeatureFile(path)
        assert ff.version == 2 and "reciprocal/m" not in ff.h5 and ff.h5["reciprocal/values"].dtype == np.float16
        names = ff.model_channels()
        worst = 0.0
        for i, s in enumerate(structures):
            exact = vox.reciprocal(s, names, dtype=np.float64, half=True)
            got = ff.reciprocal(i, half=True)
            np.testing.assert_array_equal(got.m, exact.m)  # the regenerated indices, in the stored order
            np.testing.assert_array_equal(got.channels, exact.channels)
            scale = np.abs(exact.amp).max()
            err = np.abs(got.amp - exact.amp)
            bound = F16 * np.abs(exact.amp) + F16_FLOOR * scale
            assert (err <= bound * 1.001).all(), (i, float((err / bound).max()))
            worst = max(worst, float((err / (np.abs(exact.amp) + 1e-30))[np.abs(exact.amp) > 1e-3 * scale].max()))
        assert 0 < worst <= F16 * 1.001  # really float16: not exact, and no worse than its rounding
        if not cross:  # voxels binned from the stored set: the exact voxels to float16's rounding
            expected = ReciprocalVoxelizer(species=tuple(names)).batch(structures)
            for i in range(0, 40, 3):
                got = ff.voxels(i)
                np.testing.assert_allclose(got, expected[i], rtol=F16, atol=F16_FLOOR * 60 * expected[i].max())
                assert not (got[expected[i] == 0] != 0).any()  # no voxel appears (some below 6e-8 scale vanish)


def test_version_1_files_are_still_read(tmp_path, osrti_path):
    """A version-1 file (float32 values, stored Miller indices, no scale) reads as before."""
    import h5py
    src = Source("aflow", [osrti_path])
    vox = ReciprocalVoxelizer()
    block = featurize_block(src.records(0, 5), 0, vox, src.sources)
    path = tmp_path / "v1.h5"
    write_features(path, block, dict(root_attributes(vox, src.sources, "aflow", "test"), species='["O", "Sr", "Ti"]'))
    structures = [r.structure for r in src.records(0, 5)]
    names = ["O", "Sr", "Ti"]
    sets = vox.reciprocal_batch(structures, names, dtype=np.float32, half=True)
    with h5py.File(path, "r+") as f:  # rewrite as version 1
        f.attrs["format_version"] = 1
        del f["reciprocal/values"], f["reciprocal/scale"]
        f["reciprocal/m"] = np.concatenate([rs.m for rs in sets]).astype(np.int16)
        f["reciprocal/m_offsets"] = np.concatenate([[0], np.cumsum([len(rs.m) for rs in sets])])
        f["reciprocal/values"] = np.concatenate([rs.amp.ravel() for rs in sets])
    ff = FeatureFile(path)
    for i, rs in enumerate(sets):
        got = ff.reciprocal(i, names, half=True)
        np.testing.assert_array_equal(got.amp, rs.amp)
        np.testing.assert_array_equal(got.m, rs.m)
    ff.close()
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(ValueError, match="upgrade cloudvox"):
        FeatureFile(path)


def test_cached_items_are_filled_a_file_block_at_a_time_and_equal_uncached_reads(tmp_path, osrti_path, monkeypatch):
    """A cached dataset reads the file block around an item with one read per dataset (DataLoader workers fill
    their caches in len / CACHE_BLOCK reads); its items, in any order and with repeats, equal uncached reads."""
    import cloudvox.data as data
    src = Source("aflow", [osrti_path])
    vox = ReciprocalVoxelizer(n=16, length=10.0)
    block = featurize_block(src.records(0, 40), 0, vox, src.sources, ("reciprocal", "cloud"))
    path = tmp_path / "r.h5"
    write_features(path, block, dict(root_attributes(vox, src.sources, "aflow", "test"), species='["O", "Sr", "Ti"]'))
    monkeypatch.setattr(data, "CACHE_BLOCK", 16)
    indices = np.random.default_rng(0).permutation(40)[:30].tolist() + [7, 7]  # file order shuffled, repeats
    targets = np.arange(len(indices), dtype=np.float64)
    for make in (lambda cache: data.VoxelDataset(path, indices, targets, "reciprocal", cache=cache),
                 lambda cache: data.CloudDataset(path, indices, targets, cutoff=3.0, cache=cache)):
        cached, uncached = make(True), make(False)
        first = cached[0]
        block_of_first = indices[0] // 16
        in_block = [k for k, i in enumerate(indices) if i // 16 == block_of_first]
        assert sorted(cached._cache) == sorted(in_block) and len(in_block) > 1  # its neighbours came with it
        assert first is cached[0]
        for k in np.random.default_rng(1).permutation(len(indices)):
            a, b = cached[k], uncached[k]
            assert a.keys() == b.keys() and a["index"] == indices[k] and a["target"] == targets[k]
            for key in a:
                if isinstance(a[key], np.ndarray):
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert len(cached._cache) == len(indices)


def test_item_cache_stays_within_its_budget_and_serves_equal_items_past_it(tmp_path, osrti_path):
    """Memory flat in the number of structures: past ``cache_bytes`` items are read each time, not kept."""
    import cloudvox.data as data
    src = Source("aflow", [osrti_path])
    vox = ReciprocalVoxelizer(n=16, length=10.0)
    block = featurize_block(src.records(0, 135), 0, vox, src.sources, ("reciprocal",))
    path = tmp_path / "r.h5"
    write_features(path, block, dict(root_attributes(vox, src.sources, "aflow", "test"), species='["O", "Sr", "Ti"]'))
    everything = data.VoxelDataset(path, range(135), None, "reciprocal")
    full = [everything[k] for k in range(135)]
    sizes = [data._item_bytes(it) for it in full]
    assert everything.cached_bytes == sum(sizes)  # all kept under the default budget
    small = data.VoxelDataset(path, range(135), None, "reciprocal")
    small.cache_bytes = sum(sizes) // 4
    for _ in range(2):
        for k in np.random.default_rng(0).permutation(135):
            np.testing.assert_array_equal(small[k]["amp"], full[k]["amp"])
    assert 0 < len(small._cache) < 135
    assert small.cache_bytes <= small.cached_bytes < small.cache_bytes + max(sizes)  # filled, then no more
