"""Train a model from a YAML config, on one process or distributed (``cloudvox train``)."""
import json
import os
from pathlib import Path

from .common import log, log_launch, on_stop_signals


def add_parser(sub) -> None:
    import argparse
    from cloudvox.config import RunConfig, describe
    p = sub.add_parser("train", help="train a model from a YAML config (one process, or distributed)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys (YAML sections, or --set KEY=VALUE), with their defaults:\n"
                              + "\n".join(describe(RunConfig)))
    p.add_argument("model", help="which model: voxelnet or atomcloud (the registry in cloudvox/models/registry.py)")
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (a.b=value)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint_last.pt if present")
    p.add_argument("--backend", choices=["auto", "horovod", "ddp", "none"], default="auto",
                   help="data-parallel backend when several processes run (auto: Horovod if importable)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args, command: str) -> int:
    from cloudvox.config import load_run_config
    from cloudvox.runs import train_run
    from cloudvox.training.process import keep_freed_memory
    from ..distributed import make_distributed, watch
    from ..logs import setup_logging
    cfg = load_run_config(args.config, args.set, model=args.model)  # a typo fails here, on every rank alike
    keep_freed_memory()  # reuse the large activation blocks of every step instead of page-faulting them in
    dist = make_distributed(args.backend)
    setup_logging(dist.rank, args.verbose)
    log_launch()
    watchdog = watch(dist, Path(cfg.run_dir), cfg.train.collective_timeout)

    def install(trainer):  # every rank checkpoints at one common step and leaves cleanly
        on_stop_signals(lambda: setattr(trainer, "stop_requested", True))

    try:
        if cfg.train.ensemble > 1 and cfg.train.members_over_ranks and dist.size > 1:
            from ..ensemble import train_members_over_ranks
            summary = train_members_over_ranks(cfg, dist, resume=args.resume, on_trainer=install)
        else:
            summary = train_run(cfg, dist, resume=args.resume, on_trainer=install)
    except Exception as e:  # a failing rank brings the job down rather than leaving the others waiting
        if dist.size > 1:
            log.critical("rank %d failed: %s", dist.rank, e, exc_info=e)
            os._exit(1)
        raise
    if watchdog is not None:
        watchdog.close()
    if dist.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, default=str))
    return 0
