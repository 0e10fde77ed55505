"""GlobalPointer span scorers (Su, 2021): every (start, end) pair scored as a whole.

Output [batch, heads, n, n]: logit (i, j) says whether tokens i..j form a span
of type `head`. Train with `kerasformers.losses.global_pointer_crossentropy`
(or the sparse GPLinker variant); predict the spans whose logit is > 0.
Padding rows and columns, and with `tril_mask` the spans that end before they
start (j < i), get a large negative logit (-1e12; -6e4 in float16) instead of
bert4keras' -inf, so no inf ever meets arithmetic.

>>> import keras, numpy as np
>>> from kerasformers.layers import GlobalPointer
>>> x = np.random.RandomState(0).normal(size=(2, 5, 8)).astype("float32")
>>> scores = keras.ops.convert_to_numpy(GlobalPointer(heads=3, head_size=4)(x))
>>> scores.shape
(2, 3, 5, 5)
>>> bool((scores[:, :, 1, 0] < -1e11).all())   # end before start: masked
True
"""

import keras
from keras import ops

from kerasformers.layers.core import with_sublayer_policies
from kerasformers.ops import apply_rotary_position_embeddings, sinusoidal_embeddings
from kerasformers.saving import register


def _mask_value(dtype):
    return -6e4 if keras.backend.standardize_dtype(dtype) == "float16" else -1e12


@register
class GlobalPointer(keras.layers.Layer):
    """Span logits [batch, heads, n, n] from token vectors [batch, n, hidden].

    One Dense (weight `dense`, units heads * head_size * 2) gives each head a
    query and a key per token (head h uses channels [2dh, 2dh + d) for q and the
    next d for k); RoPE (interleaved, as bert4keras) encodes relative position;
    logit(i, j) = q_i . k_j / sqrt(head_size). The padding mask (Keras mask or
    `mask=` [batch, n]) hides rows and columns; `tril_mask` hides j < i.
    The output carries no Keras mask (it is 4-D).
    """

    def __init__(
        self,
        heads,
        head_size,
        RoPE=True,
        use_bias=True,
        tril_mask=True,
        kernel_initializer="lecun_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.heads = heads
        self.head_size = head_size
        self.RoPE = RoPE
        self.use_bias = use_bias
        self.tril_mask = tril_mask
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True
        self._make_projections()

    def _make_projections(self):
        self.dense = self._dense(self.heads * self.head_size * 2, "dense")

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            use_bias=self.use_bias,
            name=name,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.dense.build(input_shape)

    def _rope(self, qw, kw):
        if not self.RoPE:
            return qw, kw
        positions = ops.arange(ops.shape(qw)[1], dtype="float32")
        sinusoidal = sinusoidal_embeddings(positions, self.head_size)[None]
        return apply_rotary_position_embeddings(sinusoidal, qw, kw)

    def call(self, inputs, mask=None):
        x = self.dense(inputs)
        x = ops.reshape(x, ops.shape(x)[:2] + (self.heads, 2 * self.head_size))
        qw, kw = self._rope(x[..., : self.head_size], x[..., self.head_size :])
        logits = ops.einsum("bmhd,bnhd->bhmn", qw, kw) / self.head_size**0.5
        return self._mask_logits(logits, mask)

    def _mask_logits(self, logits, mask):
        """Large negative where a row or column is padding, or (tril_mask) j < i."""
        keep = None
        if mask is not None:
            mask = ops.cast(mask, "bool")
            keep = ops.logical_and(mask[:, None, :, None], mask[:, None, None, :])
        if self.tril_mask:
            idx = ops.arange(ops.shape(logits)[-1])
            upper = (idx[:, None] <= idx[None, :])[None, None]
            keep = upper if keep is None else ops.logical_and(keep, upper)
        if keep is None:
            return logits
        value = ops.cast(_mask_value(logits.dtype), logits.dtype)
        return ops.where(keep, logits, value)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.heads, input_shape[1], input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            heads=self.heads,
            head_size=self.head_size,
            RoPE=self.RoPE,
            use_bias=self.use_bias,
            tril_mask=self.tril_mask,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return with_sublayer_policies(self, config)


@register
class EfficientGlobalPointer(GlobalPointer):
    """Parameter-efficient GlobalPointer (Su, 2022; used by GPLinker).

    A shared `p_dense` (units 2 * head_size) gives q (even channels) and k (odd
    channels) for all heads; `q_dense` (units 2 * heads), applied to p_dense's
    output, adds per-head biases: logit_h(i, j) = q_i . k_j / sqrt(d)
    + (b[2h](j) + b[2h + 1](i)) / 2 (even channels bias the end j, odd ones the
    start i, exactly as bert4keras). Masking as GlobalPointer.
    """

    def _make_projections(self):
        self.p_dense = self._dense(self.head_size * 2, "p_dense")
        self.q_dense = self._dense(self.heads * 2, "q_dense")

    def build(self, input_shape):
        self.p_dense.build(input_shape)
        self.q_dense.build(tuple(input_shape[:-1]) + (self.head_size * 2,))

    def call(self, inputs, mask=None):
        x = self.p_dense(inputs)
        qw, kw = self._rope(x[..., ::2], x[..., 1::2])
        logits = ops.einsum("bmd,bnd->bmn", qw, kw) / self.head_size**0.5
        bias = ops.transpose(self.q_dense(x), (0, 2, 1)) / 2  # [b, 2 * heads, n]
        logits = logits[:, None] + bias[:, ::2, None] + bias[:, 1::2, :, None]
        return self._mask_logits(logits, mask)
