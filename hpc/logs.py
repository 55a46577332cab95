"""Rank-aware logging: rank 0 reports progress; other ranks stay quiet unless something fails."""
import logging
import sys


def setup_logging(rank: int = 0, verbose: bool = False) -> None:
    level = (logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING
    fmt = "%(asctime)s %(levelname)s " + (f"[rank {rank}] " if rank else "") + "%(name)s: %(message)s"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
