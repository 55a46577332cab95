"""Shared fixtures: committed data under tests/data (cut from the shared ground truth, sources named there),
seeded generators, the pytest markers, and the opt-in checks over the full shared data.

Every test runs on a clean clone. The checks that need the full files beside the project (``../shared``:
exactness against the original featurization over every AFLOW entry) carry the marker ``shared`` and run
only when asked for (``bash scripts/test.sh --shared``, or ``CLOUDVOX_SHARED_CHECKS=1``); otherwise they are
deselected, and the session header and summary say so and how to run them. Asked for without the files,
the session stops with a usage error instead of skipping.
"""
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MARKERS = {
    "mpi": "runs the real command under mpirun (Open MPI)",
    "slurm": "submits jobs to a local SLURM cluster the tests start (tests/jobs/cluster.py)",
    "multinode": "runs on an emulated cluster of several nodes (namespaces on 127.0.0.1, tests/jobs/cluster.py)",
    "slow": "takes more than ~30 s",
    "shared": "needs the full shared data beside the project (../shared): opt in with --shared",
}


def shared_data_dir() -> Path:
    """``$CLOUDVOX_SHARED_DATA`` or ``../shared/data`` beside the project root."""
    return Path(os.environ.get("CLOUDVOX_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file of the full shared data; only for tests marked ``shared`` (the session checked it exists)."""
    return shared_data_dir().joinpath(*parts)


def shared_reference() -> Path:
    return shared_data_dir().parent / "bench" / "original_voxelnet_reference.py"


def fixture_file(*parts: str) -> Path:
    return DATA.joinpath(*parts)


# --------------------------------------------------------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--shared", action="store_true", default=os.environ.get("CLOUDVOX_SHARED_CHECKS") == "1",
                     help="also run the checks over the full shared data (../shared, or $CLOUDVOX_SHARED_DATA)")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("--shared"):
        missing = [p for p in (shared_data_dir() / "aflow" / "oxide_perovskites_cP5.jsonl",
                               shared_data_dir() / "aflow" / "O-Sr-Ti.jsonl", shared_reference()) if not p.is_file()]
        if missing:
            raise pytest.UsageError(f"--shared needs the shared data; missing {', '.join(map(str, missing))} "
                                    "(put the shared folder beside the project or set CLOUDVOX_SHARED_DATA)")


def devices():
    """Where the device-parametrized tests run: the CPU always, CUDA where a device is present."""
    import torch
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", devices())


def pytest_report_header(config):
    lines = [f"shared-data checks: ON (full files in {shared_data_dir()})" if config.getoption("--shared")
             else "shared-data checks: off (opt in with: bash scripts/test.sh --shared)"]
    lines.append(f"devices: {', '.join(devices())}" + ("" if "cuda" in devices() else
                                                        " (no CUDA device: the CUDA variants are not collected)"))
    return lines


def pytest_collection_modifyitems(config, items):
    if config.getoption("--shared"):
        return
    keep = [i for i in items if i.get_closest_marker("shared") is None]
    dropped = [i for i in items if i.get_closest_marker("shared") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    config._cloudvox_shared_deselected = len(dropped)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "cuda" not in devices():
        terminalreporter.write_line("device-parametrized tests ran on the CPU only: no CUDA device here "
                                    "(bench/gpu_check.sh runs them on a GPU node)")
    n = getattr(config, "_cloudvox_shared_deselected", 0)
    if n:
        terminalreporter.write_line(f"{n} check(s) over the full shared data deselected (exactness on every AFLOW "
                                    "entry): run bash scripts/test.sh --shared with ../shared beside the project")


# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def perovskites_path() -> Path:
    """300 cubic oxide perovskites (tests/data/aflow/README.md)."""
    return fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")


@pytest.fixture
def osrti_path() -> Path:
    """The 135 O-Sr-Ti entries, 5 to 32 atoms, cubic to triclinic."""
    return fixture_file("aflow", "O-Sr-Ti.jsonl")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
