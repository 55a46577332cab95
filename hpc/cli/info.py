"""Summary of a feature file (``cloudvox info``)."""
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summary of a feature file: counts, parameters, failures, size")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_info)


def cmd_info(args, command: str) -> int:
    from cloudvox.featurefile import FeatureFile
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
