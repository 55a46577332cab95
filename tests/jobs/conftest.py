"""A local single-node SLURM cluster for the whole test session, and the environment jobs are submitted with."""
import sys
from pathlib import Path

import pytest

from tests.jobs.cluster import LocalSlurm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def job_env():
    """What a user's shell holds when they run sbatch from their checkout (sbatch passes it on): the job
    scripts find the checkout and the Python environment through jobs/common.sh's variables."""
    return dict(CLOUDVOX_ROOT=str(ROOT), CLOUDVOX_VENV=sys.prefix, HDF5_USE_FILE_LOCKING="FALSE",
                OMPI_MCA_btl_vader_single_copy_mechanism="none")
