"""Figures: :mod:`.structure` (one structure's density, reciprocal set and voxels: ``cloudvox show``) and
:mod:`.runs` (a run's learning curve and parity plots)."""
