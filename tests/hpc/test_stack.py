"""The HPC stack the set-up installs: parallel h5py, mpi4py and Horovod under mpirun -n 2."""
import os
import subprocess
import sys

import pytest

from tests.hpc.conftest import mpi_env

HVD = """
import os, sys, torch, horovod.torch as hvd
hvd.init()
x = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
os.write(1, f"sum {hvd.size()} {x.item()}\\n".encode())  # one write per rank: lines never interleave
"""


def test_h5py_has_parallel_hdf5():
    import h5py
    assert h5py.get_config().mpi, "h5py was built without MPI: run scripts/setup.sh"


@pytest.mark.mpi
def test_horovod_allreduce_under_mpirun_2():
    if os.environ.get("CLOUDVOX_SKIP_HOROVOD") == "1":
        pytest.skip("CLOUDVOX_SKIP_HOROVOD=1: the set-up did not build Horovod")
    proc = subprocess.run(["mpirun", "-n", "2", sys.executable, "-c", HVD], env=mpi_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sum 2 3.0") == 2
