"""cloudvox: reciprocal-space voxel descriptors and 3D models for atomic structures.

The package is pure (numerics, readers, models, single-process training); parallel execution lives in
:mod:`hpc`, which imports cloudvox and never the reverse.
"""
__version__ = "0.1.0"
