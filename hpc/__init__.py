"""Parallel execution of cloudvox: MPI featurization into parallel HDF5 and distributed training.

Communicators are always passed in as arguments; importing this package starts nothing.
"""
