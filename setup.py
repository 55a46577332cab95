"""cloudvox: 3D learning representations of atomic structures, at HPC scale."""
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cloudvox" / "__init__.py").read_text(), re.M).group(1)


def native_extensions():
    """The C++ CPU kernel of VoxelNet's sparse first layer (cloudvox.models._sparse_conv), built against the
    installed torch. Optional: without torch at build time or without a C++ compiler, cloudvox installs without it
    and uses PyTorch ops (slower on CPU). Vectorised for several x86-64 levels, picked at run time, so a build on
    a login node also runs on compute nodes of another CPU generation."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return dict()
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []  # ATen's parallel_for is OpenMP on Linux
    ext = CppExtension("cloudvox.models._sparse_conv", ["cloudvox/models/csrc/sparse_conv.cpp"],
                       extra_compile_args=["-O3"] + openmp, extra_link_args=openmp, optional=True)
    return dict(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})


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
    **native_extensions(),
)
