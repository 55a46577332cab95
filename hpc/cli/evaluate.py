"""Errors per split and a predictions CSV for a run on a feature file (``cloudvox evaluate``)."""
import json


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="MAE/RMSE/R2 per split and a predictions CSV")
    e.add_argument("checkpoint", help="a run directory or a checkpoint file")
    e.add_argument("data", help="a feature file (.h5)")
    e.add_argument("--rotations", type=int, default=0, help="average over K random rotations and report their spread")
    e.add_argument("--out", help="where to write predictions.csv and evaluation.json (default: the run directory)")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args, command: str) -> int:
    from cloudvox.runs import evaluate
    from ..logs import setup_logging
    setup_logging(0)
    result = evaluate(args.checkpoint, args.data, rotations=args.rotations, out_dir=args.out)
    print(json.dumps(result))
    return 0
