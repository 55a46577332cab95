"""Predictions for structure files (``cloudvox predict``)."""
import sys

from cloudvox.io.sources import FORMATS

from .common import log


def add_parser(sub) -> None:
    r = sub.add_parser("predict", help="predictions for structure files (AFLOW JSONL, CIF, POSCAR, ...)")
    r.add_argument("checkpoint", help="a run directory or a checkpoint file")
    r.add_argument("structures", nargs="+", help="structure files: AFLOW .json/.jsonl, extxyz / ASE .db, CIF, POSCAR, ...")
    r.add_argument("--format", choices=list(FORMATS), help="input format (default: from each file's name)")
    r.add_argument("--out", help="CSV file (default: standard output)")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_predict)


def cmd_predict(args, command: str) -> int:
    from cloudvox.io import iter_records
    from cloudvox.runs import predict_report
    from ..logs import setup_logging
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
