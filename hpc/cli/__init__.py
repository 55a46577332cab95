"""The ``cloudvox`` command line: one console script, one subcommand per job.

    cloudvox featurize --input FILE... --format aflow --output OUT.h5 [--config FILE.yaml] [flags]
    cloudvox info OUT.h5
    cloudvox fetch aflow --query "species(O),nspecies(3),Pearson_symbol_orig('cP5')" --out FILE.jsonl

The same command runs with one process on a laptop, under ``mpirun -n K`` or ``srun`` on a cluster.
Flags override the YAML config; the YAML is read with ``yaml.safe_load``. Each subcommand is one module of
this package (its ``add_parser(sub)`` and its ``cmd_*`` function); this one builds the parser and reports
errors: a :class:`cloudvox.errors.UserError` in one line (exit 2), anything else as a bug (exit 1).
"""
import argparse
import shlex
import sys
from typing import List, Optional

from . import doctor, evaluate, featurize, fetch, info, predict, show, train

COMMANDS = (featurize, info, fetch, train, evaluate, predict, doctor, show)  # each: add_parser(sub)


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
    for command in COMMANDS:
        command.add_parser(sub)
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
        from ..launcher import launch_env
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

