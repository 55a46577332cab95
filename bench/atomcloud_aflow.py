"""AtomCloudNet on the shared AFLOW perovskites (periodic clouds), the same compound-grouped 80/10/10 split
(seed 0) as bench/voxelnet_aflow.py: test MAE of enthalpy_atom (eV/atom) next to VoxelNet's, when that run
exists (runs/voxelnet_perovskites/evaluation.json).
Usage: python bench/atomcloud_aflow.py [--epochs 100]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    from cloudvox.config import load_run_config as load_config
    from cloudvox.runs import train_run
    data = features("jobs/configs/perovskites.yaml")
    cfg = load_config(None, [f"data.path={data}", "data.target=enthalpy_atom", "data.split.by=compound",
                             "data.normalize=composition", f"train.epochs={args.epochs}", "train.lr=0.002",
                             f"run_dir={ROOT / 'runs' / 'atomcloud_perovskites'}", "network.cutoff=4.5",
                             "network.layers=3", "network.l_max=2", "network.scalars=32", "network.vectors=16",
                             "network.tensors=8", "network.pooling=mean", "network.body_features=true"],
                      model="atomcloud")
    t = time.perf_counter()
    summary = train_run(cfg)
    wall = time.perf_counter() - t
    rate = statistics.median(r["samples_per_s"] for r in summary["history"][1:])
    emit("atomcloud_aflow", "test_mae", summary["metrics"]["test"]["mae"], "eV/atom", epochs=summary["epochs"],
         wall_s=round(wall, 1), samples_per_s=round(rate, 1))
    ev = ROOT / "runs" / "voxelnet_perovskites" / "evaluation.json"
    if ev.exists():
        emit("atomcloud_aflow", "voxelnet_test_mae", json.loads(ev.read_text())["metrics"]["test"]["mae"], "eV/atom")


if __name__ == "__main__":
    main()
