"""The compiled kernel (``cloudvox._structure_factors``, built from ``cloudvox/csrc`` by setup.py): loaded once,
on first use, or None with one warning when it is not built (every caller then has a numpy path)."""
import functools
import logging


@functools.lru_cache(maxsize=None)
def native():
    """The extension module, or None (numpy fallbacks; several times slower)."""
    try:
        import torch  # noqa: F401  (loads the libraries the extension links against)
        from . import _structure_factors
    except ImportError as err:
        logging.getLogger(__name__).warning(
            "cloudvox's C++ structure-factor kernel is not built (%s); featurizing crystals uses numpy (several "
            "times slower). Reinstall with a C++ compiler: pip install -e .", err)
        return None
    return _structure_factors
