"""Data-parallel training throughput at 1 and 2 ranks on CPU (Horovod and DDP), VoxelNet and AtomCloudNet.

Runs ``mpirun -n K cloudvox train MODEL`` (VoxelNet on 2800 training perovskites of the shared file, element
and cross channels, N=16, the demo network; AtomCloudNet on 2800 QM9 molecules, jobs/configs/atomcloud_qm9.yaml's
network) for a few epochs and reports the median training samples/s of the second half of the epochs (once
every rank's item cache is warm), rank 0's step split, the time per epoch outside the steps, and the parallel
efficiency (samples/s at 2 ranks) / (2 x samples/s at 1 rank), for weak scaling (32 samples per rank, the
usual data-parallel setting) and strong scaling (a global batch of 32 split over the ranks). Every run, the
1-rank references included, goes through forward and backward in chunks of ``--micro-batch`` samples
(``train.micro_batch``, 16: 1.09x for VoxelNet at 2 CPU ranks against one piece, neutral for AtomCloudNet;
0 for one piece per rank). With
``--repeats R`` the runs alternate R times and the medians over rounds are printed with every round's figure.
Each round runs the 1-rank training before and after its 2-rank runs and takes the mean of the two as its
reference: this machine drifts by 10-20 % over minutes, and bracketing cancels a linear drift. Every rank's step
split is printed for the 2-rank runs (the slower rank's extra time is the others' wait in the allreduce).
``--control`` adds two 1-rank trainings at once, one per core, with no communication: their mean samples/s over
one alone is what the two cores allow, the ceiling of the 2-rank efficiency here (each 2-rank efficiency is
also printed against it, ``against_pair``). Also the gradient bytes exchanged per step (inputs to
docs/scaling.md).
Usage: python bench/train_scaling.py [--epochs 6] [--repeats 3] [--backends horovod ddp] [--models voxelnet atomcloud]
       [--control] [--micro-batch 16] [--set train.lr=0.001 ...]
"""
import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features, mpi_env  # noqa: E402

import yaml  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks, backend, config, model, core=None):
    """``mpirun -n ranks cloudvox train`` started (one BLAS thread per rank, each rank bound to a core as
    mpirun does: rank r to core r, or to ``core``); the process."""
    env = mpi_env(MASTER_PORT=str(free_port()))
    cmd = ["mpirun", "-n", str(ranks)] + ([] if core is None else ["--cpu-set", str(core), "--bind-to", "core"])
    cmd += [str(Path(sys.executable).parent / "cloudvox"), "train", model, str(config), "--backend", backend]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def wait(proc):
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"training failed ({proc.returncode}): {err.decode()[-2000:]}")


def config_file(tmp, name, base, batch, epochs):
    cfg = dict(base, run_dir=str(Path(tmp) / name), train=dict(base["train"], epochs=epochs, batch_size=batch))
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, Path(cfg["run_dir"])


def summary(run_dir):
    """(median samples/s of the second half of the epochs, rank 0's median step split in ms, median per-epoch
    time outside the steps in ms, every rank's median step split {phase: [ms per rank]} or None)."""
    hist = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    warm = hist[len(hist) // 2:]  # warm caches
    split = {k[len("step_ms_"):]: round(statistics.median(r[k] for r in warm), 3)
             for k in warm[0] if k.startswith("step_ms_")}
    epoch_ms = statistics.median(1e3 * r["train_seconds"] - r["train_steps"] * sum(r[k] for k in r if k.startswith("step_ms_"))
                                 for r in warm)
    per_rank = None
    if "ranks_step_ms" in warm[0]:
        per_rank = {k: [round(statistics.median(r["ranks_step_ms"][k][i] for r in warm), 3) for i in range(len(v))]
                    for k, v in warm[0]["ranks_step_ms"].items()}
    return statistics.median(r["samples_per_s"] for r in warm), split, epoch_ms, per_rank


def one_run(tmp, name, base, ranks, batch, backend, model, epochs):
    """Train once at ``ranks`` ranks; :func:`summary` of the run."""
    path, run_dir = config_file(tmp, name, base, batch, epochs)
    wait(launch(ranks, backend if ranks > 1 else "none", path, model))
    return summary(run_dir)


def independent_pair(tmp, name, base, model, epochs):
    """Two 1-rank trainings at once, no communication: what the two cores allow two ranks (the ceiling of
    the 2-rank efficiency on this machine). :func:`summary` of each."""
    paths = [config_file(tmp, f"{name}{i}", base, 32, epochs) for i in range(2)]
    procs = [launch(1, "none", path, model, core=i) for i, (path, _) in enumerate(paths)]
    for proc in procs:
        wait(proc)
    return [summary(run_dir) for _, run_dir in paths]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (1 rank, then each backend at 2)")
    ap.add_argument("--backends", nargs="+", default=["horovod", "ddp"])
    ap.add_argument("--models", nargs="+", default=["voxelnet", "atomcloud"])
    ap.add_argument("--micro-batch", type=int, default=16,
                    help="train.micro_batch of every run (0: each rank's share in one piece); 16 is the measured "
                         "choice for CPU ranks (docs/scaling.md)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for both models' runs (e.g. train.lr=0.001)")
    ap.add_argument("--control", action="store_true",
                    help="also two 1-rank trainings at once, no communication: the ceiling the two cores allow")
    args = ap.parse_args()
    data = features("bench/configs/perovskites_3200.yaml")
    qm9 = features("jobs/configs/qm9_demo.yaml")
    vox = yaml.safe_load((ROOT / "jobs" / "configs" / "voxelnet_demo.yaml").read_text())
    vox["data"].update(path=str(data), split=dict(by=None, sizes=[2800, 200, 200], seed=0))
    cloud = yaml.safe_load((ROOT / "jobs" / "configs" / "atomcloud_qm9.yaml").read_text())
    cloud["data"].update(path=str(qm9), split=dict(by=None, sizes=[2800, 100, 100], seed=0))
    from cloudvox.config import apply_overrides
    args.set = [f"train.micro_batch={args.micro_batch}"] + args.set
    vox, cloud = apply_overrides(vox, args.set), apply_overrides(cloud, args.set)
    runs = [(1, 32, "base", "none")] + [(2, b, kind, be) for be in args.backends for b, kind in ((64, "weak"), (32, "strong"))]
    after = [(1, 32, "base_after", "none")]  # the 1-rank run again at the round's end: the reference is their mean
    with tempfile.TemporaryDirectory() as tmp:
        for model, base in (("voxelnet", vox), ("atomcloud", cloud)):
            if model not in args.models:
                continue
            eff = {}
            for rep in range(args.repeats):
                rates = {}

                def measure(configs):
                    for ranks, batch, kind, backend in configs:
                        name = f"{model}{backend}{kind}{rep}"
                        rates[backend, kind], split, epoch_ms, per_rank = one_run(tmp, name, base, ranks, batch,
                                                                                  backend, model, args.epochs)
                        emit("train_scaling", f"samples_per_s_{ranks}_ranks", rates[backend, kind], "samples/s",
                             model=model, backend=backend, global_batch=batch, scaling=kind, epochs=args.epochs,
                             repeat=rep, overrides=args.set)
                        emit("train_scaling", f"step_ms_{ranks}_ranks", sum(split.values()), "ms/step", model=model,
                             backend=backend, scaling=kind, repeat=rep, split=split,
                             epoch_overhead_ms=round(epoch_ms, 1),
                             outside_compute=round(split.get("data", 0) + split.get("sync", 0), 3), per_rank=per_rank)
                measure(runs)
                if args.control:
                    pair = independent_pair(tmp, f"{model}pair{rep}", base, model, args.epochs)
                    pair_rate = sum(r[0] for r in pair) / 2
                    for i, (rate, split, _, _) in enumerate(pair):
                        emit("train_scaling", "step_ms_independent_pair", sum(split.values()), "ms/step", model=model,
                             process=i, repeat=rep, split=split, samples_per_s=rate)
                measure(after)
                # the 1-rank reference: the mean of the runs before and after the round's 2-rank runs (the machine
                # drifts by 10-20 % over minutes; bracketing cancels a linear drift)
                one = (rates["none", "base"] + rates["none", "base_after"]) / 2
                if args.control:
                    emit("train_scaling", "independent_pair_efficiency", pair_rate / one, "fraction", model=model,
                         repeat=rep)
                for backend in args.backends:
                    for kind in ("weak", "strong"):
                        e = rates[backend, kind] / (2 * one)
                        eff.setdefault((backend, kind), []).append(e)
                        extra = dict(against_pair=round(rates[backend, kind] / (2 * pair_rate), 3)) if args.control else {}
                        emit("train_scaling", f"parallel_efficiency_2_ranks_{kind}", e, "fraction", model=model,
                             backend=backend, repeat=rep, **extra)
            for (backend, kind), values in eff.items():
                emit("train_scaling", f"parallel_efficiency_2_ranks_{kind}_median", statistics.median(values),
                     "fraction", model=model, backend=backend, repeats=[round(v, 3) for v in values])
    from cloudvox.models.atomcloud import build_atomcloud
    from cloudvox.models.voxelnet import VoxelNet
    sizes = {"voxelnet (demo network, N=16)": VoxelNet(8, 16, widths=[16, 16], pools=[2, 0], hidden=[32, 8]),
             "voxelnet (original, N=32, 8 channels)": VoxelNet(8, 32),
             "atomcloud (atomcloud_qm9.yaml)": build_atomcloud(cloud["network"])}
    for name, net in sizes.items():
        emit("train_scaling", "gradient_bytes_per_step", sum(p.numel() for p in net.parameters()) * 4, "bytes", model=name)


if __name__ == "__main__":
    main()
