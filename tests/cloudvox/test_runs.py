"""Training runs end to end on a tiny feature file: splits, resume, evaluate/predict, mismatch errors."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudvox import properties as K
from cloudvox.data import Normalizer, VoxelDataset, split_indices
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.featurefile import FeatureFile, featurize_block, root_attributes, write_features
from cloudvox.io.sources import Source
from cloudvox.config import load_run_config as load_config
from cloudvox.runs import evaluate, predict_report, predict_structures, train_run
from cloudvox.models.registry import VoxelTask
from cloudvox.binning import random_rotations
from cloudvox.training.checkpoint import load_checkpoint
from cloudvox.training.step import step_generator


def make_file(path: Path, src: Path, limit: int, **descriptor) -> Path:
    source = Source("aflow", [src], limit=limit)
    vox = ReciprocalVoxelizer(**descriptor)
    block = featurize_block(source.records(0, limit), 0, vox, source.sources)
    attrs = dict(root_attributes(vox, source.sources, "aflow", "test"), species=json.dumps(block.elements))
    write_features(path, block, attrs)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, ):
    from tests.conftest import fixture_file
    d = tmp_path_factory.mktemp("runs")
    return make_file(d / "tiny.h5", fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"), 48, n=16, length=12.8)


def config(data, run_dir, **train):
    t = dict(epochs=3, batch_size=8, lr=3e-3, seed=0)
    t.update(train)
    return load_config(None, [f"data.path={data}", "data.split.by=compound", "data.normalize=composition",
                              f"run_dir={run_dir}", "network.widths=[4,4]", "network.pools=[2,0]", "network.hidden=[8]"]
                       + [f"train.{k}={v}" for k, v in t.items()])


def test_grouped_splits_never_straddle_and_are_seeded():
    groups = [f"c{k // 2}" for k in range(200)]  # two variants per compound
    a = split_indices(200, (0.8, 0.1, 0.1), 0, groups)
    b = split_indices(200, (0.8, 0.1, 0.1), 0, groups)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    seen = {k: {groups[i] for i in v} for k, v in a.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sum(len(v) for v in a.values()) == 200 and 150 <= len(a["train"]) <= 170
    c = split_indices(200, (0.8, 0.1, 0.1), 1, groups)
    assert not np.array_equal(a["test"], c["test"])
    with pytest.raises(ValueError):
        split_indices(10, (0.5, 0.2, 0.2))


def test_composition_normaliser_roundtrip(rng):
    counts = rng.integers(0, 3, size=(50, 119)).astype(float)
    counts[:, 0] = 0
    counts[:, 8] += 1
    y = counts[:, 1:20] @ rng.normal(size=19) / counts.sum(1) + rng.normal(size=50) * 0.01
    n = Normalizer.fit(y, counts, "composition")
    np.testing.assert_allclose(n.inverse(n.forward(y, counts), counts), y, rtol=1e-12)
    assert n.std < y.std()  # the baseline explains most of it


def test_composition_baseline_of_elements_unseen_in_training_comes_from_their_properties(rng):
    """Per-element values that are a linear function of element properties are recovered exactly for the
    training elements and, for an element training never saw (Tb), from its properties, not as zero."""
    from cloudvox.data import FALLBACK_PROPERTIES
    from cloudvox.elements import property_weights
    truth = property_weights(FALLBACK_PROPERTIES).T @ rng.normal(size=len(FALLBACK_PROPERTIES))  # (119,)
    seen = np.array([8, 12, 20, 22, 38, 39, 40, 56, 57, 58, 59, 60, 62, 63, 64, 66, 67, 68, 72, 73])
    counts = np.zeros((400, 119))
    for row in counts:
        row[rng.choice(seen, size=2, replace=False)] = 1
        row[8] += 3
    y = (counts / counts.sum(1, keepdims=True)) @ truth
    n = Normalizer.fit(y, counts, "composition")
    per = np.array(n.per_element)
    np.testing.assert_allclose(per[seen], truth[seen], rtol=1e-4, atol=1e-4)
    assert abs(per[65] - truth[65]) < 0.05 * np.abs(truth[seen]).max()  # Tb: from its properties
    assert per[0] == 0.0


def test_augmentation_binning_equals_the_descriptor_of_the_rotated_structure(tiny):
    ff = FeatureFile(tiny)
    ds = VoxelDataset(tiny, range(6), np.zeros(6), "reciprocal")
    batch = ds.collate([ds[k] for k in range(6)])
    task = VoxelTask(16, 12.8, "cartesian", len(ff.species), True)
    gen = step_generator(0, 0, 0)
    x, ids = task.inputs(batch, torch.device("cpu"), gen, rotate=True)
    R = random_rotations(6, step_generator(0, 0, 0)).numpy()  # the same draws
    vox = ReciprocalVoxelizer(n=16, length=12.8, species=tuple(ff.species))
    for b in range(6):
        s = ff.structure(b)
        expected = vox(s.rotated(R[b]))[ids[b].numpy()]
        np.testing.assert_allclose(x[b].numpy(), expected, rtol=1e-3, atol=1e-6)  # float16 stored values
    # and without rotation the stored voxels come back exactly
    plain = VoxelDataset(tiny, range(6), np.zeros(6), "voxels")
    plain_batch = plain.collate([plain[k] for k in range(6)])
    xb = plain_batch[K.VOXELS]
    x0, _ = task.inputs(batch, torch.device("cpu"), None, rotate=False)
    np.testing.assert_allclose(x0.numpy(), xb.numpy(), rtol=1e-6, atol=1e-9)
    # both sources give each structure its own channel ids, padded with -1 to the batch's largest set
    assert ff.per_element and (batch[K.CHANNEL_IDS] >= 0).sum() == sum(len(ds[k]["channels"]) for k in range(6))
    torch.testing.assert_close(plain_batch[K.CHANNEL_IDS], batch[K.CHANNEL_IDS], rtol=0, atol=0)


def test_resume_gives_the_uninterrupted_run(tiny, tmp_path):
    full = train_run(config(tiny, tmp_path / "full", epochs=4))
    part = train_run(config(tiny, tmp_path / "part", epochs=4, stop_after_epochs=2))
    assert part["epochs"] == 2
    resumed = train_run(config(tiny, tmp_path / "part", epochs=4), resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [r["val_mae"] for r in full["history"]] == [r["val_mae"] for r in resumed["history"]]
    run = tmp_path / "full"
    for name in ("config.yaml", "metrics.jsonl", "learning_curve.png", "parity_test.png", "predictions.csv",
                 "split_train.txt", "checkpoint_best.pt"):
        assert (run / name).exists() and (run / name).stat().st_size > 0, name


def test_weight_average_is_what_is_validated_and_evaluated_and_resumes_exactly(tiny, tmp_path):
    """train.ema: the checkpoint's ``model`` is the moving average (not the trained weights, kept as ``trained``),
    validation and the final evaluation use it, and a run stopped and resumed ends where the uninterrupted one does."""
    full = train_run(config(tiny, tmp_path / "full", epochs=4, ema=0.9))
    train_run(config(tiny, tmp_path / "part", epochs=4, ema=0.9, stop_after_epochs=2))
    resumed = train_run(config(tiny, tmp_path / "part", epochs=4, ema=0.9), resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    for key in ("model", "trained"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0)
    assert a["ema_steps"] == b["ema_steps"] > 0
    assert [r["val_mae"] for r in full["history"]] == [r["val_mae"] for r in resumed["history"]]
    moved = [k for k in a["model"] if a["model"][k].is_floating_point()
             and not torch.allclose(a["model"][k], a["trained"][k])]
    assert moved  # the average is not the last weights
    ev = evaluate(tmp_path / "full", tiny, out_dir=tmp_path / "ev")
    assert ev["metrics"]["test"]["mae"] == pytest.approx(full["metrics"]["test"]["mae"])
    best = load_checkpoint(tmp_path / "full" / "checkpoint_best.pt")
    plain = train_run(config(tiny, tmp_path / "plain", epochs=4))
    assert plain["metrics"]["test"]["mae"] != pytest.approx(full["metrics"]["test"]["mae"])  # ema changes the result
    assert "trained" in best and "trained" not in load_checkpoint(tmp_path / "plain" / "checkpoint_best.pt")


def test_evaluate_and_predict_round_trip(tiny, tmp_path):
    from cloudvox.io import read_aflow
    from tests.conftest import fixture_file
    run = tmp_path / "run"
    summary = train_run(config(tiny, run, epochs=1))
    ev = evaluate(run, tiny, out_dir=tmp_path / "ev")
    assert ev["metrics"]["test"]["mae"] == pytest.approx(summary["metrics"]["test"]["mae"])
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 49
    structures = read_aflow(fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"))[:48]
    pred = predict_structures(run, structures)
    by_id = {r.split(",")[1]: float(r.split(",")[3]) for r in rows[1:]}
    np.testing.assert_allclose(pred, [by_id[s.id] for s in structures], rtol=1e-5)
    tta = evaluate(run, tiny, rotations=3, out_dir=tmp_path / "tta")
    assert tta["metrics"]["test"]["mean_spread"] > 0


def test_checkpoint_data_mismatch_is_refused(tiny, tmp_path):
    from tests.conftest import fixture_file
    run = tmp_path / "run"
    train_run(config(tiny, run, epochs=1))
    src = fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")
    for kw, word in ((dict(n=16, length=10.0), "length"), (dict(n=16, length=12.8, sigma=0.2), "sigma"),
                     (dict(n=20, length=12.8), "n")):
        other = make_file(tmp_path / f"other_{word}.h5", src, 10, **kw)
        with pytest.raises(ValueError, match=f"{word}: checkpoint"):
            evaluate(run, other)
    # a file with elements outside the model's channels: evaluated structure by structure, never refused whole
    wider = make_file(tmp_path / "wider.h5", src, 200, n=16, length=12.8)
    ev = evaluate(run, wider, out_dir=tmp_path / "wider")["metrics"]["all"]
    rows = list(csv.DictReader(open(tmp_path / "wider" / "predictions.csv")))
    outside = [r for r in rows if "outside the model's channels" in r["flag"]]
    assert len(rows) == 200 and 0 < len(outside) == ev["not_predicted"] < 200
    assert all(r["prediction"] == "nan" for r in outside)
    assert all(np.isfinite(float(r["prediction"])) for r in rows if r not in outside)
    assert ev["n"] == 200 and np.isfinite(ev["mae"])
    from cloudvox.io import read_aflow
    structures = read_aflow(src)[:200]
    pred, _, flags = predict_report(run, structures)
    assert [bool(f) and "outside" in f for f in flags] == [r in outside for r in rows]
    assert np.isnan(pred[[bool(f) and "outside" in f for f in flags]]).all()


def test_cross_spectrum_radial_run_round_trip_and_rotation_spread(tiny, tmp_path):
    """The recommended crystal setting end to end: cross-spectrum channels on the spherical grid, the 1x1x1
    radial network (occupied voxels only), evaluate == training's metrics, predict == evaluate, a prediction
    spread over random rotations near zero (invariant up to binning), and a cross/non-cross mismatch refused."""
    from cloudvox.io import read_aflow
    from tests.conftest import fixture_file
    src = fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")
    data = make_file(tmp_path / "cross.h5", src, 48, n=16, length=12.8, mode="spherical", cross=True)
    assert FeatureFile(data).model_channels()[-1].endswith("*total")
    run = tmp_path / "run"
    cfg = config(data, run, epochs=2)
    cfg.network = dict(widths=[8, 8], kernel=1, pools=[0, 0], hidden=[8], activation="silu",
                       global_pool="radial", bias=False, channel_properties=["one", "Z", "X"])
    summary = train_run(cfg)
    plain = evaluate(run, data, out_dir=tmp_path / "plain")["metrics"]
    assert plain["test"]["mae"] == pytest.approx(summary["metrics"]["test"]["mae"], rel=1e-6)
    lines = (tmp_path / "plain" / "predictions.csv").read_text().splitlines()[1:]
    by_id = {r.split(",")[1]: float(r.split(",")[3]) for r in lines}
    pred = predict_structures(run, read_aflow(src)[:48])
    np.testing.assert_allclose(pred, [by_id[s.id] for s in read_aflow(src)[:48]], rtol=1e-4, atol=1e-6)
    evaluate(run, data, rotations=4, out_dir=tmp_path / "ev")
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()[1:]
    spread = np.array([float(r.split(",")[4]) for r in rows])
    mean_abs = np.abs([float(r.split(",")[3]) for r in rows]).mean()
    assert 0 <= spread.mean() < 1e-2 * mean_abs  # invariant up to G that share an angular bin
    moduli_only = make_file(tmp_path / "moduli.h5", src, 10, n=16, length=12.8, mode="spherical")
    with pytest.raises(ValueError, match="cross: checkpoint True, data False"):
        evaluate(run, moduli_only)


def test_persistent_loader_workers_train_exactly_as_in_process_loading(tiny, tmp_path):
    """num_workers > 0: one loader and worker process per dataset for the whole run (batches set per epoch),
    the same batches in the same order as in-process loading: equal parameters, and the step split recorded
    with one step per batch."""
    a = train_run(config(tiny, tmp_path / "inline", epochs=2))
    b = train_run(config(tiny, tmp_path / "workers", epochs=2, num_workers=1))
    pa = load_checkpoint(tmp_path / "inline" / "checkpoint_last.pt")["model"]
    pb = load_checkpoint(tmp_path / "workers" / "checkpoint_last.pt")["model"]
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=0, atol=0)
    assert a["history"][-1]["train_mae"] == b["history"][-1]["train_mae"]
    assert {"step_ms_data", "step_ms_forward", "step_ms_backward", "step_ms_optimizer", "step_ms_sync"} <= set(
        b["history"][-1])
    # one step per batch (the next batch is read during the previous step's allreduce: one data mark each)
    n_train = len((tmp_path / "inline" / "split_train.txt").read_text().split())
    assert a["history"][-1]["train_steps"] == b["history"][-1]["train_steps"] == -(-n_train // 8)


@pytest.mark.parametrize("workers", [0, 1])
def test_micro_batches_give_the_whole_batch_step(tiny, tmp_path, workers):
    """train.micro_batch = 3 on batches of 8 (chunks of 3, 3, 2, gradients summed before one optimiser step,
    rotations drawn for the whole batch): the parameters and metrics of micro_batch 0, up to summation order;
    in process and with a loader worker (which collates the chunks)."""
    whole = train_run(config(tiny, tmp_path / "whole", epochs=2, grad_clip=0.05))
    micro = train_run(config(tiny, tmp_path / "micro", epochs=2, grad_clip=0.05, micro_batch=3, num_workers=workers))
    pa = load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")["model"]
    pb = load_checkpoint(tmp_path / "micro" / "checkpoint_last.pt")["model"]
    assert any((v != 0).any() for v in pa.values())
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(whole["history"], micro["history"]):
        assert b["train_mae"] == pytest.approx(a["train_mae"], rel=1e-5)
        assert b["val_mae"] == pytest.approx(a["val_mae"], rel=1e-5)
        assert b["train_steps"] == a["train_steps"]  # one step per batch, whatever its chunks


def test_chunks_split_rows_and_items_alike():
    from cloudvox.training.loaders import chunk_rows_of, collate_chunks
    rows = np.array([4, 9, 1, 7, 3, 8, 2])
    assert [c.tolist() for c in chunk_rows_of(rows, 3)] == [[4, 9, 1], [7, 3, 8], [2]]
    assert [c.tolist() for c in chunk_rows_of(rows, 0)] == [rows.tolist()]
    assert collate_chunks(list, 3, list("abcdefg")) == [list("abc"), list("def"), list("g")]
    assert collate_chunks(list, 0, list("ab")) == [list("ab")] and collate_chunks(list, 4, []) == [[]]


def test_ensemble_trains_members_and_reports_their_mean_and_spread(tiny, tmp_path):
    """train.ensemble = 3: three members (seeds 0, 1, 2; one split) in RUN/member-k; evaluate and predict give
    the members' mean with their standard deviation next to each prediction."""
    from cloudvox.io import read_aflow
    from cloudvox.inference import ensemble_members
    from tests.conftest import fixture_file
    run = tmp_path / "ens"
    summary = train_run(config(tiny, run, epochs=2, ensemble=3))
    members = ensemble_members(run)
    assert [m.name for m in members] == ["member-0", "member-1", "member-2"] and summary["members"] == 3
    assert (run / "split_test.txt").read_text() == (members[2] / "split_test.txt").read_text()
    a, b = (load_checkpoint(m / "checkpoint_best.pt")["model"] for m in members[:2])
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different members
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    std = np.array([float(r["ensemble_std"]) for r in rows])
    assert len(rows) == 48 and (std > 0).all() and summary["metrics"]["test"]["mean_ensemble_std"] > 0
    each = []
    for m in members:
        evaluate(m, tiny, out_dir=tmp_path / m.name)
        each.append([float(r["prediction"]) for r in csv.DictReader(open(tmp_path / m.name / "predictions.csv"))])
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], np.mean(each, 0), rtol=1e-5)
    np.testing.assert_allclose(std, np.std(each, 0), rtol=1e-4, atol=1e-7)
    structures = read_aflow(fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"))[:48]
    pred, spread, flags = predict_report(run, structures)
    by_id = {r["id"]: (float(r["prediction"]), float(r["uncertainty"])) for r in rows}  # calibrated on val
    np.testing.assert_allclose(pred, [by_id[s.id][0] for s in structures], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(spread, [by_id[s.id][1] for s in structures], rtol=1e-3, atol=1e-6)


HELD_OUT = ["F", "Cl", "Br", "I", "S", "Se", "Te"]  # halogens and chalcogens on the cation sites of the oxides


def test_held_out_chemistry_is_more_uncertain_than_the_test_split_and_flagged(tmp_path):
    """split.hold_out: the compounds of the held-out elements form a "holdout" split, never trained on. A tiny
    ensemble's uncertainty (its spread with the composition distance, calibrated on validation) is larger there
    than on the in-domain test split, and more of them are flagged. (The spread alone is not: 0.017 eV/atom on
    the held-out chemistry, 0.022 on the test split, with errors of 2.4 and 0.6 eV/atom.)"""
    from tests.conftest import fixture_file
    data = make_file(tmp_path / "f.h5", fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"), 300, n=8,
                     length=12.8)
    cfg = config(data, tmp_path / "run", epochs=4, ensemble=3)
    cfg.data.split.hold_out = HELD_OUT
    summary = train_run(cfg)
    m = summary["metrics"]
    train_ids = set((tmp_path / "run" / "split_train.txt").read_text().split())
    held = (tmp_path / "run" / "split_holdout.txt").read_text().split()
    assert len(held) >= 40 and not train_ids & set(held)
    assert m["holdout"]["mean_uncertainty"] > 1.4 * m["test"]["mean_uncertainty"]  # 1.00 against 0.59 eV/atom
    assert m["holdout"]["mae"] > m["test"]["mae"]  # the held-out chemistry is harder: the uncertainty says so
    assert m["holdout"]["flagged"] / m["holdout"]["n"] > 0.9 > 0.5 > m["test"]["flagged"] / m["test"]["n"]
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "predictions.csv")) if r["split"] == "holdout"]
    assert all("never seen in training" in r["flag"] for r in rows)
    cal = json.loads((tmp_path / "run" / "uncertainty.json").read_text())
    assert cal["floor"] > 0 and cal["threshold"] >= cal["floor"]  # slope 0 here: in-domain errors do not grow with it


def test_composition_distance_is_zero_on_the_training_set_and_grows_with_new_chemistry(rng):
    from cloudvox.uncertainty import DomainReference
    from cloudvox.elements import MAX_Z, atomic_numbers
    cations = atomic_numbers(["Ca", "Sr", "Ba", "Ti", "Zr", "Hf", "Mg"])
    def abo3(a, b):
        c = np.zeros(MAX_Z + 1)
        c[[a, b, 8]] = [1, 1, 3]
        return c
    train = np.array([abo3(a, b) for a in cations[:3] for b in cations[3:]])
    ref = DomainReference.fit(train, train[:4], quantile=0.99)
    np.testing.assert_allclose(ref.distance(train), 0, atol=1e-3)
    fluoride = np.zeros((1, MAX_Z + 1))
    fluoride[0, atomic_numbers(["K", "Mg", "F"])] = [1, 1, 3]
    near = abo3(cations[0], atomic_numbers(["V"])[0])[None]  # Ti's neighbour on a seen site
    d_far, d_near = ref.distance(fluoride)[0], ref.distance(near)[0]
    assert d_far > d_near > 0 and d_far > 3 * max(ref.threshold, 0.1)


def test_composition_baseline_needs_the_stored_clouds(tmp_path):
    from cloudvox.data import element_counts
    from tests.conftest import fixture_file
    source = Source("aflow", [fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")], limit=4)
    vox = ReciprocalVoxelizer(n=8, length=12.8)
    block = featurize_block(source.records(0, 4), 0, vox, source.sources, store=["reciprocal"])
    write_features(tmp_path / "r.h5", block, dict(root_attributes(vox, source.sources, "aflow", "test"),
                                                   species=json.dumps(block.elements)))
    with pytest.raises(ValueError, match="store: \\[..., cloud\\]"):
        element_counts(FeatureFile(tmp_path / "r.h5"), [0, 1])


def test_time_budget_ends_training_early_and_the_run_is_evaluated(tiny, tmp_path):
    run = tmp_path / "run"
    summary = train_run(config(tiny, run, epochs=50, max_minutes=1e-4))  # 6 ms: one epoch, then out of time
    assert summary["budget_reached"] and summary["epochs"] == 1
    assert (run / "evaluation.json").exists() and "test" in summary["metrics"]
