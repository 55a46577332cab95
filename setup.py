"""The compiled part of cloudvox; everything else is declared in pyproject.toml."""
import sys

from setuptools import setup


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


setup(**native_extensions())
