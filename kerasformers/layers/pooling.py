"""Mask-aware pooling of a token sequence into one vector (sentence embeddings).

Keras 3's GlobalMaxPooling1D ignores the padding mask and its
GlobalAveragePooling1D gives NaN for a row without tokens; bert4keras patched
both. `GlobalPooling(mode)` replaces them and adds the other poolings
sentence-embedding code uses (SimBERT/SimCSE's [CLS], sentence-transformers'
mean and sqrt-length mean, decoder last-token).

>>> import keras, numpy as np
>>> from kerasformers.layers import GlobalPooling
>>> x = np.array([[[1.0], [2.0], [3.0]], [[4.0], [9.0], [9.0]]], "float32")
>>> mask = np.array([[1, 1, 1], [1, 0, 0]], bool)           # row 1 holds one token
>>> keras.ops.convert_to_numpy(GlobalPooling("mean")(x, mask=mask)).tolist()
[[2.0], [4.0]]
>>> keras.ops.convert_to_numpy(GlobalPooling("last")(x, mask=mask)).tolist()
[[3.0], [4.0]]
"""

import keras
from keras import ops

from kerasformers.saving import register

MODES = ("mean", "max", "sum", "sqrt_mean", "first", "last")
ALIASES = {"average": "mean", "avg": "mean", "cls": "first"}


@register
class GlobalPooling(keras.layers.Layer):
    """Pool [batch, n, ...] over the tokens (axis 1) to [batch, ...], skipping padding.

    mode:
      'mean' ('average', 'avg'): mean of the valid tokens (bert4keras'
          GlobalAveragePooling1D);
      'max': channel-wise max of the valid tokens (its GlobalMaxPooling1D);
      'sum': sum of the valid tokens;
      'sqrt_mean': sum / sqrt(number of valid tokens) (sentence-transformers);
      'first' ('cls'): the first valid token, i.e. [CLS] at position 0 for
          right-padded input (SimBERT, SimCSE);
      'last': the last valid token, wherever the padding is (decoder models).
    The mask (True or nonzero = token) comes from Keras masking or the `mask=`
    argument, [batch, n]; without one every position counts. Padding values,
    even inf or NaN, never reach the result; a row without tokens gives zeros.
    Sums run in float32. For "first-last-avg" average the two layers' outputs
    first: `GlobalPooling("mean")(keras.layers.Average()([h_first, h_last]))`.
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        mode = ALIASES.get(mode, mode)
        if mode not in MODES:
            raise ValueError(
                f"GlobalPooling mode must be one of {MODES} or {tuple(ALIASES)}, got {mode!r}"
            )
        self.mode = mode
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return self._pool_all(inputs)
        mask = ops.cast(mask, "bool")
        if self.mode in ("first", "last"):
            # one-hot of the first (last) valid token: a running count that is 1 there
            counts = ops.cumsum(ops.cast(mask, "int32"), axis=1)
            if self.mode == "last":
                counts = counts[:, -1:] - counts + ops.cast(mask, "int32")
            mask = ops.logical_and(mask, ops.equal(counts, 1))
        token = _expand_like(mask, inputs)
        if self.mode == "max":
            pooled = ops.max(ops.where(token, inputs, float("-inf")), axis=1)
            return ops.where(ops.any(token, axis=1), pooled, ops.zeros_like(pooled))
        total = ops.sum(ops.where(token, ops.cast(inputs, "float32"), 0.0), axis=1)
        if self.mode in ("mean", "sqrt_mean"):
            count = ops.sum(ops.cast(token, "float32"), axis=1)
            count = ops.sqrt(count) if self.mode == "sqrt_mean" else count
            total = total / ops.maximum(count, 1.0)
        return ops.cast(total, inputs.dtype)

    def _pool_all(self, inputs):
        """Every position is a token."""
        if self.mode == "first":
            return inputs[:, 0]
        if self.mode == "last":
            return inputs[:, -1]
        if self.mode == "max":
            return ops.max(inputs, axis=1)
        x = ops.cast(inputs, "float32")
        if self.mode == "mean":
            return ops.cast(ops.mean(x, axis=1), inputs.dtype)
        total = ops.sum(x, axis=1)
        if self.mode == "sqrt_mean":
            total = total / ops.sqrt(ops.cast(ops.shape(inputs)[1], "float32"))
        return ops.cast(total, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[2:])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


def _expand_like(mask, x):
    """[b, n] -> [b, n, 1, ..., 1] with as many axes as x."""
    for _ in range(len(x.shape) - 2):
        mask = ops.expand_dims(mask, -1)
    return mask
