"""The errors a user can fix, apart from bugs.

A :class:`UserError` names what is wrong with something the user gave (a config value, a flag, a file, the
data) and how to fix it: the CLI reports it in one line and exits with status 2 (``-v`` shows the
traceback). Any other exception is a bug: the CLI keeps its traceback and exits with status 1.
"""
import difflib
from typing import Sequence


class UserError(Exception):
    """Something the user gave is wrong; the message says what and how to fix it."""


class DataError(UserError, ValueError):
    """The data do not fit what is asked of them (failed structures, channels or parameters that differ
    from the model's, a grouping field the file does not have)."""


class FormatError(UserError, ValueError):
    """A file is not what it should be: not a feature file or checkpoint, a newer format version, or a
    part of it missing."""


class ConfigError(UserError, ValueError):
    """A config value or flag is wrong (unknown key or choice, value out of range)."""


def nearest(key: str, valid: Sequence[str], what: str = "keys") -> str:
    """'did you mean X?' for the closest valid name, else the list of valid ``what`` (an error's fix)."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid {what}: {', '.join(sorted(valid))}"
