from pathlib import Path

import numpy as np
import pytest

from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.features import FeatureFile, featurize_block, root_attributes, write_features
from cloudvox.io.sources import Source

ROOT = Path(__file__).resolve().parents[2]


def test_layout_doc_is_current():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "cloudvox.features"], capture_output=True, text=True, check=True).stdout
    assert (ROOT / "docs" / "hdf5_layout.md").read_text().strip() == out.strip()


def test_block_roundtrip_and_reader_errors(tmp_path, osrti_path):
    src = Source("aflow", [osrti_path])
    vox = ReciprocalVoxelizer()
    block = featurize_block(src.records(0, 10), 0, vox, src.sources)
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
