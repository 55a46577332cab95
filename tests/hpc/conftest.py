"""Helpers for tests that run the real command under mpirun."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

BIN = Path(sys.executable).parent


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", HDF5_USE_FILE_LOCKING="FALSE", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return env


def cloudvox_cmd(ranks: int, *args: str) -> list:
    cli = [str(BIN / "cloudvox"), *args]
    if ranks == 0:  # no launcher at all
        return cli
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    return [mpirun, "-n", str(ranks), *cli]


def run_cloudvox(ranks: int, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cloudvox_cmd(ranks, *args), env=mpi_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[...]) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_datasets(a, b) -> None:
    da, db = datasets(a), datasets(b)
    assert da.keys() == db.keys(), set(da) ^ set(db)
    for k in da:
        assert da[k].shape == db[k].shape, k
        if da[k].dtype.kind == "f":
            assert np.array_equal(da[k], db[k], equal_nan=True), k
        else:
            assert np.array_equal(da[k], db[k]), k


def kill_session(sid: int) -> None:
    """SIGKILL every process of a session (mpirun puts each rank in its own process group)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
