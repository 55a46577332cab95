"""Progress of a long loop: a tqdm bar on a terminal, one log line at a steady interval in a batch log.

tqdm draws nothing when its output is not a terminal (``disable=None``), which is where a SLURM job writes:
without these lines a million-record featurize job says nothing between its first line and its summary.

    bar = Progress(total=len(blocks), what="featurize", unit="blocks", every_s=60)
    bar.update(1, failures=3)      # per unit done
    bar.close()

A line reads ``featurize: 1200/3500 blocks (34.3%), 95.2 blocks/s, ETA 0:00:24, failures 3``.
Only the process that shows progress (rank 0) makes one; the others pass ``enabled=False``.
"""
import logging
import sys
import time
from datetime import timedelta
from typing import Optional

log = logging.getLogger("cloudvox.progress")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``total`` units of ``what``; ``initial`` already done (a resumed job); ``every_s`` seconds between log
    lines off a terminal (0: no lines); ``terminal``: override the detection (tests)."""

    def __init__(self, total: int, what: str, unit: str = "it", initial: int = 0, every_s: float = 60.0,
                 enabled: bool = True, terminal: Optional[bool] = None, leave: bool = True):
        self.total, self.what, self.unit = int(total), what, unit
        self.n = self.start_n = int(initial)
        self.every_s = float(every_s)
        self.failures: Optional[int] = None  # shown once counted (featurize); training has none
        self._t0 = self._last = time.monotonic()
        self._bar = None
        self.lines = 0
        self.enabled = enabled
        if not enabled:
            return
        terminal = _is_terminal(sys.stderr) if terminal is None else terminal
        if terminal:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, initial=self.n, unit=f" {unit}", desc=what, leave=leave)

    def update(self, k: int = 1, failures: Optional[int] = None, **postfix) -> None:
        """``k`` more units done; ``failures``: the count so far (shown in the line)."""
        if not self.enabled:
            return
        self.n += k
        if failures is not None:
            self.failures = int(failures)
        if self._bar is not None:
            self._bar.update(k)
            if postfix:
                self._bar.set_postfix(**postfix, refresh=False)
            return
        now = time.monotonic()
        if self.every_s > 0 and now - self._last >= self.every_s:
            self._last = now
            self.log_line(now, **postfix)

    def set(self, n: int, failures: Optional[int] = None) -> None:
        """The count so far (``n`` units done in all), e.g. summed over ranks."""
        self.update(n - self.n, failures)

    def line(self, now: Optional[float] = None, **postfix) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._t0, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        text = f"{self.what}: {self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.n / self.total:.1f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if rate > 0 and self.total >= self.n:
            text += f", ETA {timedelta(seconds=round((self.total - self.n) / rate))}"
        if self.failures is not None:
            text += f", failures {self.failures}"
        for k, v in postfix.items():
            text += f", {k} {v}"
        return text

    def log_line(self, now: Optional[float] = None, **postfix) -> None:
        self.lines += 1
        log.info("%s", self.line(now, **postfix))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
