"""bfloat16 tensors from checkpoint bytes: one rule for every format we read.

A bfloat16 is the upper 16 bits of a float32, so a checkpoint's bfloat16
tensor is a uint16 array of bit patterns.  We return it as an
``ml_dtypes.bfloat16`` array (a view: no copy, bit-exact, and the dtype says
what was stored); the loader casts it once to the variable's dtype.  Only when
ml_dtypes is missing (it ships with Keras 3, JAX and TF) do we widen to
float32, which is exact: the bits become the float32's top half.

>>> import numpy as np
>>> bits = np.array([0x3FC0, 0xC010, 0x7F7F], np.uint16)  # 1.5, -2.25, bf16 max
>>> x = bfloat16_from_bits(bits)
>>> str(x.dtype), x.astype(np.float32).tolist()
('bfloat16', [1.5, -2.25, 3.3895313892515355e+38])
>>> widen_bfloat16_bits(bits).tolist() == x.astype(np.float32).tolist()
True
"""

import numpy as np

try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a Keras 3 dependency
    _ml_dtypes = None


def numpy_bfloat16():
    """The NumPy dtype bfloat16 tensors are read as: ml_dtypes.bfloat16, else float32."""
    return np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else np.dtype(np.float32)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16 (always False without ml_dtypes)."""
    return _ml_dtypes is not None and np.dtype(dtype) == np.dtype(_ml_dtypes.bfloat16)


def widen_bfloat16_bits(bits):
    """float32 array with the same values as the bfloat16 bit patterns ``bits`` (exact)."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def bfloat16_from_bits(bits):
    """bfloat16 bit patterns (uint16, any byte order) -> array of dtype :func:`numpy_bfloat16`."""
    bits = np.asarray(bits).astype(np.uint16, copy=False)  # native byte order
    if _ml_dtypes is not None:
        return bits.view(_ml_dtypes.bfloat16)
    return widen_bfloat16_bits(bits)
