"""Shared fixtures: the ground-truth data beside the project, seeded generators."""
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$CLOUDVOX_SHARED_DATA`` or ``../shared/data`` beside the project root."""
    return Path(os.environ.get("CLOUDVOX_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    path = shared_data_dir().joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"ground-truth file {path} is absent (set CLOUDVOX_SHARED_DATA to the shared data folder)")
    return path


def shared_reference() -> Path:
    path = shared_data_dir().parent / "bench" / "original_voxelnet_reference.py"
    if not path.is_file():
        pytest.skip(f"reference implementation {path} is absent")
    return path


@pytest.fixture
def perovskites_path() -> Path:
    return shared_file("aflow", "oxide_perovskites_cP5.jsonl")


@pytest.fixture
def osrti_path() -> Path:
    return shared_file("aflow", "O-Sr-Ti.jsonl")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
