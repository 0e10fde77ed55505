"""Gated Attention Unit (Hua et al. 2022, "Transformer Quality in Linear Time").

One single-head attention whose output gates a wide value projection:
`o_dense(u * (A @ v))`. bert4keras' GAU (GAU-alpha, RoFormerV2-era models)
with the same weights and numerics.

>>> import numpy as np
>>> from kerasformers.layers import GatedAttentionUnit
>>> gau = GatedAttentionUnit(units=16, key_size=8, rope=True)
>>> x = np.random.RandomState(0).normal(size=(2, 5, 8)).astype("float32")
>>> mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)   # row 1 is padded
>>> tuple(gau(x, mask=mask).shape)
(2, 5, 8)
"""

import keras
from keras import ops

from kerasformers.layers.core import with_sublayer_policies
from kerasformers.layers.normalization import ScaleOffset
from kerasformers.ops import (
    apply_rotary_position_embeddings,
    attention_normalize,
    get_activation,
    serialize_activation,
    sinusoidal_embeddings,
)
from kerasformers.saving import register


@register
class GatedAttentionUnit(keras.layers.Layer):
    """bert4keras' GatedAttentionUnit: one attention head gating `units` channels.

    Self-attention (`self_attention=True`, one input x): a Dense `i_dense`
    (2 * units + key_size, `activation`) gives [u | v | z]; q and k are per-channel
    affine maps of the shared z (`q_scaleoffset`, `k_scaleoffset`). Cross
    attention (inputs [q, k, v]): `uq_dense` gives [u | q], `k_dense` k and
    `v_dense` v. Scores q.k (/ sqrt(key_size) with `attention_scale`) are
    normalised by `normalization`: 'squared_relu' (relu(a)^2 / L, the paper),
    'softmax_plus' (softmax(a log L / log 512), GAU-alpha) or 'softmax', where L
    counts the visible keys. Output `o_dense(u * (A @ v))`, as wide as x (or q).
    `use_bias=False` drops every bias and the q/k offsets (GAU-alpha);
    `rope=True` applies RoPE at positions 0.. of q and of k when no
    `position_bias` is passed; `attention_dropout` drops attention weights.

    Call arguments:
      mask: the padding mask [b, n] (from Keras masking or passed explicitly);
            in cross mode the list [q_mask, k_mask, v_mask], of which the value
            (else key) mask hides keys (bert4keras used the query's mask there);
      attention_mask: boolean, True = may attend, broadcastable to [b, q, k]
            (AttentionMask's [b, 1, q, k] works too), AND-ed with the padding mask;
      attention_bias: additive float bias broadcastable to [b, q, k] (or [b, 1, q, k]);
      position_bias: interleaved sin/cos [b|1, n, key_size], e.g.
            SinusoidalPositionEmbedding(key_size, merge_mode="zero")(x): RoPE on
            q and k (bert4keras' p_bias='rotary'; q and k need the same length).
    Keys hidden by the masks never reach the output; rows with no visible key
    give a finite output (o_dense of zeros), where bert4keras gave NaN.

    Incremental decoding (self-attention, eager or traced): cache=(k, v) buffers
    [b, max_len, 1, key_size] and [b, max_len, 1, units], cache_index=i: the new
    keys/values are written at positions i.. and the queries attend the whole
    buffer through `attention_mask` (which must hide unwritten slots and padding;
    `mask` is not used); RoPE needs `position_bias` at the new positions. Returns
    (output, (k, v)).
    """

    def __init__(
        self,
        units,
        key_size,
        activation="swish",
        use_bias=True,
        normalization="squared_relu",
        self_attention=True,
        attention_scale=True,
        attention_dropout=None,
        rope=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if normalization not in ("squared_relu", "softmax_plus", "softmax"):
            raise ValueError(f"Unknown attention normalization {normalization!r}")
        self.units = units
        self.key_size = key_size
        self.activation = get_activation(activation)
        self.use_bias = use_bias
        self.normalization = normalization
        self.self_attention = self_attention
        self.attention_scale = attention_scale
        self.attention_dropout = attention_dropout or 0.0
        self.rope = rope
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def _dense(self, units, name, input_shape, activation=None):
        layer = keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            name=name,
            dtype=self.dtype_policy,
        )
        layer.build(input_shape)
        return layer

    def build(self, input_shape):
        if self.self_attention:
            if isinstance(input_shape[0], (list, tuple)):
                input_shape = input_shape[0]
            self.i_dense = self._dense(
                2 * self.units + self.key_size, "i_dense", input_shape, self.activation
            )
            z_shape = tuple(input_shape[:-1]) + (self.key_size,)
            self.q_scaleoffset = ScaleOffset(
                offset=self.use_bias, name="q_scaleoffset", dtype=self.dtype_policy
            )
            self.k_scaleoffset = ScaleOffset(
                offset=self.use_bias, name="k_scaleoffset", dtype=self.dtype_policy
            )
            self.q_scaleoffset.build(z_shape)
            self.k_scaleoffset.build(z_shape)
        else:
            input_shape, k_shape, v_shape = input_shape[:3]
            self.uq_dense = self._dense(
                self.units + self.key_size, "uq_dense", input_shape, self.activation
            )
            self.k_dense = self._dense(self.key_size, "k_dense", k_shape, self.activation)
            self.v_dense = self._dense(self.units, "v_dense", v_shape, self.activation)
        self.o_dense = self._dense(
            input_shape[-1], "o_dense", tuple(input_shape[:-1]) + (self.units,)
        )
        if self.attention_dropout:
            self.dropout = keras.layers.Dropout(self.attention_dropout)

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        attention_bias=None,
        position_bias=None,
        p_bias=None,
        training=None,
        cache=None,
        cache_index=None,
    ):
        if cache is not None and (not self.self_attention or cache_index is None):
            raise ValueError("GatedAttentionUnit caches self-attention only (cache_index needed)")
        if cache is not None and self.rope and position_bias is None:
            raise ValueError("a cached GatedAttentionUnit step needs position_bias for RoPE")
        if p_bias not in (None, "rotary"):
            raise ValueError(f"GatedAttentionUnit only supports p_bias='rotary', got {p_bias!r}")
        if p_bias == "rotary" and position_bias is None and not self.rope:
            raise ValueError("p_bias='rotary' needs position_bias (or rope=True)")
        if self.self_attention:
            x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            key_mask = mask[0] if isinstance(mask, (list, tuple)) else mask
            u, v, z = ops.split(self.i_dense(x), [self.units, 2 * self.units], axis=-1)
            q, k = self.q_scaleoffset(z), self.k_scaleoffset(z)
        else:
            q, k, v = inputs[:3]
            key_mask = None
            if isinstance(mask, (list, tuple)):
                key_mask = mask[2] if mask[2] is not None else mask[1]
            u, q = ops.split(self.uq_dense(q), [self.units], axis=-1)
            k, v = self.k_dense(k), self.v_dense(v)
        if position_bias is None and self.rope:
            q = apply_rotary_position_embeddings(_positions(q, self.key_size), q)
            k = apply_rotary_position_embeddings(_positions(k, self.key_size), k)
        elif position_bias is not None:
            q, k = apply_rotary_position_embeddings(position_bias, q, k)
        if cache is not None:  # write the new keys/values, attend the whole buffer
            start = (0, cache_index, 0, 0)
            k_buf = ops.slice_update(cache[0], start, ops.cast(k[:, :, None], cache[0].dtype))
            v_buf = ops.slice_update(cache[1], start, ops.cast(v[:, :, None], cache[1].dtype))
            k, v, key_mask = k_buf[:, :, 0], v_buf[:, :, 0], None
        scores = ops.einsum("bmd,bnd->bmn", q, k)
        if self.attention_scale:
            scores = scores / (self.key_size**0.5)
        if attention_bias is not None:
            scores = scores + ops.cast(_three_d(attention_bias), scores.dtype)
        visible = _visible(key_mask, attention_mask)
        probs = attention_normalize(scores, visible, -1, self.normalization)
        if visible is not None:  # softmax_plus spreads a row with no visible key evenly
            probs = ops.where(visible, probs, ops.zeros_like(probs))
        if self.attention_dropout:
            probs = self.dropout(probs, training=training)
        o = self.o_dense(u * ops.einsum("bmn,bnd->bmd", probs, ops.cast(v, probs.dtype)))
        return o if cache is None else (o, (k_buf, v_buf))

    def compute_output_spec(self, inputs, **kwargs):
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return keras.KerasTensor(x.shape, dtype=self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return mask[0] if isinstance(mask, (list, tuple)) else mask

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            key_size=self.key_size,
            activation=serialize_activation(self.activation),
            use_bias=self.use_bias,
            normalization=self.normalization,
            self_attention=self.self_attention,
            attention_scale=self.attention_scale,
            attention_dropout=self.attention_dropout,
            rope=self.rope,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return with_sublayer_policies(self, config)


def _positions(x, dim):
    """Interleaved sin/cos [1, n, dim] for positions 0..n-1 of x [b, n, ...]."""
    return sinusoidal_embeddings(ops.arange(ops.shape(x)[1])[None], dim)


def _three_d(t):
    """[b, 1, q, k] (MultiHeadAttention's layout) -> [b, q, k]; others unchanged."""
    return ops.squeeze(t, 1) if len(t.shape) == 4 else t


def _visible(key_mask, attention_mask):
    """Boolean [b, q|1, k] of the keys each query may see, or None (all)."""
    visible = None
    if key_mask is not None:
        visible = ops.cast(key_mask, "bool")[:, None, :]
    if attention_mask is not None:
        attention_mask = ops.cast(_three_d(attention_mask), "bool")
        visible = attention_mask if visible is None else ops.logical_and(visible, attention_mask)
    return visible
