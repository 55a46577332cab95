"""One inference path: ``predict`` on structures equals ``evaluate`` on the feature file of the same structures,
for both models and an ensemble; a loaded model answers in target units; other format versions are refused in
one line."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudvox.config import load_run_config
from cloudvox.featurefile import FeatureFile
from cloudvox.inference import Predictor, TrainedModel
from cloudvox.runs import evaluate, predict_report, train_run
from tests.cloudvox.test_runs import make_file

ATOMCLOUD = ["network.cutoff=3.0", "network.layers=1", "network.scalars=8", "network.vectors=4",
             "network.tensors=2", "network.embed=8", "network.head=[8]"]
VOXELNET = ["network.widths=[4,4]", "network.pools=[2,0]", "network.hidden=[8]"]


@pytest.fixture(scope="module")
def src():
    from tests.conftest import fixture_file
    return fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")


@pytest.fixture(scope="module")
def data(tmp_path_factory, src):
    return make_file(tmp_path_factory.mktemp("inference") / "data.h5", src, 48, n=16, length=12.8)


def run_config(data, run_dir, network, ensemble=1):
    model = "atomcloud" if network is ATOMCLOUD else "voxelnet"
    return load_run_config(None, [f"data.path={data}", "data.split.by=compound", "data.normalize=composition",
                              f"run_dir={run_dir}", "train.epochs=1", "train.batch_size=8", "train.lr=3e-3",
                              "train.seed=0", f"train.ensemble={ensemble}"] + network, model=model)


@pytest.mark.parametrize("network,ensemble", [(VOXELNET, 1), (ATOMCLOUD, 1), (VOXELNET, 2)],
                         ids=["voxelnet", "atomcloud", "voxelnet-ensemble"])
def test_predict_on_structures_equals_evaluate_on_their_feature_file(data, src, tmp_path, network, ensemble):
    from cloudvox.io import read_aflow
    run = tmp_path / "run"
    train_run(run_config(data, run, network, ensemble))
    rows = list(csv.DictReader(open(run / "predictions.csv")))  # evaluate, at the end of training
    structures = read_aflow(src)[:48]
    pred, sigma, flags = predict_report(run, structures, batch_size=5)  # other batches than evaluate's
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == 48 and np.isfinite(pred).all()
    want = np.array([float(by_id[s.id]["prediction"]) for s in structures])
    np.testing.assert_allclose(pred, want, rtol=2e-6, atol=1e-6)  # float32 rounding of the network
    np.testing.assert_allclose(sigma, [float(by_id[s.id]["uncertainty"]) for s in structures], rtol=1e-5, atol=1e-6)
    assert flags == [by_id[s.id]["flag"] for s in structures]
    if ensemble > 1:
        assert all(float(r["ensemble_std"]) > 0 for r in rows)


def test_a_loaded_model_answers_in_target_units(data, tmp_path):
    """TrainedModel = network + task + normaliser buffers: its forward equals the normalised network output
    mapped back by the run's Normalizer."""
    from cloudvox.data import Normalizer, element_counts
    run = tmp_path / "run"
    train_run(run_config(data, run, VOXELNET))
    model = TrainedModel.load(run / "checkpoint_best.pt")
    assert {"mean", "std", "per_element"} <= {name for name, _ in model.named_buffers()}
    ff = FeatureFile(data)
    idx = np.arange(6)
    ds = model.spec.dataset(model.meta, data, idx, None, False)
    batch = ds.collate([ds[k] for k in range(len(idx))])
    counts = element_counts(ff, idx)
    with torch.no_grad():
        got = model(batch, torch.from_numpy(counts)).numpy()
        normed = model.task.forward(model.network, batch, torch.device("cpu"), None, False)[0].double().numpy()
    norm = Normalizer(**model.meta["normalizer"])
    assert norm.kind == "composition"
    np.testing.assert_allclose(got, norm.inverse(normed, counts), rtol=1e-12)
    p = Predictor.load(run).on_file(ff, idx)
    np.testing.assert_allclose(p.prediction, got, rtol=1e-6)


def test_checkpoints_of_another_format_are_refused_in_one_line(data, tmp_path):
    from cloudvox.errors import FormatError
    from cloudvox.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
    run = tmp_path / "run"
    train_run(run_config(data, run, VOXELNET))
    ck = torch.load(run / "checkpoint_best.pt", weights_only=True)
    for version, fix in ((CHECKPOINT_FORMAT + 1, "upgrade cloudvox"), (CHECKPOINT_FORMAT - 1, "retrain")):
        bad = tmp_path / f"v{version}.pt"
        torch.save(dict(ck, format=version), bad)
        with pytest.raises(FormatError, match=fix):
            load_checkpoint(bad)
        r = subprocess.run([str(Path(sys.executable).parent / "cloudvox"), "evaluate", str(bad), str(data), "--out",
                            str(tmp_path / "ev")], capture_output=True, text=True, timeout=120)
        lines = [line for line in r.stderr.splitlines() if "INFO" not in line]
        assert r.returncode == 2 and len(lines) == 1 and fix in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert evaluate(run, data, out_dir=tmp_path / "ok")["metrics"]["test"]["n"] > 0


def test_feature_files_of_a_newer_format_are_refused_in_one_line(data, tmp_path):
    import shutil
    import h5py
    newer = tmp_path / "newer.h5"
    shutil.copyfile(data, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = int(f.attrs["format_version"]) + 1
    r = subprocess.run([str(Path(sys.executable).parent / "cloudvox"), "info", str(newer)], capture_output=True,
                       text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if "INFO" not in line]
    assert r.returncode == 2 and len(lines) == 1 and "upgrade cloudvox" in lines[0], r.stderr
