"""cloudvox doctor: each mismatch it claims to catch, judged from synthetic rank records (hpc/doctor.py), and the
real command under mpirun (the emulated cluster's tests run it at the start of every job script)."""
import pytest

from hpc.doctor import findings, rendezvous_finding
from tests.hpc.conftest import run_cloudvox


def rec(rank, host="n1", local=0, size=2, launcher="slurm", mpi_launched=True, mpi_size=2, horovod=None, gpus=0,
        nodes=2):
    return dict(rank=rank, size=size, local_rank=local, launcher=launcher, host=host, mpi_launched=mpi_launched,
                slurm=dict(SLURM_JOB_ID="7", SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS=str(size),
                           SLURM_STEP_NUM_NODES=str(nodes)),
                mpi=dict(library="Open MPI v4.1.4", thread="multiple", size=mpi_size, rank=rank) if mpi_launched else None,
                horovod=horovod, h5py_mpi=True, cuda=dict(devices=gpus, nccl="2.21.5" if gpus else None))


def failed(report):
    return [f for f in report if not f.ok]


def test_a_healthy_two_node_job_passes():
    report = findings([rec(0, "n1"), rec(1, "n2")], 2, "featurize", "auto", "/out")
    assert not failed(report), [f.line() for f in report]


def test_srun_without_an_mpi_plugin_is_named_with_the_fix():
    report = findings([rec(0, "n1", mpi_launched=False), rec(1, "n2", mpi_launched=False)], 2, "featurize", "auto", "/o")
    (bad,) = failed(report)
    assert "srun --mpi=pmix" in bad.line()


def test_mpi4py_built_against_another_mpi():
    report = findings([rec(0, "n1", mpi_size=1), rec(1, "n2", mpi_size=1)], 2, "featurize", "auto", "/o")
    (bad,) = failed(report)
    assert "COMM_WORLD size 1" in bad.what and "rebuild mpi4py" in bad.fix


def test_ddp_needs_no_mpi():
    report = findings([rec(0, "n1", mpi_launched=False), rec(1, "n2", mpi_launched=False)], 2, "train", "ddp", "/o")
    assert not failed(report)


def test_horovod_without_nccl_on_a_gpu_node():
    hv = dict(mpi=True, gloo=True, nccl=False)
    report = findings([rec(0, "n1", horovod=hv, gpus=4), rec(1, "n2", horovod=hv, gpus=4)], 2, "train", "horovod", "/o")
    (bad,) = failed(report)
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in bad.fix


def test_more_ranks_per_node_than_gpus():
    report = findings([rec(r, "n1", local=r, size=3, mpi_size=3, gpus=2, nodes=1) for r in range(3)], 3, "train", "ddp",
                      "/o")
    (bad,) = failed(report)
    assert "--ntasks-per-node" in bad.fix


def test_every_rank_local_rank_zero_on_one_node():
    report = findings([rec(0, "n1"), rec(1, "n1")], 2, "train", "ddp", "/o")
    bad = failed(report)
    assert any("local ranks" in f.what and "share one GPU" in f.fix for f in bad)
    assert any("1 host(s) as the ranks see them, 2 node(s)" in f.what for f in bad)  # and the node count


def test_a_rank_that_could_not_write_the_folder():
    report = findings([rec(0, "n1")], 2, "featurize", "auto", "/scratch/out")
    assert "rank(s) [1] did not: make /scratch/out a file system every node mounts" in failed(report)[0].line()


def test_rendezvous_that_does_not_resolve_or_answer():
    assert rendezvous_finding("n1", 5000, {}).ok
    bad = rendezvous_finding("nohost", 5000, {1: "nohost does not resolve"})
    assert not bad.ok and "MASTER_ADDR" in bad.fix and "rank 1: nohost does not resolve" in bad.what


@pytest.mark.mpi
def test_doctor_under_mpirun(tmp_path):
    ok = run_cloudvox(2, "doctor", "--job", "featurize", "--folder", str(tmp_path))
    assert "2/2 rank(s) wrote to" in ok.stderr and "FAIL" not in ok.stderr
    assert not list(tmp_path.iterdir())  # its exchange files are removed
    import os
    env_bad = dict(MASTER_ADDR="no-such-host.invalid")
    os.environ.update(env_bad)
    try:
        bad = run_cloudvox(2, "doctor", "--job", "train", "--backend", "ddp", "--folder", str(tmp_path), check=False)
    finally:
        del os.environ["MASTER_ADDR"]
    assert bad.returncode != 0
    assert "FAIL rendezvous no-such-host.invalid" in bad.stderr and "set MASTER_ADDR" in bad.stderr
