"""Distributed training: Horovod and DDP under mpirun -n 2 equal one process at the same global batch."""
import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from cloudvox.training.checkpoint import load_checkpoint
from tests.cloudvox.test_runs import make_file
from tests.hpc.conftest import cloudvox_cmd, mpi_env

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import fixture_file
    d = tmp_path_factory.mktemp("dist")
    return make_file(d / "tiny.h5", fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"), 64, n=16, length=12.8)


def write_config(path: Path, data: Path, run_dir: Path, **train) -> Path:
    t = dict(epochs=2, batch_size=8, lr=3e-3, seed=0, grad_clip=0.05)  # clipping binds: it must see averaged gradients
    t.update(train)
    cfg = dict(data=dict(path=str(data), target="enthalpy_atom", split=dict(by="compound"), normalize="composition"),
               augment=dict(rotations=True), network=dict(widths=[4, 4], pools=[2, 0], hidden=[8]), train=t,
               run_dir=str(run_dir))
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(ranks, config, backend, *extra, check=True, model="voxelnet"):
    env = mpi_env()
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(cloudvox_cmd(ranks, "train", model, str(config), "--backend", backend, *extra),
                          env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def params(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoint_last.pt")["model"]


def history(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    train(0, write_config(d / "c.yaml", tiny, d / "run"), "none")
    return d / "run"


@pytest.mark.parametrize("backend, rebalance, micro", [("horovod", False, 0), ("ddp", False, 0), ("ddp", True, 0),
                                                     ("horovod", False, 3), ("ddp", False, 3)])
def test_two_ranks_equal_one_at_the_same_global_batch(tiny, single, tmp_path, backend, rebalance, micro):
    run = tmp_path / "run"
    # rebalance: shares by the ranks' measured speeds, agreed every 2 steps (any split gives the same gradient);
    # micro: each rank's 4 samples in chunks of 3 and 1, gradients summed before the allreduce
    train(2, write_config(tmp_path / "c.yaml", tiny, run, rebalance=rebalance, stop_check_every=2, micro_batch=micro),
          backend)
    a, b = params(single), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    h1, h2 = history(single), history(run)
    assert len(h1) == len(h2) == 2
    for r1, r2 in zip(h1, h2):
        assert r2["val_mae"] == pytest.approx(r1["val_mae"], rel=1e-5)
        assert r2["train_mae"] == pytest.approx(r1["train_mae"], rel=1e-5)
        # every rank's step split, gathered with the epoch's sums (rank 0's own figures are its entries)
        assert set(r2["ranks_step_ms"]) == {k[len("step_ms_"):] for k in r2 if k.startswith("step_ms_")}
        assert all(len(v) == 2 and min(v) >= 0 for v in r2["ranks_step_ms"].values())
        assert r2["ranks_step_ms"]["forward"][0] == pytest.approx(r2["step_ms_forward"], abs=1e-3)
        assert "ranks_step_ms" not in r1
        assert sum(r2["ranks_samples"]) == len((run / "split_train.txt").read_text().split())
    assert (run / "split_test.txt").read_text() == (single / "split_test.txt").read_text()


@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_resume_mid_epoch_continues_identically(tiny, single, tmp_path, backend):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny, run, stop_after_steps=3)  # 6 steps per epoch: stop inside epoch 0
    first = train(2, cfg, backend)
    ck = load_checkpoint(run / "checkpoint_last.pt")
    assert ck["epoch"] == 0 and ck["step_in_epoch"] == 3
    train(2, write_config(tmp_path / "c.yaml", tiny, run), backend, "--resume")
    a, b = params(single), params(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    assert "stopped at epoch 0 step 3" in first.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_atomcloud_two_ranks_equal_one(tiny, tmp_path, backend):
    def cfg(run):
        c = yaml.safe_load(write_config(tmp_path / "c.yaml", tiny, run).read_text())
        c.update(model="atomcloud", network=dict(cutoff=3.0, layers=1, scalars=8, vectors=4, tensors=2, embed=8,
                                                 head=[8]))
        c["data"]["extensive"] = True
        path = tmp_path / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump(c))
        return path
    one, two = tmp_path / "one", tmp_path / "two"
    train(0, cfg(one), "none", model="atomcloud")
    train(2, cfg(two), backend, model="atomcloud")
    a, b = params(one), params(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sigusr1_checkpoints_every_rank_at_the_same_step_and_exits_cleanly(tiny, tmp_path):
    import signal
    import time
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny, run, epochs=500)
    env = mpi_env()
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.Popen(cloudvox_cmd(2, "train", "voxelnet", str(cfg), "--backend", "ddp"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank, as SLURM signals every task
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    ck = load_checkpoint(run / "checkpoint_last.pt")
    assert "stopped at epoch" in err and ck["epoch"] < 500
    train(2, write_config(tmp_path / "c.yaml", tiny, run, epochs=int(ck["epoch"]) + 1), "ddp", "--resume")
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == int(ck["epoch"]) + 1


@pytest.mark.parametrize("backend", ["horovod", "ddp"])
def test_ensemble_members_over_ranks_equal_members_trained_one_after_the_other(tiny, tmp_path, backend):
    """train.members_over_ranks: member k trains alone on rank k % 2 (no gradient exchange), the same model
    as member k of a one-process ensemble; three members over two ranks (rank 0 trains two); rank 0 then
    evaluates the ensemble with every member's spread."""
    from cloudvox.inference import ensemble_members
    one, two = tmp_path / "one", tmp_path / "two"
    train(0, write_config(tmp_path / "one.yaml", tiny, one, ensemble=3), "none")
    proc = train(2, write_config(tmp_path / "two.yaml", tiny, two, ensemble=3, members_over_ranks=True), backend)
    assert [m.name for m in ensemble_members(two)] == ["member-0", "member-1", "member-2"]
    for a, b in zip(ensemble_members(one), ensemble_members(two)):
        pa, pb = params(a), params(b)
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], rtol=1e-5, atol=1e-5)
        assert all("ranks_step_ms" not in r for r in history(b))  # trained by one rank, not data-parallel
    assert "3 members over 2 ranks" in proc.stderr
    e1, e2 = (json.loads((r / "evaluation.json").read_text())["metrics"]["test"] for r in (one, two))
    assert e2["mae"] == pytest.approx(e1["mae"], rel=1e-5) and e2["mean_ensemble_std"] > 0
    assert (two / "split_test.txt").read_text() == (one / "split_test.txt").read_text()


def test_ensemble_members_over_ranks_stop_and_resume(tiny, tmp_path):
    """A stop on the ranks training members on their own (here after 3 steps of each rank's first member)
    ends every rank without evaluating; --resume continues each rank's member to the same models as an
    uninterrupted one-process ensemble."""
    from cloudvox.inference import ensemble_members
    one, two = tmp_path / "one", tmp_path / "two"
    train(0, write_config(tmp_path / "one.yaml", tiny, one, ensemble=2), "none")
    cfg = dict(ensemble=2, members_over_ranks=True)
    train(2, write_config(tmp_path / "two.yaml", tiny, two, stop_after_steps=3, **cfg), "ddp")
    assert not (two / "evaluation.json").exists()
    for member in ensemble_members(two):
        ck = load_checkpoint(member / "checkpoint_last.pt")
        assert (ck["epoch"], ck["step_in_epoch"]) == (0, 3)
    train(2, write_config(tmp_path / "two.yaml", tiny, two, **cfg), "ddp", "--resume")
    assert (two / "evaluation.json").exists()
    for a, b in zip(ensemble_members(one), ensemble_members(two)):
        pa, pb = params(a), params(b)
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], rtol=1e-5, atol=1e-5)


def test_a_file_written_by_several_writers_trains_as_one_file(tiny, tmp_path):
    """The featurize output of two segments (mpirun -n 3, two writers: virtual datasets over
    OUT.h5.segments/) trains, single process, to the parameters of the same structures in one file: the
    loader reads values, offsets and properties through the virtual datasets."""
    from tests.conftest import fixture_file
    seg = tmp_path / "segments.h5"
    proc = subprocess.run(cloudvox_cmd(3, "featurize", "--input", str(fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")),
                                       "--format", "aflow", "--limit", "64", "--n", "16", "--length", "12.8",
                                       "--block-size", "8", "--merge-writers", "2", "--output", str(seg)),
                          env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "segments.h5.segments").iterdir())) == 2
    train(0, write_config(tmp_path / "one.yaml", tiny, tmp_path / "one"), "none")
    train(0, write_config(tmp_path / "seg.yaml", seg, tmp_path / "seg"), "none")
    a, b = params(tmp_path / "one"), params(tmp_path / "seg")
    for k in a:
        assert torch.equal(a[k], b[k]), k
