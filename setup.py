"""The compiled part of cloudvox; everything else is declared in pyproject.toml."""
import sys

from setuptools import setup


def native_extensions():
    """The C++ CPU kernels, built against the installed torch: VoxelNet's sparse first layer
    (cloudvox.models._sparse_conv) and the featurize job's structure factors (cloudvox._structure_factors).
    Optional: without torch at build time or without a C++ compiler, cloudvox installs without them and uses
    PyTorch ops / numpy (slower on CPU). Vectorised for several x86-64 levels, picked at run time, so a build on
    a login node also runs on compute nodes of another CPU generation."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, library_paths
    except ImportError:
        return dict()
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []  # ATen's parallel_for is OpenMP on Linux
    # torch's libraries found without importing torch first (importing a kernel module alone works)
    rpath = [f"-Wl,-rpath,{p}" for p in library_paths()] if sys.platform.startswith("linux") else []
    exts = [CppExtension("cloudvox.models._sparse_conv", ["cloudvox/models/csrc/sparse_conv.cpp"],
                         extra_compile_args=["-O3"] + openmp, extra_link_args=openmp + rpath, optional=True),
            # no fused multiply-adds: its half-ball enumeration must round as numpy's (cloudvox.lattice.half_ball)
            CppExtension("cloudvox._structure_factors", ["cloudvox/csrc/structure_factors.cpp"],
                         extra_compile_args=["-O3", "-ffp-contract=off"], extra_link_args=rpath, optional=True)]
    return dict(ext_modules=exts, cmdclass={"build_ext": BuildExtension})


setup(**native_extensions())
