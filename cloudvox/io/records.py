"""What readers yield: a structure or the reason a record could not become one."""
import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional

from ..errors import UserError
from ..structure import Structure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One input record. Exactly one of ``structure`` and ``error`` is set.

    source: file path; line: 1-based line (JSONL) or item number (JSON list, CSV row, file index);
    id: the structure's id where known (AFLOW auid, QM9 index, file name).
    """
    source: str
    line: int
    id: str
    structure: Optional[Structure] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.structure is not None

    def describe(self) -> str:
        return f"{self.source}:{self.line} ({self.id or 'no id'}): {self.error}"


class InputError(UserError, ValueError):
    """A bad record met in strict mode; the message names the file, line and structure."""


def collect(records: Iterable[Record], strict: bool = False, errors: Optional[List[Record]] = None) -> List[Structure]:
    """Structures of the good records. Bad ones are logged and appended to ``errors``; strict raises on the first."""
    out = []
    for r in records:
        if r.ok:
            out.append(r.structure)
            continue
        if strict:
            raise InputError(r.describe())
        log.warning("skipping bad record %s", r.describe())
        if errors is not None:
            errors.append(r)
    return out

