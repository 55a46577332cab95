"""cloudvox: 3D learning representations of atomic structures, at HPC scale."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cloudvox" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="cloudvox",
    version=VERSION,
    description="Reciprocal-space voxel descriptors and 3D models (VoxelNet, AtomCloudNet) for atomic structures, "
                "with MPI featurization into parallel HDF5 and distributed training.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["cloudvox", "cloudvox.*", "hpc", "hpc.*"]),
    include_package_data=True,
    package_data={"cloudvox": ["data/*", "data/**/*"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "torch>=2.1",
        "pyyaml>=6",
        "tqdm>=4.60",
        "h5py>=3.8",
        "matplotlib>=3.7",
    ],
    extras_require={
        "structures": ["pymatgen>=2024.1"],
        "e3nn": ["e3nn>=0.5"],
        "qm9": ["qm9pack>=1.0"],
        "mpi": ["mpi4py>=3.1"],
        "horovod": ["horovod>=0.28"],
        "test": ["pytest>=7"],
    },
    entry_points={"console_scripts": ["cloudvox = hpc.cli:main"]},
)
