"""``python -m cloudvox.featurefile > docs/hdf5_layout.md``: the layout page, from :mod:`.layout`'s docstring."""
from . import layout

print("# The cloudvox feature file (HDF5)\n\nThis page is generated from the docstring of `cloudvox/featurefile/layout.py` "
      "(`python -m cloudvox.featurefile > docs/hdf5_layout.md`), the single definition of the layout.\n\n```\n"
      + layout.__doc__.strip() + "\n```")
