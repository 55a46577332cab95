"""AtomCloudNet on QM9: U (298 K) in kcal/mol, fixed seed, 1,000 validation and 10,000 test molecules, a
learning curve over training-set sizes (default 1,000 and 10,000), and training throughput (molecules/s).

Featurizes all 130,831 QM9 molecules (point clouds only) from the qm9pack package first if needed
(jobs/configs/qm9.yaml, under mpirun). The network and schedule are jobs/configs/atomcloud_qm9.yaml.
With ``--ensemble K --train-ranks R`` each size trains K members spread over R ranks (``mpirun``,
``train.members_over_ranks``, one core each), each member with ``--minutes`` x R / K: the ensemble takes
``--minutes`` of the machine's R cores.
Usage: python bench/atomcloud_qm9.py [--train-size 10000] [--curve 1000 10000] [--epochs 200 | --minutes 120]
                                     [--ensemble 4 --train-ranks 2] [--set network.l_max=1 ...] [--profile]
       python bench/atomcloud_qm9.py --profile-only   # step rate and operator profile only
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, ensemble_sets, features, run_figures, train_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--curve", type=int, nargs="*", default=[1000])
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--ranks", type=int, default=2, help="MPI ranks for featurization")
    ap.add_argument("--minutes", type=float, default=0.0, help="training budget per size (train.max_minutes; 0: epochs)")
    ap.add_argument("--ensemble", type=int, default=1, help="members per size (train.ensemble)")
    ap.add_argument("--train-ranks", type=int, default=1, help="ranks (cores) the members spread over")
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. network.l_max=1")
    ap.add_argument("--profile", action="store_true", help="print where the time of a training step goes")
    ap.add_argument("--profile-only", action="store_true", help="only the profile and training step rate")
    args = ap.parse_args()
    data = features("jobs/configs/qm9.yaml", args.ranks)
    from cloudvox.config import load_run_config as load_config
    sizes = [] if args.profile_only else sorted(set(args.curve + [args.train_size]))
    members = max(1, args.ensemble)
    for size in sizes:
        name = f"runs/atomcloud_qm9_{size}" + (f"_ensemble{members}" if members > 1 else "")
        sets = [f"data.path={data}", f"data.split.sizes=[{size}, 1000, 10000]", f"run_dir={name}"]
        if args.epochs:
            sets.append(f"train.epochs={args.epochs}")
        if args.minutes and not args.epochs:  # the cosine schedule is fitted to the budget; epochs only cap it
            sets.append("train.epochs=100000")
        sets += ensemble_sets(args.minutes, args.train_ranks, members)
        sets += args.set
        cfg = load_config(str(ROOT / "jobs" / "configs" / "atomcloud_qm9.yaml"), sets)
        cfg.run_dir = str(ROOT / cfg.run_dir)
        wall = train_config("atomcloud", cfg, args.train_ranks)
        fig = run_figures(Path(cfg.run_dir))
        test = fig["metrics"]["test"]
        common = dict(train_size=size, epochs=fig["epochs"] if members > 1 else fig["epochs"][0], n_test=test["n"],
                      members=members, val_mae=round(fig["metrics"]["val"]["mae"], 4),
                      best_member_val_mae=round(fig["best_member_val_mae"], 4), sets=args.set)
        emit("atomcloud_qm9", "test_mae", test["mae"], "kcal/mol", **common)
        emit("atomcloud_qm9", "wall_time", wall, "s", **common)
        emit("atomcloud_qm9", "train_molecules_per_s", fig["samples_per_s"], "molecules/s", **common)
    if args.profile or args.profile_only:
        profile(load_config(str(ROOT / "jobs" / "configs" / "atomcloud_qm9.yaml"), [f"data.path={data}"]))


def profile(cfg):
    """Training-step rate of the benchmark's network (molecules/s, batches of 32, no data loading) and the
    top operators of a few steps (torch profiler), for the throughput note."""
    import torch
    from cloudvox.data import CloudDataset
    from cloudvox.models.atomcloud import build_atomcloud
    from cloudvox.models.registry import CloudTask
    n = 640
    ds = CloudDataset(cfg.data.path, list(range(0, 64 * n, 64)), [0.0] * n, cfg.network["cutoff"])
    torch.manual_seed(0)
    net = build_atomcloud(cfg.network)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    batches = [ds.collate([ds[i] for i in range(k, k + 32)]) for k in range(0, n, 32)]

    def epoch():
        t = time.perf_counter()
        for b in batches:
            pred, y = CloudTask().forward(net, b, torch.device("cpu"), None, True)
            loss = (pred - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return n / (time.perf_counter() - t)

    epoch()
    edges = statistics.mean(len(b["edge_src"]) / len(b["numbers"]) for b in batches)
    emit("atomcloud_qm9", "step_molecules_per_s", statistics.median(epoch() for _ in range(5)), "molecules/s",
         threads=torch.get_num_threads(), batch_size=32, edges_per_atom=round(edges, 2),
         parameters=sum(p.numel() for p in net.parameters()))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        epoch()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)


if __name__ == "__main__":
    main()
