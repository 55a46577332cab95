"""Parallel HDF5 helpers (h5py with the mpio driver), usable serially too.

h5py skips writes of empty selections, which hangs a collective write when some rank has no rows (h5py
issue #965); :func:`write_rows` goes through the low-level API so that every rank takes part.
"""
from typing import Optional

import numpy as np


def has_parallel_hdf5() -> bool:
    """Whether h5py was built against a parallel (MPI) HDF5."""
    try:
        import h5py
    except ImportError:
        return False
    return bool(h5py.get_config().mpi)


def open_file(path, mode: str, comm=None):
    """An h5py File: with the mpio driver on ``comm`` (collective open) or serial when comm is None."""
    import h5py
    if comm is None:
        return h5py.File(path, mode)
    return h5py.File(path, mode, driver="mpio", comm=comm)


def write_rows(dset, start: int, data: Optional[np.ndarray], collective: bool) -> None:
    """Write ``data`` into rows ``start : start + len(data)`` of ``dset`` (first axis).

    collective: every rank of the file's communicator calls this for the dataset, with or without rows
    (required for filtered/compressed datasets in parallel HDF5).
    """
    n = 0 if data is None else len(data)
    if dset.shape[0] == 0:  # nothing to write on any rank (an empty dataset has no storage)
        return
    if not collective:
        if n:
            dset[start:start + n] = data
        return
    import h5py
    tail = tuple(dset.shape[1:])
    fspace = dset.id.get_space()
    if n == 0:
        fspace.select_none()
        mspace = h5py.h5s.create_simple((1,) + tail)
        mspace.select_none()
        buf = np.zeros((1,) + tail, dtype=dset.dtype)
    else:
        fspace.select_hyperslab((start,) + (0,) * len(tail), (n,) + tail)
        mspace = h5py.h5s.create_simple((n,) + tail)
        buf = np.ascontiguousarray(data, dtype=dset.dtype)
    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
    dset.id.write(mspace, fspace, buf, dxpl=dxpl)
