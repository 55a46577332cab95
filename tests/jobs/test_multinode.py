"""The job scripts on an emulated cluster of three nodes (tests/jobs/cluster.py: one slurmd per node in its own
namespaces, everything on 127.0.0.1): multi-node runs equal ``mpirun -n 2`` on one node, a node lost
mid-job (requeue, resume on the nodes left), and a hung rank ending the job with its name.

Between the nodes Open MPI, gloo and Horovod speak TCP on the loopback interface only (``lo``), as
``job_env`` sets; within a node Open MPI uses shared memory.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from cloudvox.train import load_checkpoint
from tests.hpc.conftest import assert_same_datasets, run_cloudvox
from tests.hpc.test_distributed import free_port, params, train
from tests.jobs.cluster import LocalSlurm
from tests.jobs.conftest import ROOT
from tests.jobs.test_slurm import FIXTURE, GPU_SCRIPT_ON_CPU, log_of, train_config, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=15"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}
LOOPBACK = dict(OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo", GLOO_SOCKET_IFNAME="lo",
                HOROVOD_GLOO_IFACE="lo", NCCL_SOCKET_IFNAME="lo")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalSlurm(tmp_path_factory.mktemp("slurm3"), nodes=3, cpus=2).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def node_env(job_env):
    return dict(job_env, **LOOPBACK)


def nodes_of(cluster: LocalSlurm, job: int):
    return cluster.job(job).get("NodeList", "")


def ended(cluster, job, timeout=300):
    return cluster.wait_for(job, ENDED, timeout=timeout)


# --------------------------------------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def featurize_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("featurize_multi")
    cfg = dict(input=[str(FIXTURE)], format="aflow", output=str(d / "reference.h5"), block_size=8,
               descriptor=dict(mode="cartesian", n=16, length=40.0, sigma=0.1))
    path = d / "featurize.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_cloudvox(2, "featurize", "--config", str(path))  # the reference: mpirun -n 2 on this host
    return path, d / "reference.h5"


def test_two_node_featurize_equals_mpirun(cluster, node_env, featurize_config, tmp_path):
    config, reference = featurize_config
    out = tmp_path / "features.h5"
    job = cluster.sbatch(*TWO_NODES, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output", str(out),
                         "--progress-every", "0.001", cwd=tmp_path, env=node_env)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert nodes_of(cluster, job) in ("n[1-2]", "n[1,3]", "n[2-3]")
    assert_same_datasets(out, reference)
    summary = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    assert summary["ranks"] == 2 and summary["done"] == 300
    # progress lines in the batch log (not a terminal): done/total, rate, ETA, failures so far
    lines = re.findall(r"featurize: (\d+)/38 blocks .*blocks/s.*failures (\d+)", log)
    assert lines and int(lines[-1][0]) <= 38
    assert not list(tmp_path.glob(".features.h5.watchdog"))  # the heartbeats are cleaned up


# --------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    from tests.cloudvox.test_runs import make_file
    d = tmp_path_factory.mktemp("train_data_multi")
    return make_file(d / "tiny.h5", FIXTURE, 64, n=16, length=12.8)


@pytest.mark.slow
@pytest.mark.parametrize("model,backend", [("voxelnet", "horovod"), ("voxelnet", "ddp"), ("atomcloud", "ddp")])
def test_two_node_training_equals_mpirun(cluster, node_env, tiny_features, tmp_path, model, backend):
    reference = tmp_path / "reference"
    train(2, train_config(tmp_path / "reference.yaml", tiny_features, reference, model), backend, model=model)
    run = tmp_path / "run"
    config = train_config(tmp_path / "run.yaml", tiny_features, run, model)
    env = dict(node_env, MASTER_PORT=str(free_port()))
    job = cluster.sbatch(*TWO_NODES, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / "train.slurm"), model, str(config),
                         backend, cwd=tmp_path, env=env)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert "2 rank(s) started by slurm" in log
    a, b = params(reference), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
