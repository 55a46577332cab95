"""The uncertainty calibrated on held-out chemistry (train.uncertainty: folds), on a tiny ensemble end to end."""
import csv
import json
import shutil

import numpy as np
import pytest

from cloudvox.calibration import FOLD_RESIDUALS, fold_splits, read_fold_residuals
from cloudvox.data import HOLDOUT
from cloudvox.errors import DataError
from cloudvox.runs import calibrate, evaluate, predict_report, train_run
from tests.cloudvox.test_runs import HELD_OUT, config, make_file
from tests.conftest import fixture_file


def test_fold_splits_hold_out_the_fold_s_elements_from_training_and_validation_only():
    splits = {"train": np.arange(0, 10), "val": np.arange(10, 14), "test": np.arange(14, 18)}
    held_train = np.arange(10) % 3 == 0
    held_val = np.array([True, False, False, True])
    fs = fold_splits(held_train, splits, held_val)
    assert fs["train"].tolist() == [1, 2, 4, 5, 7, 8] and fs["val"].tolist() == [11, 12]
    assert fs[HOLDOUT].tolist() == [0, 3, 6, 9, 10, 13]
    assert not set(fs["test"]) & set(splits["test"])  # the run's test split is never a fold's


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny ensemble (2 members, 4 epochs) with the halogens and chalcogens held out of everything, its
    uncertainty calibrated with 3 folds of its own training data."""
    d = tmp_path_factory.mktemp("calibration")
    data = make_file(d / "f.h5", fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"), 300, n=8, length=12.8)
    cfg = config(data, d / "run", epochs=4, ensemble=2, uncertainty="folds", uncertainty_folds=3)
    cfg.data.split.hold_out = HELD_OUT
    cfg.data.split.fractions = [0.6, 0.2, 0.2]
    summary = train_run(cfg)
    return data, d / "run", summary


def _rows(path, split):
    rows = [r for r in csv.DictReader(open(path)) if r["split"] == split]
    err = np.abs(np.array([float(r["prediction"]) - float(r["target"]) for r in rows]))
    return rows, err, np.array([float(r["uncertainty"]) for r in rows])


def test_folds_calibrate_a_larger_uncertainty_on_new_chemistry_that_covers_its_errors(calibrated):
    """On the held-out chemistry (elements no member and no fold saw) the calibrated uncertainty is larger than
    on the test split and covers its errors at about the 1-sigma rate (67 structures: 0.68 +- 0.06; a wide band,
    the members are tiny); the validation-only calibration of the same members covers far fewer."""
    data, run, summary = calibrated
    m = summary["metrics"]
    assert m["holdout"]["mean_uncertainty"] > 2 * m["test"]["mean_uncertainty"]
    _, err, sigma = _rows(run / "predictions.csv", "holdout")
    assert len(err) >= 40 and 0.35 <= (err <= sigma).mean() <= 0.95
    assert 0.4 <= np.median(err / sigma) <= 2.0
    _, err_t, sigma_t = _rows(run / "predictions.csv", "test")
    assert 0.3 <= (err_t <= sigma_t).mean() <= 1.0
    # the same members, calibrated on the validation split alone: the new chemistry's errors are not covered
    from cloudvox.data import load_splits
    from cloudvox.featurefile import FeatureFile
    from cloudvox.inference import Predictor
    ff = FeatureFile(data)
    predictor = Predictor.load(run)
    splits = load_splits(run, ff.ids)
    y = ff.prop("enthalpy_atom")
    val, held = (predictor.on_file(ff, splits[s]) for s in ("val", HOLDOUT))
    before = predictor.finish(held, calibrate(val, y[splits["val"]]))
    assert (np.abs(before.prediction - y[splits[HOLDOUT]]) <= before.uncertainty).mean() < (err <= sigma).mean()


def test_the_calibration_file_is_versioned_and_read_back_by_evaluate_and_predict(calibrated, tmp_path):
    data, run, _ = calibrated
    assert sorted(f.name for f in run.glob("fold-*")) == ["fold-0", "fold-1", "fold-2"]
    assert not list(run.glob("member-*/fold-*"))  # the folds are the ensemble's, trained once
    cal = json.loads((run / "uncertainty.json").read_text())
    assert cal["format"] == 2 and cal["method"] == "folds" and len(cal["folds"]) == 3
    assert cal["factor"] > 0 and cal["scale"] > 0
    folds = read_fold_residuals(run)
    assert len(folds["residual"]) == sum(f["n"] for f in cal["folds"]) > 0
    # evaluate on another copy of the data (not the run's: no recalibration) reads the run's file
    other = tmp_path / "copy.h5"
    other.write_bytes(data.read_bytes())
    evaluate(run, other, out_dir=tmp_path / "eval")
    by_id = {r["id"]: float(r["uncertainty"]) for r in csv.DictReader(open(run / "predictions.csv"))}
    again = {r["id"]: float(r["uncertainty"]) for r in csv.DictReader(open(tmp_path / "eval" / "predictions.csv"))}
    assert set(again) == set(by_id)
    np.testing.assert_allclose([again[k] for k in by_id], list(by_id.values()), rtol=1e-5)
    # predict on structures reads it too
    from cloudvox.io import read_aflow
    structures = [s for s in read_aflow(fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl"))[:300]
                  if set(s.elements) & set(HELD_OUT)][:10]
    _, sigma, _ = predict_report(run, structures)
    np.testing.assert_allclose(sigma, [by_id[s.id] for s in structures], rtol=1e-3)
    # a calibration of a newer format is refused with one line naming the fix; broken fold residuals likewise
    shutil.copytree(run, tmp_path / "newer")
    (tmp_path / "newer" / "uncertainty.json").write_text(json.dumps(dict(cal, format=99)))
    with pytest.raises(DataError, match="newer than this cloudvox"):
        evaluate(tmp_path / "newer", other, out_dir=tmp_path / "eval2")
    (tmp_path / "newer" / FOLD_RESIDUALS).write_text(json.dumps(dict(format=0)))
    with pytest.raises(DataError, match="retrain the folds"):
        read_fold_residuals(tmp_path / "newer")
