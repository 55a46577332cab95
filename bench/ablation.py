"""Ablations on the perovskite split, selected by validation MAE (issue 19): one change at a time from a base.

Each variant trains on the compound-grouped 80/10/10 split (seed 0) of the shared perovskites for the same
wall-clock budget (``train.max_minutes``; the cosine schedule is fitted to it), and the bench prints its best
validation MAE (the selection figure), its test MAE (reported, never used to choose), epochs, samples/s and
wall time. Variants are one-factor changes from the base config; ``name+name`` combines them.
Usage: python bench/ablation.py --model atomcloud|voxelnet [--minutes 6] [--variants base cutoff6 ...]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, features, single_core  # noqa: E402

PROPS = "[row,group,X,radius,ionization,affinity,mendeleev]"
# AtomCloudNet's base: jobs/configs/atomcloud_perovskites.yaml as it was before the ablation (its network now is
# base+l1+wide+props+lr5e-3, the variant chosen by validation MAE)
ATOMCLOUD_BASE = ["network.l_max=2", "network.scalars=32", "network.vectors=16", "network.tensors=8",
                  "network.embed=32", "network.embed_properties=null", "train.lr=0.002"]
MODELS = {  # model -> (config, base overrides, {variant: overrides})
    "atomcloud": ("jobs/configs/atomcloud_perovskites.yaml", ATOMCLOUD_BASE, {
        "base": [],
        "l1": ["network.l_max=1"],                        # angular resolution
        "no_body": ["network.body_features=false"],       # without the 2- and 3-body invariants in the head
        "layers4": ["network.layers=4"],                  # more message passing (body order)
        "products": ["network.products=all"],            # 3-body invariants of the messages in every layer
        "products_hidden": ["network.products=hidden"],   # the same in the layers with l > 0 outputs only
        "receiver": ["network.receiver=true"],            # the receiving atom's scalars scale its messages
        "batch8": ["train.batch_size=8"],                 # 4x the optimiser steps (QM9 10k: 15 % fewer samples/s)
        "wide": ["network.scalars=64", "network.vectors=32", "network.tensors=16", "network.embed=64"],
        "radial16": ["network.n_basis=16", "network.radial_hidden=64"],  # more radial channels
        "cutoff6": ["network.cutoff=6.0", "network.avg_neighbors=40"],   # more periodic images
        "props": [f"network.embed_properties={PROPS}"],  # element embeddings from element properties
        "lr5e-3": ["train.lr=0.005"],
        # regularisation (issue 19: the members memorise, train MAE 0.003-0.009 against 0.042 on validation)
        "ema": ["train.ema=0.999"],                       # evaluate a moving average of the weights
        "wd": ["train.weight_decay=0.05"],                # decoupled weight decay (AdamW)
    }),
    "voxelnet": ("jobs/configs/voxelnet_cross.yaml", ["data.path=out/bench/perovskites_16_all.h5"], {
        "base": [],
        "wide": ["network.widths=[128,128]", "network.hidden=[128]"],
        "deep": ["network.widths=[64,64,64]", "network.pools=[0,0,0]"],
        "no_props": ["network.channel_properties=null"],
        "no_rot": ["augment.rotations=false", "augment.reflections=false"],
        "lr5e-3": ["train.lr=0.005"],
        # what the descriptor feeds it (``descriptor.*``: a feature file of its own, featurized once)
        "n24": ["descriptor.n=24", "descriptor.length=12.0"],   # finer bins, same |G| range (N / L fixed)
        "n12": ["descriptor.n=12", "descriptor.length=6.0"],    # coarser bins
        "sigma0.2": ["descriptor.sigma=0.2"],                    # wider Gaussians: high |G| damped
        "sigma0.05": ["descriptor.sigma=0.05"],
        "no_cross": ["descriptor.cross=false"],                  # element channels only
        "shells": ["network.global_pool=shells"],                # readout: radial shells of the grid
        "mean": ["network.global_pool=mean"],                    # readout: one mean per feature map
        "ema": ["train.ema=0.999"],
        "wd": ["train.weight_decay=0.05"],
    }),
}
FEATURES = "bench/configs/perovskites_16_all.yaml"  # the feature file every variant reads unless it changes it


def feature_file(changes):
    """The feature file of FEATURES's descriptor with ``descriptor.key=value`` changes, featurized once."""
    import yaml
    cfg = yaml.safe_load((ROOT / FEATURES).read_text())
    tag = "_".join(c[len("descriptor."):].replace("=", "") for c in changes)
    for c in changes:
        key, value = c[len("descriptor."):].split("=", 1)
        cfg["descriptor"][key] = yaml.safe_load(value)
    folder = ROOT / "out" / "bench" / "ablation"
    folder.mkdir(parents=True, exist_ok=True)
    cfg["output"] = str(folder / f"perovskites_{tag}.h5")
    path = folder / f"perovskites_{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return features(str(path))


def run_variant(model: str, name: str, minutes: float, root: Path):
    from cloudvox.config import load_run_config
    from cloudvox.runs import train_run
    config, base, variants = MODELS[model]
    sets = base + [s for part in name.split("+") for s in variants[part]]
    descriptor = [s for s in sets if s.startswith("descriptor.")]
    sets = [s for s in sets if not s.startswith("descriptor.")]
    cfg = load_run_config(str(ROOT / config), sets + [f"train.max_minutes={minutes}", "train.epochs=100000",
                                                      f"run_dir={root / model / name}"])
    cfg.data.path = str(feature_file(descriptor) if descriptor else ROOT / cfg.data.path)
    t = time.perf_counter()
    summary = train_run(cfg)
    wall = time.perf_counter() - t
    hist = summary["history"]
    common = dict(model=model, variant=name, minutes=minutes, epochs=summary["epochs"],
                  best_epoch=summary["best_epoch"], wall_s=round(wall, 1),
                  samples_per_s=round(statistics.median(r["samples_per_s"] for r in hist[1:] or hist), 1))
    emit("ablation", "val_mae", summary["best_val_mae"], "eV/atom", **common)
    emit("ablation", "test_mae", summary["metrics"]["test"]["mae"], "eV/atom", **common)


def main():
    single_core()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each variant")
    ap.add_argument("--variants", nargs="+", help="names (or a+b combinations); default: all one-factor variants")
    ap.add_argument("--run-root", default="runs/ablation")
    args = ap.parse_args()
    import logging
    import torch
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    features(FEATURES)
    known = MODELS[args.model][2]
    names = args.variants or list(known)
    bad = [n for n in names for part in n.split("+") if part not in known]
    if bad:
        raise SystemExit(f"unknown variant {bad[0]!r}; known: {', '.join(known)}")
    for name in names:
        run_variant(args.model, name, args.minutes, ROOT / args.run_root)


if __name__ == "__main__":
    main()
