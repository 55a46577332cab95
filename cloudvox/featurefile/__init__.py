"""The feature file: its layout (:mod:`.layout`, the single definition, documented in docs/hdf5_layout.md), the
computation of a block of records (:mod:`.block`), its writer (:mod:`.writer`) and its reader (:mod:`.reader`)."""
from .block import Block, featurize_block
from .layout import (ALL_ELEMENTS, CHUNK_BYTES, CHUNK_CACHE_BYTES, COMPRESSED, DONE, FAILED, FAILURES, FIXED, FORMAT,
                     FORMAT_VERSION, GZIP_LEVEL, ISAL_LEVEL, RAGGED, STORE_DEFAULT, STORE_ITEMS, channel_names, decode,
                     deflate, encode, prop_unit, root_attributes)
from .reader import FeatureFile
from .writer import write_features

__all__ = ["Block", "featurize_block", "ALL_ELEMENTS", "CHUNK_BYTES", "CHUNK_CACHE_BYTES", "COMPRESSED", "DONE",
           "FAILED", "FAILURES", "FIXED", "FORMAT", "FORMAT_VERSION", "GZIP_LEVEL", "ISAL_LEVEL", "RAGGED",
           "STORE_DEFAULT", "STORE_ITEMS", "channel_names", "decode", "deflate", "encode", "prop_unit",
           "root_attributes", "FeatureFile", "write_features"]
