"""Ours next to MACE on the perovskite split at the same wall-clock budget: one JSON table (issue 19).

Trains AtomCloudNet (jobs/configs/atomcloud_perovskites.yaml) and/or VoxelNet (jobs/configs/voxelnet_cross.yaml
on the N=16 cross-spectrum file) on the compound-grouped 80/10/10 split (seed 0) with ``train.max_minutes`` =
``--minutes`` (the cosine schedule fitted to it) and one thread, then prints one row per model: test MAE, test
MAE over the structures MACE could predict (those whose elements its training set held), best validation
MAE, epochs, wall time and training samples/s, with MACE's row from ``bench/peers/mace_perovskites.py``'s
output (``--mace``, JSON lines). Run the trainings in parallel as separate processes
(``--train atomcloud`` / ``--train voxelnet``, one core each), then ``--report`` for the table.
With ``--ranks R --ensemble K`` a model is trained as an ensemble of K members spread over R ranks
(``mpirun -n R cloudvox train``, ``train.members_over_ranks``: member k alone on rank k % R, one core each),
each member with ``--minutes`` x R / K, so that the ensemble takes ``--minutes`` of the machine's R cores; its
row is named by ``--name`` (its run directory under runs/peers).
Usage: python bench/peers/compare.py [--train atomcloud voxelnet] [--minutes 60] [--set KEY=VALUE ...]
       [--ranks 2 --ensemble 6 --name atomcloud_ensemble] [--report]
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, emit, ensemble_sets, features, run_figures, single_core, train_config  # noqa: E402

CONFIGS = {"atomcloud": "jobs/configs/atomcloud_perovskites.yaml", "voxelnet": "jobs/configs/voxelnet_cross.yaml"}
LABELS = {"atomcloud": "AtomCloudNet", "voxelnet": "VoxelNet (cross-spectrum, radial readout)"}


def run_dir(name: str) -> Path:
    return ROOT / "runs" / "peers" / name


def train(model: str, minutes: float, sets, ranks: int = 1, members: int = 1, name: str = "") -> None:
    """Train ``model`` on the split for ``minutes`` of wall time: in this process, or as ``members`` ensemble
    members spread over ``ranks`` ranks (each member ``minutes * ranks / members``)."""
    from cloudvox.config import load_run_config
    data = features("bench/configs/perovskites_16_all.yaml")
    run = run_dir(name or model)
    cfg = load_run_config(str(ROOT / CONFIGS[model]), [f"data.path={data}", f"run_dir={run}", "train.epochs=100000",
                                                       *ensemble_sets(minutes, ranks, members), *sets])
    wall = train_config(model, cfg, ranks)
    (run / "wall_s.txt").write_text(f"{wall:.1f}\n")


def mace_rows(path: Path):
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")] if path.exists() else []
    return {x["metric"]: x for x in lines if x.get("bench") == "peers_mace"}


def report(mace_path: Path) -> None:
    mace = mace_rows(mace_path)
    skip = set(mace.get("test_mae", {}).get("not_predicted", []))
    for model, run in runs_to_report():
        if not (run / "evaluation.json").exists():
            continue
        fig = run_figures(run)
        ev = fig["metrics"]
        rows = [r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == "test"]
        # MACE's ids: those its output names as predicted, or else those with no element unseen in training
        same = [abs(float(r["prediction"]) - float(r["target"])) for r in rows
                if (r["id"] not in skip if skip else "never seen in training" not in r["flag"])]
        members = len(fig["epochs"])
        label = LABELS[model] + (f", ensemble of {members}" if members > 1 else "")
        emit("peers", "row", label, "", run=run.name, test_mae=round(ev["test"]["mae"], 4),
             test_mae_mace_ids=round(statistics.fmean(same), 4), n_test=len(rows), n_mace_ids=len(same),
             val_mae=round(ev["val"]["mae"], 4), best_member_val_mae=round(fig["best_member_val_mae"], 4),
             epochs=fig["epochs"] if members > 1 else fig["epochs"][0],
             wall_s=float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").exists() else None,
             samples_per_s=round(fig["samples_per_s"], 1))
    if mace:
        t, v = mace["test_mae"], mace["val_mae"]
        emit("peers", "row", t["model"], "", test_mae=None, test_mae_mace_ids=round(t["value"], 4),
             n_test=t["n"] + len(t["not_predicted"]), n_mace_ids=t["n"], not_predicted=len(t["not_predicted"]),
             val_mae=round(v["value"], 4), epochs=t["epochs"], wall_s=round(mace["wall_time"]["value"], 1),
             samples_per_s=round(mace["train_samples_per_s"]["value"], 1))


def runs_to_report():
    """(model, run directory) of every run under runs/peers: a model's own, and ensembles named after it."""
    root = ROOT / "runs" / "peers"
    for run in sorted(root.iterdir()) if root.exists() else []:
        model = next((m for m in CONFIGS if run.name == m or run.name.startswith(m + "_")), None)
        if model and run.is_dir():
            yield model, run


def main():
    single_core()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="*", choices=sorted(CONFIGS), default=[])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--set", action="append", default=[], help="a config override for the trained models")
    ap.add_argument("--mace", default="out/peers/mace/results.jsonl", help="mace_perovskites.py's JSON lines")
    ap.add_argument("--ranks", type=int, default=1, help="ranks (cores) the ensemble's members spread over")
    ap.add_argument("--ensemble", type=int, default=1, help="members (train.ensemble), over --ranks")
    ap.add_argument("--name", default="", help="run directory under runs/peers (default: the model)")
    ap.add_argument("--report", action="store_true", help="only the table, from existing runs")
    args = ap.parse_args()
    import logging
    import torch
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if not args.report:
        for model in args.train:
            train(model, args.minutes, args.set, args.ranks, args.ensemble, args.name)
    report(ROOT / args.mace)


if __name__ == "__main__":
    main()
