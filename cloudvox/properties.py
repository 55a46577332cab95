"""Property names and units, defined once (as schnetpack's ``properties.py``).

Every structure property that cloudvox reads is stored under one of these names, in the unit given here.
Energies are in eV; :data:`KCAL_PER_MOL_PER_EV` converts at training time where a config asks for kcal/mol.
"""
from typing import Dict

HARTREE_EV = 27.211386245988  # eV per Hartree (CODATA 2018)
KCAL_PER_MOL_PER_EV = 23.060547830619  # kcal/mol per eV
BOHR_ANGSTROM = 0.529177210903

# AFLOW (names are AFLOW's own keywords)
ENTHALPY_ATOM = "enthalpy_atom"  # eV/atom
ENTHALPY_FORMATION_ATOM = "enthalpy_formation_atom"  # eV/atom

# QM9 (names as in the QM9 paper / schnetpack)
MU, ALPHA = "mu", "alpha"  # Debye, bohr^3
HOMO, LUMO, GAP = "homo", "lumo", "gap"  # eV
R2, ZPVE = "r2", "zpve"  # bohr^2, eV
U0, U, H, G = "U0", "U", "H", "G"  # eV: internal energy at 0 K and 298.15 K, enthalpy and free energy at 298.15 K
CV = "Cv"  # cal/(mol K)
ROT_A, ROT_B, ROT_C = "A", "B", "C"  # GHz

UNITS: Dict[str, str] = {
    ENTHALPY_ATOM: "eV/atom", ENTHALPY_FORMATION_ATOM: "eV/atom",
    MU: "Debye", ALPHA: "bohr^3", HOMO: "eV", LUMO: "eV", GAP: "eV", R2: "bohr^2", ZPVE: "eV",
    U0: "eV", U: "eV", H: "eV", G: "eV", CV: "cal/(mol K)", ROT_A: "GHz", ROT_B: "GHz", ROT_C: "GHz",
}

# the 15 numbers on line 2 of an original QM9 .xyz file, after "gdb <index>", with their factor to our unit
QM9_XYZ_FIELDS = ((ROT_A, 1.0), (ROT_B, 1.0), (ROT_C, 1.0), (MU, 1.0), (ALPHA, 1.0), (HOMO, HARTREE_EV),
                  (LUMO, HARTREE_EV), (GAP, HARTREE_EV), (R2, 1.0), (ZPVE, HARTREE_EV), (U0, HARTREE_EV),
                  (U, HARTREE_EV), (H, HARTREE_EV), (G, HARTREE_EV), (CV, 1.0))

# qm9pack CSV columns -> (our name, factor)
QM9_CSV_COLUMNS = {
    "RotA_GHz": (ROT_A, 1.0), "RotB_GHz": (ROT_B, 1.0), "RotC_GHz": (ROT_C, 1.0), "Dipole_debye": (MU, 1.0),
    "Polarizability_bohr3": (ALPHA, 1.0), "HOMO_au": (HOMO, HARTREE_EV), "LUMO_au": (LUMO, HARTREE_EV),
    "HOMO_LUMO_gap_au": (GAP, HARTREE_EV), "R2_bohr2": (R2, 1.0), "ZPVE_au": (ZPVE, HARTREE_EV),
    "InternalEnergy_0K_au": (U0, HARTREE_EV), "InternalEnergy_298K_au": (U, HARTREE_EV),
    "Enthalphy_298K_au": (H, HARTREE_EV), "GibbsFreeEnergy_298K_au": (G, HARTREE_EV),
    "Heatcapacity_Cv_cal_mol_K": (CV, 1.0),
}

# ------------------------------------------------------------------------------------------------------
# batch keys: what a collated batch dict holds (one definition, used by datasets, models and the trainer)
# ------------------------------------------------------------------------------------------------------
INDEX = "index"  # (B,) int64 structure indices in the file
TARGET = "target"  # (B,) normalised target
VOXELS = "voxels"  # (B, c, N, N, N) float32 voxels (c: the structure's own channels when CHANNEL_IDS is set)
CHANNEL_IDS = "channel_ids"  # (B, c) int64 channel of each voxel plane, -1 for padding; absent: dense input
RECIPROCAL = "reciprocal"  # a cloudvox.binning.ReciprocalBatch, binned on the device
POSITIONS = "positions"  # (A, 3) Cartesian positions, Angstrom, all atoms of the batch
NUMBERS = "numbers"  # (A,) int64 atomic numbers
ATOM_STRUCTURE = "atom_structure"  # (A,) int64 structure of each atom
LATTICE = "lattice"  # (B, 3, 3) float, NaN for molecules
NATOMS = "natoms"  # (B,) int64
EDGE_SRC = "edge_src"  # (E,) int64 atom (batch index) each neighbour edge starts at
EDGE_DST = "edge_dst"  # (E,) int64 atom it ends at
EDGE_SHIFT = "edge_shift"  # (E, 3) float Cartesian lattice shift of the end atom's image, Angstrom

# ------------------------------------------------------------------------------------------------------
# item keys: what a dataset item holds before collation (VoxelDataset)
# ------------------------------------------------------------------------------------------------------
ITEM_CHANNELS = "channels"  # (c,) int16 the structure's channels, indices into the model's channel list
VOXEL_INDEX = "voxel_index"  # (K,) int32 occupied flat voxels
VOXEL_VALUES = "voxel_values"  # (c, K) float32 their values, 1/Angstrom^3
GRID = "n"  # int voxels per axis N
RECIPROCAL_G = "G"  # (P, 3) float32 reciprocal vectors, 1/Angstrom
RECIPROCAL_AMP = "amp"  # (c, P) float32 channel values at them (column-major), 1/Angstrom^3
RECIPROCAL_HALF = "half"  # bool: one of each Friedel pair (the other binned at -G)
