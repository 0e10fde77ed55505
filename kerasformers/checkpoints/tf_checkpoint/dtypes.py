"""TensorFlow ``DataType`` enum values and the NumPy dtypes we read and write them as.

bfloat16 comes back as ``ml_dtypes.bfloat16`` (float32 only if ml_dtypes is
missing; see :mod:`kerasformers.checkpoints.bfloat16`) and DT_STRING as object
arrays of ``bytes``.

>>> _tf_dtype_label(14), _tf_dtype_label(20)
('bfloat16', 'resource (20)')
>>> _numpy_dtype_for(3)
dtype('int32')
"""

import numpy as np

from kerasformers.checkpoints.bfloat16 import numpy_bfloat16

# TF DataType enum value -> (name, little-endian NumPy dtype string or None for special cases)
_TF_DTYPES = {
    1: ("float32", "<f4"),
    2: ("float64", "<f8"),
    3: ("int32", "<i4"),
    4: ("uint8", "|u1"),
    5: ("int16", "<i2"),
    6: ("int8", "|i1"),
    7: ("string", None),
    8: ("complex64", "<c8"),
    9: ("int64", "<i8"),
    10: ("bool", "|b1"),
    14: ("bfloat16", None),
    17: ("uint16", "<u2"),
    18: ("complex128", "<c16"),
    19: ("float16", "<f2"),
    22: ("uint32", "<u4"),
    23: ("uint64", "<u8"),
}
_DT_STRING = 7
_DT_BFLOAT16 = 14
_NUMPY_TO_TF = {
    ("f", 2): 19,
    ("f", 4): 1,
    ("f", 8): 2,
    ("i", 1): 6,
    ("i", 2): 5,
    ("i", 4): 3,
    ("i", 8): 9,
    ("u", 1): 4,
    ("u", 2): 17,
    ("u", 4): 22,
    ("u", 8): 23,
    ("b", 1): 10,
    ("c", 8): 8,
    ("c", 16): 18,
}
_TF_DTYPE_NAMES_OTHER = {
    0: "DT_INVALID",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
}


def _tf_dtype_label(enum):
    if enum in _TF_DTYPES:
        return _TF_DTYPES[enum][0]
    return f"{_TF_DTYPE_NAMES_OTHER.get(enum, 'DataType')} ({enum})"


def _numpy_dtype_for(enum):
    if enum == _DT_STRING:
        return np.dtype(object)
    if enum == _DT_BFLOAT16:
        return numpy_bfloat16()
    return np.dtype(_TF_DTYPES[enum][1]).newbyteorder("=")
