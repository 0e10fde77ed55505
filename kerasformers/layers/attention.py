"""Multi-head attention with the position-bias variants of the BERT era.

>>> import numpy as np
>>> from kerasformers.layers import MultiHeadAttention
>>> att = MultiHeadAttention(heads=2, head_size=4)
>>> x = np.random.rand(1, 5, 8).astype("float32")
>>> mask = np.array([[[[True] * 3 + [False] * 2]]])        # [batch, 1, 1, keys]
>>> tuple(att([x, x, x], attention_mask=mask).shape)
(1, 5, 8)
"""

import functools

import keras
from keras import ops

from kerasformers.layers import linear_attention as linear
from kerasformers.layers.core import remat_call, remat_scope, with_sublayer_policies
from kerasformers.ops import apply_rotary_position_embeddings, attention_normalize
from kerasformers.saving import register


@functools.lru_cache(maxsize=None)
def _fused_kernel_compiles(dtype):
    """False for float16 on jax's CPU backend: XLA:CPU has no float16 x float16 ->
    float32 dot, so `jax.nn.dot_product_attention` fails to compile (jit, fit,
    predict) under mixed_float16 there."""
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(dtype) != "float16":
        return True
    import jax

    return jax.default_backend() != "cpu"


@register
class MultiHeadAttention(keras.layers.Layer):
    """bert4keras' MultiHeadAttention: q/k/v/o Dense sublayers (`q_dense`, ...).

    Call with `[q, k, v]` (or one tensor for self-attention) and optionally
      attention_mask: boolean, True = may attend; broadcastable to [b, h, q, k]
                      (a 3-D [b, q, k] mask is broadcast over heads);
      attention_bias: additive float bias broadcastable to [b, h, q, k];
      position_bias + p_bias: 'typical_relative' ([q, k, key_size], NEZHA),
                      'rotary' (interleaved sin/cos [b|1, n, key_size], RoFormer),
                      't5_relative' ([q, k, heads]).
    Returns the output, or [output, scores] with `return_attention_scores`
    (scores are the scaled pre-softmax logits before `attention_bias` is added, as
    bert4keras returns them: RealFormer passes each layer's own scores to the next).

    Incremental decoding (key/value cache), eager or traced, not symbolic:
      cache=(k, v), cache_index=i: a self-attention cache of [b, max_len, h, d]
          buffers; the new keys/values are written at positions i.. and the
          queries attend the whole buffer (hide unwritten slots with the mask);
      cache=(k, v), cache_index=None: a static cache (cross-attention: the
          projected encoder states), the k/v inputs are not used.
    With a cache the call returns (outputs, (k, v)), outputs as above.

    attention_type: 'softmax' (the default), 'linear' (phi(q).phi(k) with
      `feature_map` 'elu' (elu + 1), 'relu' or 'softmax' (softmax of q over
      its features, of k over the keys)) or 'performer' (FAVOR+ positive
      random features, `num_random_features` of them, default 2 * key_size;
      the projection is fixed, drawn from `feature_seed`, and with
      `redraw_features=True` drawn anew at every training call). Linear
      kinds take the mask as two key sets, [b, 2, n] booleans from
      `AttentionMask(mode, key_sets=True)`: row 0 the keys every query sees,
      row 1 the keys seen from their own position on (causal); a padding
      mask [b, 1, 1, n] also works. Their decoding cache is a recurrent state
      of constant size (`linear_attention.empty_state`), passed as `cache`
      (cache_index is then not used). See `layers/linear_attention.py`.
    attention_scale: True (1 / sqrt(key_size)), False (none) or
      'entropy_invariant': log(n) / log(training_length) / sqrt(key_size),
      n the number of keys each query sees (Su Jianlin, "从熵不变性看Attention
      的Scale操作"): equal to the standard scale at n = training_length.

    remat=True: gradient checkpointing, the activations inside the layer
    (projections, attention probabilities) are recomputed in the backward
    pass instead of stored (Keras' remat; calls with a cache are not
    rematerialised).
    """

    def __init__(
        self,
        heads,
        head_size,
        out_dim=None,
        key_size=None,
        use_bias=True,
        normalization="softmax",
        attention_scale=True,
        attention_dropout=None,
        return_attention_scores=False,
        kernel_initializer="glorot_uniform",
        remat=False,
        attention_type="softmax",
        feature_map="elu",
        num_random_features=None,
        redraw_features=False,
        feature_seed=0,
        training_length=512,
        **kwargs,
    ):
        with remat_scope(remat):
            super().__init__(**kwargs)
        check_attention_options(
            attention_type, feature_map, attention_scale, training_length, num_random_features
        )
        if attention_type != "softmax" and (return_attention_scores or normalization != "softmax"):
            raise ValueError(
                f"attention_type={attention_type!r} never forms the attention scores: it "
                "cannot return them (return_attention_scores, residual_attention_scores) "
                f"nor normalise them with {normalization!r}"
            )
        self.attention_type = attention_type
        self.feature_map = "performer" if attention_type == "performer" else feature_map
        self.num_random_features = num_random_features
        self.redraw_features = redraw_features
        self.feature_seed = feature_seed
        self.training_length = training_length
        self.remat = remat
        self.heads = heads
        self.head_size = head_size
        self.out_dim = out_dim or heads * head_size
        self.key_size = key_size or head_size
        self.use_bias = use_bias
        self.normalization = normalization
        self.attention_scale = attention_scale
        self.attention_dropout = attention_dropout or 0.0
        self.return_attention_scores = return_attention_scores
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if not isinstance(input_shape[0], (list, tuple)):
            input_shape = [input_shape] * 3
        q_shape, k_shape, v_shape = input_shape[:3]

        def dense(units, name, shape):
            layer = keras.layers.Dense(
                units,
                use_bias=self.use_bias,
                name=name,
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
            )
            layer.build(shape)
            return layer

        self.q_dense = dense(self.key_size * self.heads, "q_dense", q_shape)
        self.k_dense = dense(self.key_size * self.heads, "k_dense", k_shape)
        self.v_dense = dense(self.head_size * self.heads, "v_dense", v_shape)
        self.o_dense = dense(
            self.out_dim, "o_dense", tuple(q_shape[:-1]) + (self.head_size * self.heads,)
        )
        if self.attention_type == "performer":
            m = self.num_random_features or 2 * self.key_size
            self.projection = linear.orthogonal_projection(m, self.key_size, self.feature_seed)
            if self.redraw_features:
                self.seed_generator = keras.random.SeedGenerator(self.feature_seed)
        if self.attention_dropout:
            # the layer's policy: a float32 Dropout would cast bfloat16 probabilities back
            self.dropout = keras.layers.Dropout(self.attention_dropout, dtype=self.dtype_policy)

    def _split_heads(self, x, size):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (b, n, self.heads, size))

    def project_key_value(self, context):
        """Keys and values of `context` [b, n, dim] split into heads, ([b, n, heads,
        key_size], [b, n, heads, head_size]): the static cache `call(..., cache=(k, v))`
        takes for cross-attention over fixed states (T5's encoder output).

        >>> import numpy as np
        >>> att = MultiHeadAttention(heads=2, head_size=4, key_size=3)
        >>> x = np.ones((1, 5, 8), "float32")
        >>> _ = att([x, x, x])  # build
        >>> k, v = att.project_key_value(x)
        >>> tuple(k.shape), tuple(v.shape)
        ((1, 5, 2, 3), (1, 5, 2, 4))
        """
        return (
            self._split_heads(self.k_dense(context), self.key_size),
            self._split_heads(self.v_dense(context), self.head_size),
        )

    def call(
        self,
        inputs,
        attention_mask=None,
        attention_bias=None,
        position_bias=None,
        p_bias=None,
        cache=None,
        cache_index=None,
        training=None,
    ):
        if isinstance(inputs, (list, tuple)):
            q, k, v = inputs[:3]
        else:
            q = k = v = inputs
        if self.attention_type != "softmax":
            if attention_bias is not None:
                raise ValueError(
                    f"attention_type={self.attention_type!r} cannot add an attention_bias"
                )
            return self.linear_call(q, k, v, attention_mask, position_bias, p_bias, cache, training)
        qw = self._split_heads(self.q_dense(q), self.key_size)
        if cache is not None and cache_index is None:  # static (cross-attention) cache
            kw, vw = cache
            if p_bias == "rotary":
                qw = apply_rotary_position_embeddings(position_bias, qw)
        else:
            kw = self._split_heads(self.k_dense(k), self.key_size)
            vw = self._split_heads(self.v_dense(v), self.head_size)
            if p_bias == "rotary":
                qw, kw = apply_rotary_position_embeddings(position_bias, qw, kw)
            if cache is not None:  # write the new keys/values into the buffers
                start = (0, cache_index, 0, 0)
                kw = ops.slice_update(cache[0], start, ops.cast(kw, cache[0].dtype))
                vw = ops.slice_update(cache[1], start, ops.cast(vw, cache[1].dtype))
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            if len(attention_mask.shape) == 3:
                attention_mask = ops.expand_dims(attention_mask, 1)
        o, scores = self.pay_attention_to(
            qw, kw, vw, attention_mask, attention_bias, position_bias, p_bias, training
        )
        b, n = ops.shape(o)[0], ops.shape(o)[1]
        o = self.o_dense(ops.reshape(o, (b, n, self.heads * self.head_size)))
        outputs = [o, scores] if self.return_attention_scores else o
        if cache is not None:
            return outputs, (kw, vw)
        return outputs

    def linear_call(self, q, k, v, attention_mask, position_bias, p_bias, cache, training):
        """The linear / Performer attention of `call` (see the class docstring)."""
        if p_bias not in (None, "rotary"):
            raise ValueError(
                f"attention_type={self.attention_type!r} cannot add the {p_bias!r} position "
                "bias: it acts on the score matrix, which linear attention never forms"
            )
        qw = self._split_heads(self.q_dense(q), self.key_size)
        kw = self._split_heads(self.k_dense(k), self.key_size)
        vw = self._split_heads(self.v_dense(v), self.head_size)
        if self.attention_scale is True and self.attention_type == "performer":
            qw, kw = qw * self.key_size**-0.25, kw * self.key_size**-0.25
        global_keys, causal_keys = key_sets(attention_mask)
        rotary = None
        if p_bias == "rotary":

            def rotary(x):
                return apply_rotary_position_embeddings(ops.cast(position_bias, x.dtype), x)

        projection = getattr(self, "projection", None)
        if projection is not None and self.redraw_features and training:
            projection = linear.random_projection(
                projection.shape[0], self.key_size, self.seed_generator
            )
        o, state = linear.linear_attention(
            qw,
            kw,
            vw,
            self.feature_map,
            global_keys,
            causal_keys,
            state=cache,
            projection=None if projection is None else ops.convert_to_tensor(projection),
            rotary=rotary,
        )
        b, n = ops.shape(o)[0], ops.shape(o)[1]
        o = self.o_dense(ops.reshape(o, (b, n, self.heads * self.head_size)))
        return o if cache is None else (o, state)

    def empty_state(self, batch_size, dtype="float32"):
        """The zero recurrent state of a linear kind (its decoding cache)."""
        m = self.key_size
        if self.attention_type == "performer":
            m = self.num_random_features or 2 * self.key_size
        return linear.empty_state(
            batch_size, self.heads, m, self.head_size, self.feature_map, dtype
        )

    def pay_attention_to(self, qw, kw, vw, mask, bias, position_bias, p_bias, training):
        """Attention on [b, n, h, d] heads; returns (o [b, n, h, d], scores or None).

        Subclasses may replace this to change the attention kernel.
        """
        dropout = self.attention_dropout and training
        fused = (
            self.attention_scale in (True, False)
            and p_bias in (None, "rotary")
            and self.normalization == "softmax"
            and not self.return_attention_scores
            and not dropout
            and self.key_size == self.head_size
            and (bias is None or mask is None)  # torch's kernel takes one of them
            and _fused_kernel_compiles(qw.dtype)
        )
        if fused:
            # Keras' fused kernel (torch SDPA / jax.nn.dot_product_attention).
            scale = self.key_size**-0.5 if self.attention_scale else 1.0
            if bias is not None:
                bias = ops.cast(bias, qw.dtype)
            o = ops.dot_product_attention(qw, kw, vw, bias=bias, mask=mask, scale=scale)
            return o, None
        scores = ops.einsum("bjhd,bkhd->bhjk", qw, kw)
        if p_bias == "typical_relative":
            scores = scores + ops.einsum("bjhd,jkd->bhjk", qw, position_bias)
        elif p_bias == "t5_relative":
            scores = scores + ops.expand_dims(ops.transpose(position_bias, (2, 0, 1)), 0)
        if self.attention_scale == "entropy_invariant":
            if mask is None:
                visible = ops.cast(ops.shape(kw)[1], "float32")
            else:
                visible = ops.sum(
                    ops.cast(ops.broadcast_to(mask, ops.shape(scores)), "float32"),
                    -1,
                    keepdims=True,
                )
            factor = linear.log_ratio(visible, self.training_length) / (self.key_size**0.5)
            scores = scores * ops.cast(factor, scores.dtype)
        elif self.attention_scale:
            scores = scores / (self.key_size**0.5)
        own = scores  # returned without the bias, as bert4keras (RealFormer residuals)
        if bias is not None:
            scores = scores + ops.cast(bias, scores.dtype)
        probs = attention_normalize(scores, mask, -1, self.normalization)
        if dropout:
            probs = self.dropout(probs, training=training)
        o = ops.einsum("bhjk,bkhd->bjhd", probs, vw)
        if p_bias == "typical_relative":
            o = o + ops.einsum("bhjk,jkd->bjhd", probs, ops.cast(position_bias, probs.dtype))
        return o, own

    def rematerialized_call(self, layer_call, *args, **kwargs):
        if kwargs.get("cache") is not None:  # incremental decoding is inference
            return layer_call
        if super().rematerialized_call(layer_call, *args, **kwargs) is layer_call:
            return layer_call
        return remat_call(layer_call)

    def compute_output_spec(self, inputs, **kwargs):
        q = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        o = keras.KerasTensor(tuple(q.shape[:-1]) + (self.out_dim,), dtype=self.compute_dtype)
        if self.return_attention_scores:
            k = inputs[1] if isinstance(inputs, (list, tuple)) else inputs
            s = keras.KerasTensor(
                (q.shape[0], self.heads, q.shape[1], k.shape[1]), dtype=self.compute_dtype
            )
            return [o, s]
        return o

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if self.return_attention_scores:
            return [mask, None]
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            heads=self.heads,
            head_size=self.head_size,
            out_dim=self.out_dim,
            key_size=self.key_size,
            use_bias=self.use_bias,
            normalization=self.normalization,
            attention_scale=self.attention_scale,
            attention_dropout=self.attention_dropout,
            return_attention_scores=self.return_attention_scores,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            remat=self.remat,
            attention_type=self.attention_type,
            feature_map=self.feature_map,
            num_random_features=self.num_random_features,
            redraw_features=self.redraw_features,
            feature_seed=self.feature_seed,
            training_length=self.training_length,
        )
        return with_sublayer_policies(self, config)


ATTENTION_TYPES = ("softmax", "linear", "performer")


def check_attention_options(
    attention_type, feature_map, attention_scale, training_length, num_random_features=None
):
    """ValueError naming the option for anything MultiHeadAttention cannot do."""
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    if attention_type == "linear" and feature_map not in ("elu", "relu", "softmax"):
        raise ValueError(
            f"feature_map must be 'elu', 'relu' or 'softmax' for linear attention, got "
            f"{feature_map!r}"
        )
    if attention_scale not in (True, False, "entropy_invariant"):
        raise ValueError(
            f"attention_scale must be True, False or 'entropy_invariant', got {attention_scale!r}"
        )
    if attention_scale == "entropy_invariant":
        if attention_type != "softmax":
            raise ValueError(
                "attention_scale='entropy_invariant' scales softmax attention's scores; "
                f"attention_type={attention_type!r} has none"
            )
        if isinstance(training_length, bool) or not isinstance(training_length, int):
            raise TypeError(f"training_length must be an int, got {training_length!r}")
        if training_length < 2:
            raise ValueError(
                f"training_length must be >= 2 (log n_train > 0), got {training_length}"
            )
    if num_random_features is not None and (
        isinstance(num_random_features, bool)
        or not isinstance(num_random_features, int)
        or num_random_features < 1
    ):
        raise ValueError(f"num_random_features must be a positive int, got {num_random_features!r}")


def key_sets(mask):
    """(global keys [b, n], causal keys [b, n]) of a linear attention mask: the
    [b, 2, n] key sets of `AttentionMask(key_sets=True)`, or a padding mask
    [b, n] / [b, 1, 1, n] (every query sees every real key)."""
    if mask is None:
        return None, None
    mask = ops.cast(mask, "bool")
    if len(mask.shape) == 3 and mask.shape[1] == 2:
        return mask[:, 0], mask[:, 1]
    if len(mask.shape) == 2:
        return mask, None
    if len(mask.shape) == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        return mask[:, 0, 0], None
    raise ValueError(
        "linear attention takes its mask as key sets: [b, 2, n] from "
        "AttentionMask(mode, key_sets=True), or a padding mask [b, n] / [b, 1, 1, n]; "
        f"got shape {tuple(mask.shape)} (a [q, k] matrix cannot be applied without forming "
        "the scores)"
    )
