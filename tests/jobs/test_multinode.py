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
import time
from pathlib import Path

import pytest
import torch
import yaml

from cloudvox.training.checkpoint import load_checkpoint
from tests.hpc.conftest import assert_same_datasets
from tests.hpc.test_distributed import free_port, params, train
from tests.jobs.cluster import LOOPBACK, LocalSlurm
from tests.jobs.conftest import ROOT
from tests.jobs.test_slurm import (FIXTURE, GPU_SCRIPT_ON_CPU, featurize_config, log_of,  # noqa: F401
                                   train_config, wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=15"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


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
    # one writer per node, each its own segment of the file: no chunk crossed between the nodes
    merge = summary["merge"]
    assert merge["writers"] == 2 and sorted(merge["writer_hosts"]) == sorted(expand(nodes_of(cluster, job)))
    assert sorted(p.name for p in (tmp_path / "features.h5.segments").iterdir()) == ["segment-0000.h5",
                                                                                     "segment-0001.h5"]
    assert not (tmp_path / "features.h5.parts").exists()
    # progress lines in the batch log (not a terminal): done/total, rate, ETA, failures so far
    lines = re.findall(r"featurize: (\d+)/38 blocks .*blocks/s.*failures (\d+)", log)
    assert lines and int(lines[-1][0]) <= 38
    assert not list(tmp_path.glob(".features.h5.watchdog"))  # the heartbeats are cleaned up
    # the preflight ran on both nodes first
    assert re.search(r"doctor: ok   2/2 rank\(s\) wrote to .* from 2 host\(s\) \(n\d, n\d\)", log), log[:3000]
    assert "doctor: ok   rendezvous n" in log and "FAIL" not in log


def test_the_preflight_stops_a_job_launched_without_an_mpi_plugin(cluster, node_env, featurize_config, tmp_path):
    config, _ = featurize_config
    out = tmp_path / "features.h5"
    job = cluster.sbatch(*TWO_NODES, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output", str(out),
                         cwd=tmp_path, env=dict(node_env, CLOUDVOX_SRUN_MPI="none"))
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "FAILED", log[-3000:]
    assert "FAIL featurize needs MPI, and no MPI launcher started the ranks" in log
    assert "srun --mpi=pmix" in log and "cloudvox doctor failed" in log
    assert not out.exists() and not (tmp_path / "features.h5.parts").exists()  # before any work


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
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["progress_every"] = 1e-6  # a progress line every step (it changes nothing trained)
    config.write_text(yaml.safe_dump(cfg))
    env = dict(node_env, MASTER_PORT=str(free_port()))
    job = cluster.sbatch(*TWO_NODES, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / "train.slurm"), model, str(config),
                         backend, cwd=tmp_path, env=env)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert "2 rank(s) started by slurm" in log
    assert re.search(r"epoch 29: \d+/\d+ steps \(\d+\.\d%\), [\d.]+ steps/s, ETA", log), log[-3000:]
    a, b = params(reference), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# a lost node: the job goes on with the nodes left, or is requeued when the batch shell's node is lost
# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def restore_nodes(cluster):
    """After the test, every crashed node back in service for the next one."""
    yield
    for node in cluster.nodes:
        if f"slurmd-{node}" not in cluster.procs:
            cluster.start_node(node, wait=False)
    cluster.wait_idle(120)


def expand(nodelist: str):
    m = re.fullmatch(r"n\[(\d+)[-,](\d+)\]", nodelist)
    assert m, nodelist
    return f"n{m.group(1)}", f"n{m.group(2)}"


def requeue_now(cluster, job) -> None:
    """Wait for the requeue after a node failure and skip SLURM's requeue delay (about two minutes)."""
    wait_until(lambda: cluster.job(job)["JobState"] == "PENDING" and cluster.job(job)["Restarts"] == "1", 120,
               "the job requeued after the node failure")
    assert cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("lost", ["other", "batch host"])
def test_training_resumes_from_the_newest_checkpoint_after_a_lost_node(cluster, restore_nodes, node_env,
                                                                       tiny_features, tmp_path, lost):
    """Another node lost under ``--no-kill``: the job goes on with one rank on the node left. The batch shell's
    node lost (default ``--requeue``): the job is requeued and starts again on two free nodes. Either way it
    resumes from the newest complete checkpoint and ends at the uninterrupted run's parameters."""
    reference = tmp_path / "reference"  # uninterrupted, mpirun -n 2 on this host
    train(2, train_config(tmp_path / "reference.yaml", tiny_features, reference, "voxelnet"), "ddp")
    run = tmp_path / "run"
    config = train_config(tmp_path / "run.yaml", tiny_features, run, "voxelnet")
    env = dict(node_env, MASTER_PORT=str(free_port()))
    no_kill = ["--no-kill"] if lost == "other" else []
    job = cluster.sbatch(*TWO_NODES, *no_kill, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / "train.slurm"), "voxelnet",
                         str(config), "ddp", cwd=tmp_path, env=env)
    metrics = run / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 300, "two epochs")
    first, second = expand(nodes_of(cluster, job))
    logged = len(metrics.read_text().splitlines())
    cluster.crash(second if lost == "other" else first)
    if lost == "batch host":
        requeue_now(cluster, job)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    if lost == "other":
        assert cluster.job(job)["Restarts"] == "0" and nodes_of(cluster, job) == first
        assert f"going on with 1 task(s) on the 1 node(s) left ({first})" in log
        assert "1 rank(s) started by slurm" in log
    else:
        assert cluster.job(job)["Restarts"] == "1" and first not in expand(nodes_of(cluster, job))
    resumed = [int(e) for e in re.findall(r"resumed from \S*checkpoint_last\.pt at epoch (\d+)", log)]
    # the newest complete checkpoint: never one older than the epochs logged before the crash
    assert len(resumed) == 1 and logged <= resumed[0] < 30, log[-4000:]
    a, b = params(reference), params(run)
    for k in a:  # the same steps at one rank as at two (the global batch is fixed); summation order only
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 30
    assert not list(run.glob("*.tmp"))


@pytest.mark.parametrize("lost", ["other", "batch host"])
def test_featurize_survives_a_lost_node(cluster, restore_nodes, node_env, featurize_config, tmp_path, lost):
    """Another node lost under ``--no-kill``: the job goes on with one rank on the node left. The batch shell's
    node lost (default): the job is requeued and starts again on two free nodes. Either way it continues from
    the finished blocks."""
    config, reference = featurize_config
    out = tmp_path / "features.h5"
    parts = tmp_path / "features.h5.parts"
    slow = dict(node_env, CLOUDVOX_INJECT="slow", PYTHONPATH=str(Path(__file__).parent / "inject"))
    no_kill = ["--no-kill"] if lost == "other" else []
    job = cluster.sbatch(*TWO_NODES, *no_kill, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output",
                         str(out), cwd=tmp_path, env=slow)
    wait_until(lambda: len(list(parts.glob("block-*.h5"))) >= 4, 300, "four finished blocks")
    first, second = expand(nodes_of(cluster, job))
    cluster.crash(second if lost == "other" else first)
    if lost == "batch host":
        requeue_now(cluster, job)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    resumed = [int(m) for m in re.findall(r"(\d+) already done", log)]
    assert len(resumed) == 2 and resumed[0] == 0 and resumed[1] >= 4, resumed
    if lost == "other":
        assert nodes_of(cluster, job) == first and "going on with 1 task(s)" in log
    else:
        assert cluster.job(job)["Restarts"] == "1" and first not in expand(nodes_of(cluster, job))
    assert_same_datasets(out, reference)


# --------------------------------------------------------------------------------------------------------
# a hung rank
# --------------------------------------------------------------------------------------------------------
def task_pid(job: int, rank: int) -> int:
    """The PID (in this machine's namespace) of the cloudvox process that is rank ``rank`` of ``job``'s step."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in v)
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (env.get("SLURM_JOB_ID") == str(job) and env.get("SLURM_PROCID") == str(rank) and "SLURM_STEP_ID" in env
                and any(c.endswith(b"cloudvox") for c in cmd[:2])):
            return int(proc.name)
    raise AssertionError(f"no process of rank {rank} of job {job}")


TIMEOUT = 10  # s: the collective timeout of these jobs


@pytest.mark.slow
@pytest.mark.parametrize("what,stopped", [("ddp", 1), ("horovod", 0), ("featurize", 1)])
def test_a_stopped_rank_ends_the_job_within_the_timeout_and_is_named(cluster, node_env, tiny_features,
                                                                     featurize_config, tmp_path, what, stopped):
    if what == "featurize":
        config, _ = featurize_config
        slow = dict(node_env, CLOUDVOX_INJECT="slow", PYTHONPATH=str(Path(__file__).parent / "inject"))
        parts = tmp_path / "features.h5.parts"
        job = cluster.sbatch(*TWO_NODES, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output",
                             str(tmp_path / "features.h5"), "--collective-timeout", str(TIMEOUT), cwd=tmp_path, env=slow)
        wait_until(lambda: len(list(parts.glob("block-*.h5"))) >= 2, 300, "two finished blocks")
    else:
        config = train_config(tmp_path / "run.yaml", tiny_features, tmp_path / "run", "voxelnet")
        cfg = yaml.safe_load(config.read_text())
        cfg["train"].update(collective_timeout=TIMEOUT, epochs=1000)
        config.write_text(yaml.safe_dump(cfg))
        env = dict(node_env, MASTER_PORT=str(free_port()))
        job = cluster.sbatch(*TWO_NODES, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / "train.slurm"), "voxelnet",
                             str(config), what, cwd=tmp_path, env=env)
        metrics = tmp_path / "run" / "metrics.jsonl"
        wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 1, 300, "an epoch")
    host = expand(nodes_of(cluster, job))[stopped]
    pid = task_pid(job, stopped)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.time()
    state = ended(cluster, job, timeout=120)
    log = log_of(tmp_path, job)
    assert state == "FAILED", log[-3000:]
    lines = [line for line in log.splitlines() if "collective timeout" in line]
    assert lines, log[-3000:]
    assert f"collective timeout ({TIMEOUT} s)" in lines[0]
    assert f"rank {stopped} (host {host}, pid" in lines[0] and "does not respond" in lines[0], lines
    assert "step ended with status" in log
    print(f"{what}: rank {stopped} stopped, job ended after {time.time() - t0:.1f} s")


# --------------------------------------------------------------------------------------------------------
# torchrun across nodes
# --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_across_two_nodes_equals_mpirun(cluster, node_env, tiny_features, tmp_path):
    reference = tmp_path / "reference"
    train(2, train_config(tmp_path / "reference.yaml", tiny_features, reference, "voxelnet"), "ddp")
    run = tmp_path / "run"
    config = train_config(tmp_path / "run.yaml", tiny_features, run, "voxelnet")
    env = dict(node_env, MASTER_PORT=str(free_port()), CLOUDVOX_LAUNCHER="torchrun")
    job = cluster.sbatch(*TWO_NODES, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / "train.slurm"), "voxelnet", str(config),
                         "ddp", cwd=tmp_path, env=env)
    state = ended(cluster, job)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert "2 rank(s) started by torchrun" in log
    a, b = params(reference), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
