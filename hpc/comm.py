"""Communicators: mpi4py's when the job runs under MPI, a serial stand-in otherwise.

Nothing here runs at import time; callers obtain a communicator with :func:`world` and pass it on.
"""
import collections
import contextlib
import logging
import os
import sys
from typing import Any, List

from .launcher import mpi_launched

log = logging.getLogger(__name__)



class SerialComm:
    """The subset of an mpi4py communicator that cloudvox uses, for one process without MPI."""
    rank = 0
    size = 1

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> List[Any]:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> List[Any]:
        return [obj]

    def allreduce(self, obj: Any, op=None) -> Any:
        return obj

    def Barrier(self) -> None:
        pass

    barrier = Barrier

    def Abort(self, code: int = 1) -> None:
        os._exit(code)


def world(require_mpi: bool = False):
    """MPI.COMM_WORLD if mpi4py is importable (a single rank on a laptop included), else a SerialComm."""
    try:
        from mpi4py import MPI
    except ImportError:
        if require_mpi or mpi_launched():
            raise RuntimeError("this job was started by an MPI launcher but mpi4py is not installed") from None
        return SerialComm()
    return MPI.COMM_WORLD


def is_mpi(comm) -> bool:
    return not isinstance(comm, SerialComm)


class WorkCounter:
    """A job-wide counter that hands out 0, 1, 2, ... once each, to whichever rank asks first.

    Rank 0 holds the count and answers the other ranks' requests by point-to-point messages on a duplicate of
    ``comm``, each time it asks for a number itself (once per block) and, once it has none left, until every
    rank has left. Each rank starts with ``depth`` numbers of its own (rank r: r * depth ...), and asks for
    another whenever it takes one, so ``depth`` numbers are always on their way or waiting: the answers, which
    rank 0 gives only between its own blocks, arrive while the rank works. At the end a rank holds at most
    ``depth`` numbers it has not started, the only imbalance this adds. One-sided MPI (a window on rank 0)
    would need no answering, but Open MPI 4.1 offers no window between nodes over TCP under
    MPI_THREAD_MULTIPLE (osc/rdma needs RDMA, osc/ucx the UCX pml, osc/pt2pt refuses the thread level). With a
    SerialComm it is a plain integer. Collective to create and to :meth:`free`.
    """
    REQUEST, ANSWER, LEAVE = 71, 72, 73

    def __init__(self, comm, depth: int = 2):
        self._local = 0
        self._comm = None
        self._report = (0, 0)
        # a WatchedComm's collective timeout covers the waits for an answer and for the others to leave
        self._waiting = getattr(comm, "waiting", contextlib.nullcontext)
        if is_mpi(comm) and comm.Get_size() > 1:
            self._comm = comm.Dup()
            self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
            self._depth = max(1, int(depth))
            self._pending = collections.deque()  # a non-root rank's requests in flight (receives of their answers)
            self._left = 0  # rank 0: how many other ranks have left
            # each rank's first numbers are fixed (rank r: r * depth ...), so nobody waits for rank 0's first
            # block, which is the slowest (a rank that waited for it lost most of a second here)
            self._ready = collections.deque(self._rank * self._depth + i for i in range(self._depth))
            self._local = self._size * self._depth
        self._reports = {0: (0, 0)}  # rank 0: each rank's last report (units done, failures), see totals()

    def next(self, done: int = 0, failures: int = 0) -> int:
        """The next number. ``done``, ``failures``: this rank's totals so far, which ride on its requests to
        rank 0 (:meth:`totals`: the job's progress, for rank 0's progress lines)."""
        self._report = (int(done), int(failures))
        if self._comm is None:
            self._reports[0] = self._report
            return self._take()
        if self._rank == 0:
            self._reports[0] = self._report
            self._serve(block=False)
            return self._ready.popleft() if self._ready else self._take()
        if self._ready:
            k = self._ready.popleft()
        else:
            with self._waiting():
                k = self._pending.popleft().wait()
        self._ask()  # the next numbers travel while this rank works on k
        return k

    def totals(self):
        """Rank 0: (units done, failures) summed over the ranks' latest reports (a request behind at most)."""
        return tuple(int(sum(v)) for v in zip(*self._reports.values()))

    def _take(self) -> int:
        self._local += 1
        return self._local - 1

    def _ask(self) -> None:
        self._comm.send(self._report, dest=0, tag=self.REQUEST)
        self._pending.append(self._comm.irecv(source=0, tag=self.ANSWER))

    def _serve(self, block: bool) -> None:
        """Rank 0: answer every message that has arrived; with ``block``, wait for one first."""
        from mpi4py import MPI
        status = MPI.Status()
        while block or self._comm.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            block = False
            report = self._comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            if report is not None:
                self._reports[status.Get_source()] = report
            if status.Get_tag() == self.REQUEST:
                self._comm.send(self._take(), dest=status.Get_source(), tag=self.ANSWER)
            else:
                self._left += 1

    def free(self) -> None:
        """Collective: every rank leaves (a number still in flight is dropped; its block stays pending)."""
        if self._comm is None:
            return
        with self._waiting():
            if self._rank == 0:
                while self._left < self._size - 1:
                    self._serve(block=True)
            else:
                while self._pending:
                    self._pending.popleft().wait()
                self._comm.send(self._report, dest=0, tag=self.LEAVE)
            self._comm.Barrier()
        self._comm.Free()
        self._comm = None


def abort_on_error(comm, exc: BaseException) -> None:
    """Log an exception of this rank on stderr and bring the whole job down (MPI_Abort), never hang."""
    rank = comm.Get_rank()
    log.critical("rank %d failed: %s: %s", rank, type(exc).__name__, exc, exc_info=exc)
    sys.stderr.flush()
    if comm.Get_size() > 1:
        comm.Abort(1)
