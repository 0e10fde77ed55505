"""Data utilities (bert4keras ``snippets``): padding, truncation, text segmentation, parallel
map, indexed files and `DataGenerator`, a `keras.utils.PyDataset`.

Everything here but `DataGenerator` is plain NumPy/Python and backend-independent, and
importing it does not import Keras: `DataGenerator` (module `generator`) is loaded on first
use.  One module per concern: `sequences` (padding, truncation), `text` (segmentation,
full-width, common substrings), `parallel` (parallel map), `files` (indexed text files),
`generator` (`DataGenerator`); its tf.data conversion lives in
`kerasformers.backends.tensorflow.data`.

>>> from kerasformers.data import sequence_padding
>>> sequence_padding([[1, 2, 3], [4]])
array([[1, 2, 3],
       [4, 0, 0]])
"""

import importlib

from kerasformers.data.files import IndexedTextFile, open
from kerasformers.data.parallel import parallel_apply, parallel_apply_generator
from kerasformers.data.sequences import (
    bucket_length,
    sequence_padding,
    to_array,
    truncate_sequences,
)
from kerasformers.data.text import (
    longest_common_subsequence,
    longest_common_substring,
    strQ2B,
    text_segmentate,
)

__all__ = [
    "to_array",
    "sequence_padding",
    "bucket_length",
    "truncate_sequences",
    "text_segmentate",
    "parallel_apply_generator",
    "parallel_apply",
    "DataGenerator",
    "IndexedTextFile",
    "open",
    "strQ2B",
    "longest_common_substring",
    "longest_common_subsequence",
]

_LAZY = {"DataGenerator": "kerasformers.data.generator"}  # these import Keras


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kerasformers.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
