"""Download AFLOW entries through AFLUX (``cloudvox fetch aflow``)."""
import json

from .common import log


def add_parser(sub) -> None:
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
    from cloudvox.io.aflux_client import DEFAULT_SERVER, KEYWORDS, AfluxClient, FetchError, fetch_aflow
    from ..logs import setup_logging
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
