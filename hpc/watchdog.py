"""A hung rank ends the job: the collective timeout of featurize and training, for every backend alike.

Each rank runs one :class:`Watchdog` thread. Every ``interval`` seconds it writes a small heartbeat file
``FOLDER/rank-R.json`` (host, pid, a beat that grows each time, the rank's progress count and whether it is
waiting in a collective), and reads the other ranks' files. The main thread only sets two attributes: it
counts progress (one step, one block) and marks the time it spends waiting in a collective (:meth:`waiting`).

A rank that has waited in one collective for ``timeout`` seconds looks at the others, by its own clock
(how long each file has gone unchanged; no clock is compared across nodes):

* a rank whose heartbeat has not changed for ``timeout``: its process does not run (SIGSTOP, a dead node, a
  process the kernel froze) - its watchdog thread would otherwise have written;
* a rank that is alive, not waiting, and whose progress has not moved for ``timeout``: stuck in its own work
  (a deadlock, an endless loop);
* a rank that is alive and progressing is slow, not hung (a legitimately long block or step): keep waiting.

If any rank is hung, the lowest waiting rank that is not hung logs one line naming the missing rank(s) and
their hosts, and every waiting rank exits with :data:`EXIT_CODE`: the launcher (srun --kill-on-bad-exit,
mpirun, torchrun) then ends the rest of the job. If every rank waits, the collective itself is stuck (the
network), and that is the line. Why a watchdog of our own and not the backends' timeouts: gloo's timeout
raises without naming the peer (and the fused CPU path polls instead of blocking), Horovod's stall check
names ranks but only on rank 0 and only after its own shutdown delay, Open MPI has none; one mechanism
covers Horovod, DDP (gloo, NCCL) and the featurize job's MPI alike, and works when rank 0 is the one
stopped. It needs the folder on a file system every node sees, as the run directory and the featurize
shards already are.
"""
import json
import logging
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

log = logging.getLogger(__name__)
EXIT_CODE = 124  # as timeout(1): the job ended because a rank did not reach a collective in time
FOLDER = ".watchdog"


class Watchdog:
    """The heartbeat and the timeout check of one rank; :meth:`start` runs the thread, :meth:`close` ends it.

    ``folder``: a per-launch folder every rank of the job writes in (see :func:`start`);
    ``timeout``: seconds (0 or less: no watchdog); ``interval``: seconds between beats (default timeout / 20,
    between 0.5 and 10)."""

    def __init__(self, folder: Path, rank: int, size: int, timeout: float, interval: Optional[float] = None,
                 exit=os._exit):
        self.folder, self.rank, self.size, self.timeout = Path(folder), int(rank), int(size), float(timeout)
        self.interval = interval if interval is not None else min(10.0, max(0.5, self.timeout / 20))
        self.host = socket.gethostname()
        self.progress = 0  # the main thread counts steps / blocks here
        self.waiting_since: Optional[float] = None  # monotonic time the main thread entered a collective
        self.done = False
        self._beat = 0
        self._seen: Dict[int, Dict] = {}  # rank -> last record, when its beat / progress last changed (our clock)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._exit = exit

    # the main thread --------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.timeout > 0 and self.size > 1

    def start(self) -> "Watchdog":
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write()
            self._thread = threading.Thread(target=self._run, name="cloudvox-watchdog", daemon=True)
            self._thread.start()
        return self

    @contextmanager
    def waiting(self):
        """Around a collective: the time inside counts towards the timeout; leaving it is progress."""
        self.waiting_since = time.monotonic()
        try:
            yield
        finally:
            self.waiting_since = None
            self.progress += 1

    def advance(self, n: int = 1) -> None:
        self.progress += n

    def close(self) -> None:
        """This rank has finished: it no longer counts as hung to the others."""
        self.done = True
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
            self._write()

    # the thread -------------------------------------------------------------------------------------
    def _write(self) -> None:
        self._beat += 1
        record = dict(rank=self.rank, host=self.host, pid=os.getpid(), beat=self._beat, progress=self.progress,
                      waiting=self.waiting_since is not None, done=self.done)
        path = self.folder / f"rank-{self.rank}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as e:  # a full or vanished file system must not end a healthy job by itself
            log.debug("watchdog heartbeat not written: %s", e)

    def _read(self, now: float) -> None:
        for r in range(self.size):
            if r == self.rank:
                continue
            try:
                record = json.loads((self.folder / f"rank-{r}.json").read_text())
            except (OSError, ValueError):
                record = None
            last = self._seen.get(r)
            if last is None:  # first look: the clocks start now (a rank that never wrote is judged from here)
                self._seen[r] = dict(record=record, beat_at=now, progress_at=now)
                continue
            old = last["record"] or {}
            if record is not None and record.get("beat") != old.get("beat"):
                last["beat_at"] = now
            if record is not None and (record.get("progress") != old.get("progress") or record.get("waiting")):
                last["progress_at"] = now
            if record is not None:
                last["record"] = record

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()
            now = time.monotonic()
            self._read(now)
            since = self.waiting_since
            if since is None or now - since < self.timeout:
                continue
            verdict = self.verdict(now)
            if verdict is not None:
                self._fire(*verdict)
                return

    def verdict(self, now: float):
        """(line, logger rank) when the job should end, else None. Pure in the records seen so far."""
        hung: List[str] = []
        waiting = [self.rank]
        for r, seen in sorted(self._seen.items()):
            rec = seen["record"] or {}
            if rec.get("done"):
                continue
            where = f"rank {r} (host {rec.get('host', '?')}, pid {rec.get('pid', '?')})"
            if now - seen["beat_at"] >= self.timeout:
                what = "never started its watchdog" if not rec else "does not respond (stopped, dead, or its node lost)"
                hung.append(f"{where} {what}: no heartbeat for {now - seen['beat_at']:.0f} s")
            elif rec.get("waiting"):
                waiting.append(r)
            elif now - seen["progress_at"] >= self.timeout:
                hung.append(f"{where} is alive but made no progress for {now - seen['progress_at']:.0f} s")
        others = [r for r in range(self.size)
                  if r != self.rank and not (self._seen.get(r, {}).get("record") or {}).get("done")]
        if hung:
            return (f"collective timeout ({self.timeout:.0f} s): rank {self.rank} (host {self.host}) waited for "
                    + "; ".join(hung) + "; ending the job", min(waiting))
        if not others:
            return (f"collective timeout ({self.timeout:.0f} s): rank {self.rank} (host {self.host}) waits in a "
                    "collective that every other rank has already finished; ending the job", self.rank)
        if sorted(waiting) == sorted([self.rank] + others):
            return (f"collective timeout ({self.timeout:.0f} s): every rank has waited in a collective for "
                    f"{self.timeout:.0f} s (the collective itself hangs: the network?); ending the job", min(waiting))
        return None  # someone is still working and progressing: slow, not hung

    def _fire(self, line: str, logger_rank: int) -> None:
        if self.rank != logger_rank:  # let that rank's line out first: the launcher ends the job on its exit;
            time.sleep(2 * self.interval + 1.0)  # still here (it had not timed out yet): say it ourselves
        log.critical("%s", line)
        for h in logging.getLogger().handlers:
            h.flush()
        self._exit(EXIT_CODE)


def start(root: Path, launch_id: str, rank: int, size: int, timeout: float) -> Watchdog:
    """This rank's watchdog, its heartbeats in ``ROOT/LAUNCH_ID`` (an id every rank of this launch agreed on).
    Rank 0 first removes every other launch's folder under ``root``: a rank of an earlier launch must never
    look alive or hung to this one."""
    root = Path(root)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            if old.name != launch_id:
                shutil.rmtree(old, ignore_errors=True)
    return Watchdog(root / launch_id, rank, size, timeout).start()


class WatchedComm:
    """An mpi4py communicator whose blocking calls count as waiting in a collective for ``watchdog``; every
    other attribute is the communicator's own."""
    BLOCKING = ("Barrier", "barrier", "bcast", "allgather", "gather", "allreduce", "send", "recv")

    def __init__(self, comm, watchdog: Watchdog):
        self._comm, self.watchdog = comm, watchdog
        for name in self.BLOCKING:
            fn = getattr(comm, name)
            setattr(self, name, self._watched(fn))

    def _watched(self, fn):
        def call(*args, **kwargs):
            with self.watchdog.waiting():
                return fn(*args, **kwargs)
        return call

    def waiting(self):
        return self.watchdog.waiting()

    def progress(self) -> None:
        self.watchdog.advance()

    def __getattr__(self, name):
        return getattr(self._comm, name)
