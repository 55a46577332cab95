"""Communicators: mpi4py's when the job runs under MPI, a serial stand-in otherwise.

Nothing here runs at import time; callers obtain a communicator with :func:`world` and pass it on.
"""
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

    Under MPI it is one int64 in a one-sided window on rank 0 (MPI_Fetch_and_op, passive target); with a
    SerialComm it is a plain integer. Collective to create and to free.
    """

    def __init__(self, comm):
        self.comm = comm
        self._local = 0
        self._win = None
        if is_mpi(comm) and comm.Get_size() > 1:
            from mpi4py import MPI
            import numpy as np
            self._np, self._MPI = np, MPI
            size = 8 if comm.Get_rank() == 0 else 0
            self._win = MPI.Win.Allocate(size, 8, comm=comm)
            if comm.Get_rank() == 0:
                self._win.Lock(0, MPI.LOCK_EXCLUSIVE)
                np.frombuffer(self._win.tomemory(), dtype=np.int64)[:] = 0
                self._win.Unlock(0)
            comm.Barrier()

    def next(self) -> int:
        if self._win is None:
            self._local += 1
            return self._local - 1
        np, MPI = self._np, self._MPI
        one, out = np.ones(1, np.int64), np.zeros(1, np.int64)
        self._win.Lock(0, MPI.LOCK_SHARED)
        self._win.Fetch_and_op(one, out, 0, 0, MPI.SUM)
        self._win.Unlock(0)
        return int(out[0])

    def free(self) -> None:
        if self._win is not None:
            self._win.Free()
            self._win = None


def abort_on_error(comm, exc: BaseException) -> None:
    """Log an exception of this rank on stderr and bring the whole job down (MPI_Abort), never hang."""
    rank = comm.Get_rank()
    log.critical("rank %d failed: %s: %s", rank, type(exc).__name__, exc, exc_info=exc)
    sys.stderr.flush()
    if comm.Get_size() > 1:
        comm.Abort(1)
