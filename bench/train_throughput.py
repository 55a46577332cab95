"""Training throughput of the real pipeline (HDF5 feature file -> DataLoader -> task -> model -> optimiser), on
any device: samples/s (as training runs, the device never synchronised), the step time split (data, forward,
backward, optimizer, sync; ms per step, from the trainer's StepTimer in as many more epochs with the device
synchronised at each phase) and the peak device memory.

    python bench/train_throughput.py --model voxelnet --data FILE.h5 [--device cuda] [--batch-size 32 256]
    python bench/train_throughput.py --model atomcloud --data FILE.h5 --config jobs/configs/atomcloud_qm9.yaml

One warm-up epoch (cuDNN autotuning, caches, allocator), then ``--epochs`` timed epochs of ``--steps`` steps
each (the figure is their median), then ``--epochs`` epochs for the split. VoxelNet: the original network (the
model's defaults), rotation augmentation binned on the device. AtomCloudNet: the network of ``--config``
(default jobs/configs/atomcloud_qm9.yaml).
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402


def run(args, batch_size: int) -> None:
    import torch
    from cloudvox.config import load_run_config
    from cloudvox.runs import build_trainer
    from cloudvox.training.process import keep_freed_memory
    from cloudvox.featurefile import FeatureFile
    keep_freed_memory()
    n_val = min(batch_size, 64)
    steps = max(1, min(args.steps, (FeatureFile(args.data).n - n_val) // batch_size))  # what the file holds
    n_train = batch_size * steps
    sets = [f"data.path={args.data}", f"data.target={args.target}", "data.normalize=mean_std",
            f"data.split.sizes=[{n_train}, {n_val}, 0]", "data.split.by=null",
            f"train.batch_size={batch_size}", f"train.epochs={args.epochs + 1}", f"train.device={args.device}",
            f"train.num_workers={args.workers}", "train.exact_timing=false", f"train.amp={str(args.amp).lower()}"]
    if args.model == "voxelnet":
        sets += ["augment.rotations=true"]
    sets += args.set
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_run_config(args.config, sets + [f"run_dir={tmp}/run"], model=args.model)
        trainer, _, _ = build_trainer(cfg)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for epoch in range(args.epochs + 1):  # samples/s as training runs: no device synchronisation per phase
            trainer.epoch = epoch
            rows.append(trainer.train_epoch())
        timed = rows[1:]
        trainer.cfg.exact_timing = True  # then the split: the device synchronised at each phase (slower)
        for epoch in range(args.epochs + 1, 2 * args.epochs + 1):
            trainer.epoch = epoch
            timed[epoch - args.epochs - 1].update({k: v for k, v in trainer.train_epoch().items()
                                                   if k.startswith("step_ms_")})
        common = dict(model=args.model, device=str(trainer.device), batch_size=batch_size, steps=steps,
                      epochs=args.epochs, workers=args.workers, amp=bool(trainer.amp))
        if args.set:
            common["set"] = args.set
        rates = [r["samples_per_s"] for r in timed]
        emit("train_throughput", "samples_per_s", statistics.median(rates), "samples/s",
             spread=[round(min(rates), 1), round(max(rates), 1)], **common)
        for phase in ("data", "forward", "backward", "optimizer", "sync"):
            emit("train_throughput", f"step_ms_{phase}", statistics.median(r[f"step_ms_{phase}"] for r in timed),
                 "ms/step", **common)
        if trainer.device.type == "cuda":
            emit("train_throughput", "peak_memory", torch.cuda.max_memory_allocated() / 2 ** 30, "GiB", **common)
        if args.profile:
            profile_epoch(trainer, args.profile, common)


def profile_epoch(trainer, top: int, common: dict) -> None:
    """One more epoch under torch.profiler: the ``top`` operators by self time on the device (CPU where there
    is none), in ms per step, one JSON line each."""
    from torch.profiler import ProfilerActivity, profile
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        trainer.epoch += 1
        trainer.train_epoch()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    for e in events:
        emit("train_throughput", "profile_ms_per_step", getattr(e, key, 0.0) / 1e3 / common["steps"], "ms/step",
             op=e.key, calls_per_step=round(e.count / common["steps"], 1), **common)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["voxelnet", "atomcloud"], required=True)
    ap.add_argument("--data", required=True, help="a feature file (VoxelNet: with reciprocal sets; AtomCloudNet: clouds)")
    ap.add_argument("--config", default=None, help="a run config for the network (default: the model's defaults; "
                                                     "atomcloud: jobs/configs/atomcloud_qm9.yaml)")
    ap.add_argument("--target", default=None, help="property to fit (default: enthalpy_atom / U)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32])
    ap.add_argument("--steps", type=int, default=40, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, e.g. network.first_layer=scatter (repeat for more)")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="after the timed epochs, profile one more and print the TOP operators by self time")
    args = ap.parse_args()
    if args.model == "atomcloud" and args.config is None:
        args.config = str(ROOT / "jobs" / "configs" / "atomcloud_qm9.yaml")
    args.target = args.target or ("U" if args.model == "atomcloud" else "enthalpy_atom")
    for batch_size in args.batch_size:
        run(args, batch_size)


if __name__ == "__main__":
    main()
