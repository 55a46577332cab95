"""The job scripts in jobs/, submitted with sbatch exactly as a user does, under a real (local) SLURM:
completion, the time-limit signal with requeue and resume, a failing rank, and launcher detection under srun.

The scripts run unchanged; the tests only pass sbatch options (which win over the #SBATCH lines) and the
site variables of jobs/common.sh (CLOUDVOX_ROOT, CLOUDVOX_VENV).
"""
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cloudvox.training.checkpoint import load_checkpoint
from tests.cloudvox.test_runs import make_file
from tests.hpc.conftest import assert_same_datasets, run_cloudvox
from tests.hpc.test_distributed import free_port, params, train, write_config
from tests.jobs.conftest import ROOT

pytestmark = pytest.mark.slurm

FIXTURE = ROOT / "tests" / "data" / "aflow" / "oxide_perovskites_cP5_300.jsonl"
CPU_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15"]
GPU_SCRIPT_ON_CPU = ["--gpus-per-node=0", "--mem-per-gpu=0"]  # the training scripts ask for GPUs


INJECT = str(Path(__file__).parent / "inject")  # sitecustomize.py: fault injection in the steps' tasks


def log_of(folder: Path, job_id: int) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"*-{job_id}.*")))


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def signal_and_restart(slurm, job_id: int) -> None:
    """What the time limit does (--signal=B:USR1@300), then skip the ~2 minutes a requeued job waits."""
    r = slurm.run("scancel", "--batch", "--signal=USR1", str(job_id))
    assert r.returncode == 0, r.stderr
    slurm.wait_for(job_id, {"PENDING"}, timeout=180)
    # slurmd refuses a relaunch whose credential is not newer (whole seconds) than the revocation of the
    # previous run's: let the node finish that run and the clock move on, as SLURM's delay does
    wait_until(lambda: slurm.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip() == "idle", 60, "an idle node")
    time.sleep(2)
    r = slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def featurize_config(tmp_path_factory):
    """A featurize config on the committed fixture (38 blocks of 8)."""
    d = tmp_path_factory.mktemp("featurize_cfg")
    cfg = dict(input=[str(FIXTURE)], format="aflow", output=str(d / "reference.h5"), block_size=8,
               descriptor=dict(mode="cartesian", n=16, length=40.0, sigma=0.1))
    path = d / "featurize.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_cloudvox(2, "featurize", "--config", str(path))  # the reference: mpirun -n 2
    return path, d / "reference.h5"


def test_sbatch_featurize_equals_mpirun(slurm, job_env, featurize_config, tmp_path):
    config, reference = featurize_config
    out = tmp_path / "features.h5"
    job = slurm.sbatch(*CPU_TASKS, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output", str(out),
                       cwd=tmp_path, env=job_env)
    state = slurm.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert_same_datasets(out, reference)
    summary = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    assert summary["ranks"] == 2 and summary["done"] == 300
    assert "2 rank(s) started by slurm" in log and f"SLURM job {job}, SLURM_RESTART_COUNT=0" in log


def test_featurize_requeued_on_the_time_limit_signal_resumes_and_equals_an_uninterrupted_run(
        slurm, job_env, featurize_config, tmp_path):
    config, reference = featurize_config
    out = tmp_path / "features.h5"
    parts = tmp_path / "features.h5.parts"
    slow = dict(job_env, CLOUDVOX_INJECT="slow", PYTHONPATH=INJECT)  # 0.25 s per block: ~5 s for the job
    job = slurm.sbatch(*CPU_TASKS, str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output", str(out),
                       cwd=tmp_path, env=slow)
    wait_until(lambda: len(list(parts.glob("block-*.h5"))) >= 2, 300, "two finished blocks")
    signal_and_restart(slurm, job)
    state = slurm.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert slurm.job(job)["Restarts"] == "1"
    assert "stopped on request" in log and "requeueing job" in log
    assert f"SLURM job {job}, SLURM_RESTART_COUNT=1" in log
    resumed = [int(m) for m in re.findall(r"(\d+) already done", log)]
    assert len(resumed) == 2 and resumed[0] == 0 and 2 <= resumed[1] < 300 // 8 + 1, resumed
    assert_same_datasets(out, reference)


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_within_seconds(slurm, job_env, featurize_config, tmp_path, fault):
    """A rank that raises, or dies of SIGKILL as under the OOM killer: the job fails promptly, no hang."""
    config, _ = featurize_config
    env = dict(job_env, CLOUDVOX_INJECT=fault, CLOUDVOX_INJECT_RANK="1", PYTHONPATH=INJECT)
    t0 = time.time()
    job = slurm.sbatch(*CPU_TASKS, str(ROOT / "jobs" / "featurize.slurm"), str(config),
                       "--output", str(tmp_path / "features.h5"), cwd=tmp_path, env=env)
    state = slurm.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=120)
    elapsed = time.time() - t0
    log = log_of(tmp_path, job)
    assert state == "FAILED", log[-3000:]
    assert slurm.job(job)["ExitCode"] != "0:0"
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail"  # a hang would last until the time limit
    assert "step ended with status" in log
    if fault == "raise":
        assert "injected fault on rank 1" in log
    else:
        assert re.search(r"task 1.*(Killed|signal 9)|Killed", log), log[-3000:]


# --------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_data")
    return make_file(d / "tiny.h5", FIXTURE, 64, n=16, length=12.8)


def train_config(path: Path, data: Path, run_dir: Path, model: str) -> Path:
    cfg = yaml.safe_load(write_config(path, data, run_dir, epochs=30).read_text())
    if model == "atomcloud":
        cfg.update(network=dict(cutoff=3.0, layers=1, scalars=8, vectors=4, tensors=2, embed=8, head=[8]))
        cfg["data"]["extensive"] = True
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model,backend", [("voxelnet", "horovod"), ("voxelnet", "ddp"), ("atomcloud", "ddp")])
def test_training_job_checkpoints_on_the_signal_requeues_and_resumes_to_the_uninterrupted_result(
        slurm, job_env, tiny_features, tmp_path, model, backend):
    reference = tmp_path / "reference"
    # uninterrupted, mpirun -n 2 of the same config: the job script trains exactly what the config says
    train(2, train_config(tmp_path / "reference.yaml", tiny_features, reference, model), backend, model=model)

    run = tmp_path / "run"
    config = train_config(tmp_path / "run.yaml", tiny_features, run, model)
    env = dict(job_env, MASTER_PORT=str(free_port()))
    # one training script for every model; the old per-model name is a wrapper that must stay equivalent
    script = ["train_atomcloud.slurm"] if model == "atomcloud" else ["train.slurm", model]
    job = slurm.sbatch(*CPU_TASKS, *GPU_SCRIPT_ON_CPU, str(ROOT / "jobs" / script[0]), *script[1:], str(config),
                       backend, cwd=tmp_path, env=env)
    metrics = run / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 1, 300, "the first epoch")
    signal_and_restart(slurm, job)
    state = slurm.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300)
    log = log_of(tmp_path, job)
    assert state == "COMPLETED", log[-3000:]
    assert slurm.job(job)["Restarts"] == "1"
    stopped = re.findall(r"stopped at epoch (\d+) step (\d+)", log)
    assert len(stopped) == 1, log[-3000:]  # rank 0 reports the one common step every rank stopped at
    assert int(stopped[0][0]) < 29
    assert f"SLURM job {job}, SLURM_RESTART_COUNT=1" in log and "2 rank(s) started by slurm" in log
    a, b = params(reference), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    last = load_checkpoint(run / "checkpoint_last.pt")["epoch"]
    assert last == load_checkpoint(reference / "checkpoint_last.pt")["epoch"] == 30


# --------------------------------------------------------------------------------------------------------
# launcher detection under the real srun
# --------------------------------------------------------------------------------------------------------
PROBE = "import json; from hpc.launcher import launch_env; print(json.dumps(launch_env().__dict__))"


def test_launcher_reads_the_steps_task_count_under_srun(slurm, job_env, tmp_path):
    """A job of 2 tasks: the batch shell is one process; a step of 1 task has size 1; a step of 2, size 2."""
    script = tmp_path / "probe.sh"
    script.write_text("\n".join([
        "#!/bin/bash",
        f"cd {ROOT}",
        f"{sys.executable} -c '{PROBE}' > {tmp_path}/batch.json",
        f"srun -n 1 {sys.executable} -c '{PROBE}' > {tmp_path}/step1.json",
        f"srun -n 2 {sys.executable} -c '{PROBE}' > {tmp_path}/step2.json",
        ""]))
    job = slurm.sbatch("-n", "2", "-o", str(tmp_path / "probe.out"), str(script), cwd=tmp_path, env=job_env)
    assert slurm.wait_for(job, {"COMPLETED", "FAILED"}, timeout=120) == "COMPLETED", \
        (tmp_path / "probe.out").read_text()
    batch = json.loads((tmp_path / "batch.json").read_text())
    step1 = json.loads((tmp_path / "step1.json").read_text())
    step2 = sorted((json.loads(line) for line in (tmp_path / "step2.json").read_text().splitlines()),
                   key=lambda e: e["rank"])
    assert (batch["size"], batch["launcher"], batch["slurm_job_id"]) == (1, "none", str(job))
    assert (step1["size"], step1["rank"], step1["launcher"]) == (1, 0, "slurm")
    assert [(e["rank"], e["size"], e["launcher"]) for e in step2] == [(0, 2, "slurm"), (1, 2, "slurm")]
    assert step2[0]["master_port"] == 29500 + job % 1000
