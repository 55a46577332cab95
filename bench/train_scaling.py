"""Data-parallel training throughput at 1 and 2 ranks on CPU (Horovod and DDP), VoxelNet and AtomCloudNet.

Runs ``mpirun -n K cloudvox train MODEL`` (VoxelNet on 800 shared perovskites, property channels, N=16, the
demo network; AtomCloudNet on the 1000-molecule QM9 sample, jobs/configs/atomcloud_qm9.yaml's network) for
a few epochs and reports the median training samples/s of the second half of the epochs (once every rank's
item cache is warm) and the parallel
efficiency (samples/s at K ranks) / (K x samples/s at 1 rank), for weak scaling (32 samples per rank, the
usual data-parallel setting) and strong scaling (a global batch of 32 split over the ranks), plus the
compute time per batch and the gradient bytes exchanged per step (inputs to docs/scaling.md).
Usage: python bench/train_scaling.py [--epochs 3] [--backends horovod ddp]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features  # noqa: E402

import yaml  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(ranks, backend, config, model):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    cmd = ["mpirun", "-n", str(ranks), str(Path(sys.executable).parent / "cloudvox"), "train", model, str(config),
           "--backend", backend]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--backends", nargs="+", default=["horovod", "ddp"])
    ap.add_argument("--models", nargs="+", default=["voxelnet", "atomcloud"])
    args = ap.parse_args()
    data = features("jobs/configs/perovskites_demo.yaml")
    qm9 = features("jobs/configs/qm9_demo.yaml")
    vox = yaml.safe_load((ROOT / "jobs" / "configs" / "voxelnet_demo.yaml").read_text())
    vox["data"]["path"] = str(data)
    cloud = yaml.safe_load((ROOT / "jobs" / "configs" / "atomcloud_qm9.yaml").read_text())
    cloud["data"].update(path=str(qm9), split=dict(by=None, sizes=[800, 100, 100], seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        for model, base in (("voxelnet", vox), ("atomcloud", cloud)):
            if model not in args.models:
                continue
            for backend in args.backends:
                rates = {}
                for ranks, batch, kind in ((1, 32, "base"), (2, 64, "weak"), (2, 32, "strong")):
                    cfg = dict(base, run_dir=str(Path(tmp) / f"{model}{backend}{ranks}{kind}"),
                               train=dict(base["train"], epochs=args.epochs, batch_size=batch))
                    path = Path(tmp) / f"{model}{backend}{ranks}{kind}.yaml"
                    path.write_text(yaml.safe_dump(cfg))
                    run(ranks, backend if ranks > 1 else "none", path, model)
                    hist = [json.loads(line) for line in open(Path(cfg["run_dir"]) / "metrics.jsonl")]
                    warm = hist[len(hist) // 2:]  # warm caches
                    rates[kind] = statistics.median(r["samples_per_s"] for r in warm)
                    emit("train_scaling", f"samples_per_s_{ranks}_ranks", rates[kind], "samples/s", model=model,
                         backend=backend, global_batch=batch, scaling=kind, epochs=args.epochs,
                         spread=[round(min(r["samples_per_s"] for r in warm), 1),
                                 round(max(r["samples_per_s"] for r in warm), 1)])
                    breakdown = {k[len("step_ms_"):]: round(statistics.median(r[k] for r in warm), 3)
                                 for k in warm[0] if k.startswith("step_ms_")}  # rank 0's step split
                    emit("train_scaling", f"step_ms_{ranks}_ranks", sum(breakdown.values()), "ms/step", model=model,
                         backend=backend, scaling=kind, split=breakdown,
                         outside_compute=round(breakdown.get("data", 0) + breakdown.get("sync", 0), 3))
                for kind in ("weak", "strong"):
                    emit("train_scaling", f"parallel_efficiency_2_ranks_{kind}", rates[kind] / (2 * rates["base"]),
                         "fraction", model=model, backend=backend)
                emit("train_scaling", "compute_seconds_per_batch_1_rank", 32 / rates["base"], "s", model=model,
                     backend=backend)
    from cloudvox.models.atomcloud import build_atomcloud
    from cloudvox.models.voxelnet import VoxelNet
    sizes = {"voxelnet (demo network, N=16)": VoxelNet(8, 16, widths=[16, 16], pools=[2, 0], hidden=[32, 8]),
             "voxelnet (original, N=32, 8 channels)": VoxelNet(8, 32),
             "atomcloud (atomcloud_qm9.yaml)": build_atomcloud(cloud["network"])}
    for name, net in sizes.items():
        emit("train_scaling", "gradient_bytes_per_step", sum(p.numel() for p in net.parameters()) * 4, "bytes", model=name)


if __name__ == "__main__":
    main()
