"""Regenerates voxels_golden.npz: the original VoxelNet featurization (../shared/bench/
original_voxelnet_reference.py, sigma 0.1, L 12.8, N 32) of a few committed fixture entries, stored sparsely
(flat indices of the nonzero voxels of the original's (channel, y, x, z) array, and their float64 values).

    .venv/bin/python tests/data/reference/make_golden.py      # needs ../shared beside the project
"""
import importlib.util
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PICK = {"O-Sr-Ti.jsonl": [0, 1, 40, 77, 100, 134], "oxide_perovskites_cP5_300.jsonl": [0, 1, 150, 299]}


def main():
    spec = importlib.util.spec_from_file_location("ref", ROOT.parent / "shared" / "bench" / "original_voxelnet_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    out = {}
    for name, rows in PICK.items():
        lines = (ROOT / "tests" / "data" / "aflow" / name).read_text().splitlines()
        for k in rows:
            entry = json.loads(lines[k])
            dense = ref.featurize(entry, sorted(entry["species"]))
            flat = np.flatnonzero(dense)
            key = f"{name}:{k}"
            out[key + ":index"] = flat.astype(np.int32)
            out[key + ":value"] = dense.ravel()[flat].astype(np.float64)
            out[key + ":shape"] = np.array(dense.shape)
    np.savez_compressed(HERE / "voxels_golden.npz", **out)


if __name__ == "__main__":
    main()
