"""Readers: AFLOW (AFLUX JSON / JSONL), pymatgen-readable files, the AFLOW prototype library, QM9."""
from .records import InputError, Record, collect
from .aflow import iter_aflow, read_aflow, structure_from_aflow

__all__ = ["InputError", "Record", "collect", "iter_aflow", "read_aflow", "structure_from_aflow"]
