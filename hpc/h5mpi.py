"""HDF5 files as cloudvox writes them (h5py), and whether h5py has parallel HDF5 (the mpio driver)."""
def has_parallel_hdf5() -> bool:
    """Whether h5py was built against a parallel (MPI) HDF5."""
    try:
        import h5py
    except ImportError:
        return False
    return bool(h5py.get_config().mpi)


LIBVER = ("v110", "latest")  # files written: HDF5 1.10 format, whose chunk index for fixed-size datasets is a
# fixed array (no B-tree: with the 1.8 format a parallel merge of 1M structures inserted ~100k chunks into
# v1 B-trees, each insert a metadata sync point between the ranks, and stalled). Read by HDF5 >= 1.10.


def open_file(path, mode: str, comm=None):
    """An h5py File (new files in the :data:`LIBVER` format): with the mpio driver on ``comm`` (collective
    open), or serial when comm is None."""
    import h5py
    kw = dict(libver=LIBVER) if mode in ("w", "w-", "x") else {}
    if comm is None:
        return h5py.File(path, mode, **kw)
    return h5py.File(path, mode, driver="mpio", comm=comm, **kw)
