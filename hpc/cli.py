"""The ``cloudvox`` command line: one console script, one subcommand per job.

    cloudvox featurize --input FILE... --format aflow --output OUT.h5 [--config FILE.yaml] [flags]
    cloudvox info OUT.h5
    cloudvox fetch aflow --query "species(O),nspecies(3),Pearson_symbol_orig('cP5')" --out FILE.jsonl

The same command runs with one process on a laptop, under ``mpirun -n K`` or ``srun`` on a cluster.
Flags override the YAML config; the YAML is read with ``yaml.safe_load``.
"""
import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

from cloudvox.features import STORE_DEFAULT, STORE_ITEMS
from cloudvox.io.sources import FORMATS

log = logging.getLogger("cloudvox")


# --------------------------------------------------------------------------------------------------------
def _featurize_parser(sub) -> None:
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
    "merge_buffer_mb": (None, "merge_buffer_mb"), "merge_writers": (None, "merge_writers"),
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
    from .featurize import FeaturizeJob
    raw = read_yaml(args.config)
    for flag, (section, key) in FEATURIZE_FLAGS.items():
        value = getattr(args, flag)
        if value is None or value is False:
            continue
        target = raw if section is None else raw.setdefault(section, {})
        target[key] = value
    return FeaturizeJob.from_config(raw, command)


def on_stop_signals(callback) -> None:
    """SIGUSR1 (SLURM's time-limit warning, forwarded to every task by jobs/common.sh) and SIGTERM (scancel,
    the time limit itself): ``callback()``, and the job stops at its next safe point instead of dying."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: callback())


def log_launch() -> None:
    from .launcher import describe, launch_env
    log.info("%s", describe(launch_env()))


def watched_featurize(comm, job):
    """The featurize job's communicator under a collective-timeout watchdog (several ranks, a timeout > 0),
    its heartbeats beside the output (``.OUT.h5.watchdog/LAUNCH``); (comm, None) otherwise."""
    from .watchdog import WatchedComm, start
    if comm.Get_size() < 2 or job.collective_timeout <= 0:
        return comm, None
    output = Path(job.output)
    launch = comm.bcast(f"{os.getpid():x}-{int(time.time() * 1e6):x}" if comm.Get_rank() == 0 else None, root=0)
    watchdog = start(output.with_name(f".{output.name}.watchdog"), launch, comm.Get_rank(), comm.Get_size(),
                     job.collective_timeout)
    return WatchedComm(comm, watchdog), watchdog


def cmd_featurize(args, command: str) -> int:
    from .comm import abort_on_error, world
    from .featurize import JobError, run_featurize
    from .logs import setup_logging
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


# --------------------------------------------------------------------------------------------------------
def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="summary of a feature file: counts, parameters, failures, size")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_info)


def cmd_info(args, command: str) -> int:
    from cloudvox.features import FeatureFile
    try:
        ff = FeatureFile(args.path)
    except (OSError, ValueError, KeyError) as e:
        print(f"cloudvox info: cannot read {args.path}: {e}", file=sys.stderr)
        return 2
    s = ff.summary()
    s["failures"] = ff.failures()
    if args.json:
        print(json.dumps(s, indent=1, default=str))
        return 0
    d = s["descriptor"]
    print(f"{s['path']}: {s['structures']} structures, {s['done']} done, {s['failed']} failed, "
          f"{s['size_bytes'] / 1e6:.2f} MB")
    print(f"  descriptor: {d['mode']}, N={d['n']}, L={d['length']} A, sigma={d['sigma']} A, channels={d['channels']}")
    print(f"  species ({len(s['species'])}): {' '.join(s['species'])}")
    print(f"  properties: {', '.join(s['properties']) or '-'}")
    print(f"  made by cloudvox {s['cloudvox_version']} on {s['created']} from {', '.join(s['input']) or '-'}")
    for f in s["failures"][:50]:
        print(f"  failed: {f['source']}:{f['line']} {f['id']}: {f['reason']}")
    if len(s["failures"]) > 50:
        print(f"  ... {len(s['failures']) - 50} more failures (--json lists all)")
    return 0


# --------------------------------------------------------------------------------------------------------
def _fetch_parser(sub) -> None:
    p = sub.add_parser("fetch", help="download structures from a database into the format featurize reads")
    fsub = p.add_subparsers(dest="database", required=True)
    a = fsub.add_parser("aflow", help="an AFLUX query -> JSONL (resumable, retried, validated)")
    a.add_argument("--query", required=True, help="AFLUX matchbook, e.g. \"species(O),nspecies(3),Pearson_symbol_orig('cP5')\"")
    a.add_argument("--out", required=True, help="the JSONL file to write (resumed if its progress file exists)")
    a.add_argument("--page-size", type=int, default=1000)
    a.add_argument("--server", default=None, help="AFLUX endpoint (default https://aflow.org/API/aflux/)")
    a.add_argument("--keywords", nargs="*", default=[], help="extra keywords to request")
    a.add_argument("--max-attempts", type=int, default=6, help="attempts per page before giving up")
    a.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    a.add_argument("--min-interval", type=float, default=1.0, help="seconds between requests (be polite)")
    a.add_argument("-v", "--verbose", action="store_true")
    a.set_defaults(func=cmd_fetch_aflow)


def cmd_fetch_aflow(args, command: str) -> int:
    from cloudvox.io.aflux import DEFAULT_SERVER, KEYWORDS, AfluxClient, FetchError, fetch_aflow
    from .logs import setup_logging
    setup_logging(0, args.verbose)
    client = AfluxClient(server=args.server or DEFAULT_SERVER, timeout=args.timeout, max_attempts=args.max_attempts,
                         min_interval=args.min_interval)
    keywords = list(KEYWORDS) + [k for k in args.keywords if k not in KEYWORDS]
    try:
        summary = fetch_aflow(args.query, args.out, keywords, args.page_size, client)
    except FetchError as e:
        log.error("fetch failed: %s", e)
        return 3
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------------------------------------
def _train_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (one process, or distributed)")
    p.add_argument("model", help="which model: voxelnet or atomcloud (the registry in cloudvox/models/registry.py)")
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (a.b=value)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint_last.pt if present")
    p.add_argument("--backend", choices=["auto", "horovod", "ddp", "none"], default="auto",
                   help="data-parallel backend when several processes run (auto: Horovod if importable)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="MAE/RMSE/R2 per split and a predictions CSV")
    e.add_argument("checkpoint", help="a run directory or a checkpoint file")
    e.add_argument("data", help="a feature file (.h5)")
    e.add_argument("--rotations", type=int, default=0, help="average over K random rotations and report their spread")
    e.add_argument("--out", help="where to write predictions.csv and evaluation.json (default: the run directory)")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    r = sub.add_parser("predict", help="predictions for structure files (AFLOW JSONL, CIF, POSCAR, ...)")
    r.add_argument("checkpoint", help="a run directory or a checkpoint file")
    r.add_argument("structures", nargs="+", help="structure files: AFLOW .json/.jsonl, extxyz / ASE .db, CIF, POSCAR, ...")
    r.add_argument("--format", choices=list(FORMATS), help="input format (default: from each file's name)")
    r.add_argument("--out", help="CSV file (default: standard output)")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_predict)


def cmd_train(args, command: str) -> int:
    from cloudvox.config import load_run_config
    from cloudvox.runs import train_run
    from cloudvox.train import keep_freed_memory
    from .distributed import make_distributed, watch
    from .logs import setup_logging
    cfg = load_run_config(args.config, args.set, model=args.model)  # a typo fails here, on every rank alike
    keep_freed_memory()  # reuse the large activation blocks of every step instead of page-faulting them in
    dist = make_distributed(args.backend)
    setup_logging(dist.rank, args.verbose)
    log_launch()
    watchdog = watch(dist, Path(cfg["run_dir"]), float(cfg["train"]["collective_timeout"]))

    def install(trainer):  # every rank checkpoints at one common step and leaves cleanly
        on_stop_signals(lambda: setattr(trainer, "stop_requested", True))

    try:
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


def cmd_evaluate(args, command: str) -> int:
    from cloudvox.runs import evaluate
    from .logs import setup_logging
    setup_logging(0)
    result = evaluate(args.checkpoint, args.data, rotations=args.rotations, out_dir=args.out)
    print(json.dumps(result))
    return 0


def cmd_predict(args, command: str) -> int:
    from cloudvox.io import iter_records
    from cloudvox.runs import predict_report
    from .logs import setup_logging
    setup_logging(0)
    from cloudvox.io import format_of
    records = []
    for path in args.structures:
        records += list(iter_records(args.format or format_of(path), [path]))
    good = [r.structure for r in records if r.ok]
    for r in records:
        if not r.ok:
            log.warning("skipping %s", r.describe())
    import numpy as np
    pred, std, flags = predict_report(args.checkpoint, good)
    for s, f in zip(good, flags):
        if f:
            log.warning("%s (%s): %s", s.id, s.formula, f)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    import csv
    w = csv.writer(out)
    w.writerow(["id", "formula", "prediction", "uncertainty", "flag"])  # uncertainty: the ensemble's std
    for s, p, u, f in zip(good, pred, std, flags):
        w.writerow([s.id, s.formula, f"{p:.6f}" if np.isfinite(p) else "", f"{u:.6f}" if np.isfinite(u) else "", f])
    if args.out:
        out.close()
    return 0


# --------------------------------------------------------------------------------------------------------
def _doctor_parser(sub) -> None:
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
    from .doctor import run_doctor
    from .launcher import launch_env
    from .logs import setup_logging
    setup_logging(launch_env().rank, args.verbose)
    folder = args.folder
    if folder is None and args.config:
        from cloudvox.config import read_yaml
        raw = read_yaml(args.config)
        target = raw.get("output") if args.job == "featurize" else raw.get("run_dir")
        folder = str(Path(target).parent) if (target and args.job == "featurize") else target
    return run_doctor(Path(folder or "."), job=args.job, backend=args.backend, timeout=args.timeout)


def _show_parser(sub) -> None:
    p = sub.add_parser("show", help="figure of one structure's descriptor (cell, density, reciprocal set, voxels)")
    p.add_argument("input", nargs="?", help="AFLOW .json/.jsonl, CIF/POSCAR/XYZ, QM9 .xyz, or a feature file .h5 "
                                            "(omit with --format qm9 or prototypes for the embedded data)")
    p.add_argument("--format", choices=list(FORMATS) + ["h5"], help="default: from the file name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="which structure (0-based)")
    which.add_argument("--id", help="which structure, by id")
    p.add_argument("--descriptor", choices=["cartesian", "spherical"])
    p.add_argument("--n", type=int)
    p.add_argument("--length", type=float)
    p.add_argument("--sigma", type=float)
    p.add_argument("--channels", choices=["element", "total", "properties"])
    p.add_argument("--panel", action="append", choices=["cell", "density", "reciprocal", "voxels"],
                   help="draw only this panel (repeatable); default all")
    p.add_argument("--rotate", help="rotate G before binning: AXIS:DEGREES, e.g. z:30")
    p.add_argument("--vary", help="small multiples of the voxel panel: PARAM=v1,v2,... (sigma, length or n)")
    p.add_argument("--compare", help="original next to a transformed copy: translate:x,y,z | supercell:a,b,c | rotate:AXIS:DEG")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_show)


def _axis_rotation(spec: str):
    import numpy as np
    axis, deg = spec.split(":")
    t = np.radians(float(deg))
    c, s = np.cos(t), np.sin(t)
    k = "xyz".index(axis.strip().lower())
    R = np.eye(3)
    i, j = [a for a in range(3) if a != k]
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def _guess_format(path: str) -> str:
    """Input format from the file name: a feature file (.h5), else :func:`cloudvox.io.format_of`."""
    from cloudvox.io import format_of
    return "h5" if path.lower().endswith((".h5", ".hdf5")) else format_of(path)


def load_one(input_path, fmt, index, sid):
    """(structure, descriptor parameters of a feature file or {}) selected by index or id, or SystemExit."""
    from cloudvox.io import iter_records
    if fmt is None:
        if input_path is None:
            raise SystemExit("cloudvox show: give an input file, or --format qm9|prototypes for the embedded data")
        fmt = _guess_format(input_path)
    if fmt == "h5":
        from cloudvox.features import FeatureFile
        ff = FeatureFile(input_path)
        ids = ff.ids
        if sid is not None:
            if sid not in ids:
                raise SystemExit(f"cloudvox show: no structure with id {sid!r} in {input_path}")
            index = ids.index(sid)
        if not -ff.n <= index < ff.n:
            raise SystemExit(f"cloudvox show: index {index} out of range: {input_path} holds {ff.n} structures")
        return ff.structure(index), ff.params
    records = list(iter_records(fmt, [input_path] if input_path else None, limit=None if (sid or fmt != "qm9") else index + 1))
    good = [r for r in records if r.ok]
    if sid is not None:
        hits = [r for r in good if r.id == sid]
        if not hits:
            raise SystemExit(f"cloudvox show: no structure with id {sid!r} in {input_path or fmt}")
        return hits[0].structure, {}
    if not -len(good) <= index < len(good):
        raise SystemExit(f"cloudvox show: index {index} out of range: {input_path or fmt} holds {len(good)} structures")
    return good[index].structure, {}


def cmd_show(args, command: str) -> int:
    from cloudvox.descriptors import ReciprocalVoxelizer
    from cloudvox import show
    structure, params = load_one(args.input, args.format, args.index, args.id)
    from cloudvox.config import descriptor_defaults
    defaults = descriptor_defaults()  # the voxelizer's own defaults: one place
    d = {k: defaults[k] for k in ("sigma", "length", "n", "mode", "channels")}
    d.update({k: params[k] for k in ("sigma", "length", "n", "mode", "channels") if k in params})
    for flag, key in (("descriptor", "mode"), ("n", "n"), ("length", "length"), ("sigma", "sigma"), ("channels", "channels")):
        if getattr(args, flag) is not None:
            d[key] = getattr(args, flag)
    if params.get("channels") == "properties" and d["channels"] == "properties":
        d["properties"] = tuple(params["properties"])
    vox = ReciprocalVoxelizer(**d)
    R = _axis_rotation(args.rotate) if args.rotate else None
    if args.vary:
        key, values = args.vary.split("=")
        values = [float(v) if key != "n" else int(v) for v in values.split(",")]
        voxs = [ReciprocalVoxelizer(**dict(d, **{key: v})) for v in values]
        fig = show.compare_figure([structure] * len(values), [f"{key} = {v:g}" for v in values], voxs)
    elif args.compare:
        kind, _, value = args.compare.partition(":")
        if kind == "translate":
            other, label, rot = structure.translated([float(x) for x in value.split(",")]), f"translated by ({value}) Å", None
        elif kind == "supercell":
            other, label, rot = structure.supercell([int(x) for x in value.split(",")]), f"{value.replace(',', 'x')} supercell", None
        elif kind == "rotate":
            other, label, rot = structure, f"rotated {value.replace(':', ' by ')}°", _axis_rotation(value)
        else:
            raise SystemExit(f"cloudvox show: unknown --compare {kind!r}")
        fig = show.compare_figure([structure, other], ["original", label], [vox, vox], [None, rot])
    else:
        fig = show.figure(structure, vox, args.panel or show.PANELS, R)
    show.save(fig, args.out)
    print(json.dumps(dict(out=args.out, id=structure.id, formula=structure.formula, descriptor=vox.params)))
    return 0


# --------------------------------------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad invocation is one line on stderr (what is wrong and where to look), exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from cloudvox import __version__
    ap = OneLineParser(prog="cloudvox", description="3D learning representations of atomic structures.")
    ap.add_argument("--version", action="version", version=f"cloudvox {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _featurize_parser(sub)
    _info_parser(sub)
    _fetch_parser(sub)
    _train_parsers(sub)
    _doctor_parser(sub)
    _show_parser(sub)
    return ap


def user_errors() -> tuple:
    """Errors a user can fix (bad config, flag, input path, data mismatch): reported in one line, exit 2.
    Anything else is a bug: its traceback and one line, exit 1."""
    from cloudvox.errors import UserError
    return UserError, FileNotFoundError, IsADirectoryError, PermissionError


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, "cloudvox " + " ".join(shlex.quote(a) for a in argv))
    except user_errors() as e:
        from .launcher import launch_env
        if launch_env().rank == 0:  # every rank meets the same user error: one report
            if getattr(args, "verbose", False):
                import traceback
                traceback.print_exc()
            sys.stderr.write(f"cloudvox {args.command}: {e}" + ("" if getattr(args, "verbose", False) else
                                                                  " (-v shows the traceback)") + "\n")
        return 2
    except Exception as e:  # a bug: the traceback, then what to report
        import traceback
        traceback.print_exc()
        sys.stderr.write(f"cloudvox {args.command}: internal error ({type(e).__name__}), a bug in cloudvox: "
                         "please report it with the traceback above\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
