"""The preflight of a multi-node job (``cloudvox doctor``)."""
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check what a multi-node job depends on, on every rank, before it starts",
                       description="Run under the job's launcher (srun, mpirun, torchrun): every rank reports its "
                                   "launcher, host, MPI, Horovod, h5py, CUDA/NCCL and reaches the rendezvous; rank 0 "
                                   "prints the checks. Exit 2 when one fails, with the fix.")
    p.add_argument("--job", choices=["featurize", "train"], default="train", help="what the job will run")
    p.add_argument("--backend", choices=["auto", "horovod", "ddp"], default="auto", help="the training backend")
    p.add_argument("--config", help="the job's YAML: its output folder (featurize) or run_dir (train) is checked")
    p.add_argument("--folder", help="the folder every node must write (default: from --config, else the current one)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for every rank (default 20)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args, command: str) -> int:
    from ..doctor import run_doctor
    from ..launcher import launch_env
    from ..logs import setup_logging
    setup_logging(launch_env().rank, args.verbose)
    folder = args.folder
    if folder is None and args.config:
        from cloudvox.config import read_yaml
        raw = read_yaml(args.config)
        target = raw.get("output") if args.job == "featurize" else raw.get("run_dir")
        folder = str(Path(target).parent) if (target and args.job == "featurize") else target
    return run_doctor(Path(folder or "."), job=args.job, backend=args.backend, timeout=args.timeout)
