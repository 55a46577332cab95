"""Featurize structures into one feature file, on one process or many (``cloudvox featurize``)."""
import json
import os
import time
from pathlib import Path

from cloudvox.featurefile import STORE_DEFAULT, STORE_ITEMS
from cloudvox.io.sources import FORMATS

from .common import log_launch, on_stop_signals


def add_parser(sub) -> None:
    p = sub.add_parser("featurize", help="structures -> HDF5 feature file (MPI-parallel, resumable)",
                       description="Featurize structures into one HDF5 file; run under mpirun/srun for many ranks.")
    p.add_argument("--config", help="YAML file with any of the options below (flags win)")
    p.add_argument("--input", nargs="+", help="input files or folders (none: the embedded data of qm9/prototypes)")
    p.add_argument("--format", choices=list(FORMATS), help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    p.add_argument("--output", help="the .h5 file to write")
    p.add_argument("--descriptor", choices=["cartesian", "spherical"], help="voxel grid (default cartesian)")
    p.add_argument("--n", type=int, help="voxels per axis (default 32)")
    p.add_argument("--length", type=float, help="L in Angstrom (default 12.8)")
    p.add_argument("--sigma", type=float, help="Gaussian width in Angstrom (default 0.1)")
    p.add_argument("--species", nargs="+", help="restrict channels to these elements (default: all present)")
    p.add_argument("--channels", choices=["element", "total", "properties"],
                   help="one channel per element (default), one in total, or one per element property")
    p.add_argument("--properties", nargs="+", help="element properties for --channels properties")
    p.add_argument("--cross", action="store_true", default=None,
                   help="add each channel's cross-spectrum with the whole structure, Re(h_c h*) / h(0)")
    p.add_argument("--store", nargs="+", choices=list(STORE_ITEMS),
                   help=f"what to store (default {' '.join(STORE_DEFAULT)}: a crystal's voxels are binned from its "
                        "reciprocal set when read)")
    p.add_argument("--block-size", type=int, help="records per work block and shard (default 256)")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--shard-compression", choices=["none", "lzf"],
                   help="the shards until the merge: none (default, faster) or lzf (~0.6x the temporary disk)")
    p.add_argument("--merge-buffer-mb", type=float, help="shards a merging rank holds at once (default 64 MB)")
    p.add_argument("--merge-writers", type=int,
                   help="ranks that write the output: 0 one per node (default), N: N writers; with more than one, "
                        "OUT.h5 reads its datasets from OUT.h5.segments/ beside it")
    p.add_argument("--collective-timeout", type=float,
                   help="seconds a rank may go without finishing a block or reaching a collective (default 600; 0: off)")
    p.add_argument("--progress-every", type=float,
                   help="seconds between progress lines when the log is not a terminal (default 60; 0: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output or unfinished run")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any record is bad")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_featurize)


FEATURIZE_FLAGS = {  # flag -> (section, key) of the featurize config
    "input": (None, "input"), "format": (None, "format"), "output": (None, "output"), "store": (None, "store"),
    "block_size": (None, "block_size"), "limit": (None, "limit"),
    "shard_compression": (None, "shard_compression"), "merge_buffer_mb": (None, "merge_buffer_mb"), "merge_writers": (None, "merge_writers"),
    "collective_timeout": (None, "collective_timeout"),
    "progress_every": (None, "progress_every"),
    "overwrite": (None, "overwrite"), "strict": (None, "strict"), "descriptor": ("descriptor", "mode"),
    "n": ("descriptor", "n"), "length": ("descriptor", "length"), "sigma": ("descriptor", "sigma"),
    "species": ("descriptor", "species"), "channels": ("descriptor", "channels"),
    "properties": ("descriptor", "properties"), "cross": ("descriptor", "cross"),
}


def featurize_job(args, command: str):
    """The job of a featurize command line: the YAML config, then the flags given (they win)."""
    from cloudvox.config import read_yaml
    from ..featurize import FeaturizeJob
    raw = read_yaml(args.config)
    for flag, (section, key) in FEATURIZE_FLAGS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        target = raw if section is None else raw.setdefault(section, {})
        target[key] = value
    return FeaturizeJob.from_config(raw, command)


def watched_featurize(comm, job):
    """The featurize job's communicator under a collective-timeout watchdog (several ranks, a timeout > 0),
    its heartbeats beside the output (``.OUT.h5.watchdog/LAUNCH``); (comm, None) otherwise."""
    from ..watchdog import WatchedComm, start
    if comm.Get_size() < 2 or job.collective_timeout <= 0:
        return comm, None
    output = Path(job.output)
    launch = comm.bcast(f"{os.getpid():x}-{int(time.time() * 1e6):x}" if comm.Get_rank() == 0 else None, root=0)
    watchdog = start(output.with_name(f".{output.name}.watchdog"), launch, comm.Get_rank(), comm.Get_size(),
                     job.collective_timeout)
    return WatchedComm(comm, watchdog), watchdog


def cmd_featurize(args, command: str) -> int:
    from ..comm import abort_on_error, world
    from ..featurize import JobError, run_featurize
    from ..logs import setup_logging
    stop_requested = []
    on_stop_signals(lambda: stop_requested.append(True))
    job = featurize_job(args, command)  # a bad config fails here, alike on every rank: main() reports it once
    comm = world()
    setup_logging(comm.Get_rank(), args.verbose)
    log_launch()
    comm, watchdog = watched_featurize(comm, job)
    try:
        summary = run_featurize(job, comm, stop=lambda: bool(stop_requested))
    except JobError:  # a refusal every rank agreed on (bad parameters, unwritable or mismatching output)
        raise
    except Exception as e:  # a failing rank brings the job down instead of hanging
        abort_on_error(comm, e)
        raise
    if watchdog is not None:
        watchdog.close()
        comm.Barrier()
        if comm.Get_rank() == 0:
            import shutil
            shutil.rmtree(watchdog.folder.parent, ignore_errors=True)
    if comm.Get_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, default=str))
    return 1 if (job.strict and summary.get("failed")) else 0
