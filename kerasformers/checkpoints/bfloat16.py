"""bfloat16 tensors from checkpoint bytes: one widening rule for every format.

A bfloat16 is the upper 16 bits of a float32, so widening is exact: the
stored bits become the float32's top half (:func:`widen_bfloat16`).

* :class:`~kerasformers.checkpoints.tf_checkpoint.TFCheckpointReader`, a
  format library, returns what is stored: an ``ml_dtypes.bfloat16`` array
  (as ``tf.train.load_checkpoint`` does; bit-exact, and it round-trips through
  ``save_tf_checkpoint``), or the widened float32 if ml_dtypes is missing.
* Every checkpoint ``Source`` (TF, safetensors, pytorch_model.bin) returns it
  widened to float32, so the loader's NumPy work on it (keep_tokens,
  compound_tokens averages) runs in float32 whatever the format.

>>> import numpy as np
>>> bits = np.array([0x3FC0, 0xC010, 0x7F7F], np.uint16)  # 1.5, -2.25, bf16 max
>>> widen_bfloat16(bits).tolist()
[1.5, -2.25, 3.3895313892515355e+38]
>>> x = bfloat16_from_bits(bits)
>>> str(x.dtype), widen_bfloat16(x).tolist() == widen_bfloat16(bits).tolist()
('bfloat16', True)
"""

import numpy as np

try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a Keras 3 dependency
    _ml_dtypes = None


def numpy_bfloat16():
    """The NumPy dtype the TF reader returns bfloat16 as: ml_dtypes.bfloat16, else float32."""
    return np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else np.dtype(np.float32)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16 (always False without ml_dtypes)."""
    return _ml_dtypes is not None and np.dtype(dtype) == np.dtype(_ml_dtypes.bfloat16)


def widen_bfloat16(x):
    """float32 array with exactly the values of ``x``: bfloat16 bit patterns
    (uint16, any byte order) or an ``ml_dtypes.bfloat16`` array."""
    x = np.asarray(x)
    bits = x.view(np.uint16) if is_bfloat16(x.dtype) else x.astype(np.uint16, copy=False)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bfloat16_from_bits(bits):
    """bfloat16 bit patterns (uint16, any byte order) as an array of :func:`numpy_bfloat16`."""
    bits = np.asarray(bits).astype(np.uint16, copy=False)  # native byte order
    if _ml_dtypes is not None:
        return bits.view(_ml_dtypes.bfloat16)
    return widen_bfloat16(bits)
