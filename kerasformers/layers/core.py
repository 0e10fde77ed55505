"""Small structural layers: attention masks and token selection.

>>> import numpy as np
>>> from kerasformers.layers import AttentionMask
>>> m = AttentionMask("unilm")([np.array([[5, 6, 7, 8]]), np.array([[0, 0, 1, 1]])])
>>> np.asarray(m)[0, 0].astype(int).tolist()   # source sees source; target is causal
[[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
"""

import contextlib

import keras
from keras import ops

from kerasformers.saving import register


@register
class AttentionMask(keras.layers.Layer):
    """Boolean attention mask [batch, 1, q, k] (True = may attend) from token ids.

    mode 'padding': keys equal to `pad_token_id` are hidden ([batch, 1, 1, k]);
             `pad_token_id=None` hides nothing (every id is a real token);
    'lm': padding and causal (j <= i);
    'unilm': inputs [token_ids, segment_ids]; j is visible to i iff
             cumsum(segment)[j] <= cumsum(segment)[i] (UniLM seq2seq), plus padding.

    key_sets=True: the mask of linear attention, [batch, 2, k]: row 0 the keys
    every query sees (padding: the real tokens; UniLM: the source), row 1 the
    keys seen by the queries at or after them (lm: the real tokens; UniLM: the
    target). Exact for UniLM when the segment ids are 0...0 1...1 (then padding).
    """

    def __init__(self, mode="padding", pad_token_id=0, key_sets=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("padding", "lm", "unilm"):
            raise ValueError(f"AttentionMask mode must be padding|lm|unilm, got {mode!r}")
        self.mode = mode
        self.pad_token_id = pad_token_id
        self.key_sets = key_sets

    def call(self, inputs):
        if self.mode == "unilm":
            token_ids, segment_ids = inputs
        else:
            token_ids = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        if self.pad_token_id is None:
            mask = ops.ones_like(token_ids, dtype="bool")[:, None, None, :]
        else:
            mask = ops.not_equal(token_ids, self.pad_token_id)[:, None, None, :]
        if self.key_sets:
            return key_sets(mask[:, 0, 0], self.mode, segment_ids if self.mode == "unilm" else None)
        if self.mode == "lm":
            idx = ops.arange(ops.shape(token_ids)[1])
            mask = ops.logical_and(mask, (idx[None, :] <= idx[:, None])[None, None])
        elif self.mode == "unilm":
            cs = ops.cumsum(ops.cast(segment_ids, "int32"), axis=1)
            mask = ops.logical_and(mask, (cs[:, None, :] <= cs[:, :, None])[:, None])
        return mask

    def compute_output_spec(self, inputs):
        t = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        if self.key_sets:
            return keras.KerasTensor((t.shape[0], 2, t.shape[1]), dtype="bool")
        q = 1 if self.mode == "padding" else t.shape[1]
        return keras.KerasTensor((t.shape[0], 1, q, t.shape[1]), dtype="bool")

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, pad_token_id=self.pad_token_id, key_sets=self.key_sets)
        return config


def key_sets(real, mode, segment_ids=None, segment_start=None):
    """[b, 2, n] key sets (global, causal) of linear attention from the real-token
    mask [b, n]; UniLM needs the segment ids (and `segment_start`, the running
    segment sum before them, in a cached step)."""
    none = ops.zeros_like(real)
    if mode == "padding":
        return ops.stack([real, none], axis=1)
    if mode == "lm":
        return ops.stack([none, real], axis=1)
    cs = ops.cumsum(ops.cast(segment_ids, "int32"), axis=1)
    if segment_start is not None:
        cs = cs + ops.cast(segment_start, "int32")[:, None]
    source = ops.equal(cs, 0)
    return ops.stack(
        [ops.logical_and(real, source), ops.logical_and(real, ops.logical_not(source))], axis=1
    )


@register
class TokenSelect(keras.layers.Layer):
    """x[:, index] — e.g. the [CLS] vector that feeds the pooler."""

    def __init__(self, index=0, **kwargs):
        super().__init__(**kwargs)
        self.index = index

    def call(self, inputs):
        return inputs[:, self.index]

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[2:])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config["index"] = self.index
        return config


@register
class TokenGather(keras.layers.Layer):
    """``x[b, positions[b, p]]``: the vectors at given positions of each row.

    Inputs ``[x, positions]`` with x ``[batch, length, ...]`` and int positions
    ``[batch, count]``; output ``[batch, count, ...]``. Used to run the MLM head
    only where a loss is taken (Google BERT's ``masked_lm_positions``).

    >>> import numpy as np
    >>> x = np.arange(12, dtype="float32").reshape(1, 4, 3)
    >>> np.asarray(TokenGather()([x, np.array([[3, 0]])])).tolist()
    [[[9.0, 10.0, 11.0], [0.0, 1.0, 2.0]]]
    """

    def call(self, inputs):
        x, positions = inputs
        positions = ops.cast(positions, "int32")
        index = ops.reshape(positions, ops.shape(positions) + (1,) * (len(x.shape) - 2))
        return ops.take_along_axis(x, index, axis=1)

    def compute_output_shape(self, input_shape):
        x_shape, positions_shape = input_shape
        return (x_shape[0], positions_shape[1]) + tuple(x_shape[2:])

    def compute_mask(self, inputs, mask=None):
        return None


@register
class MaskedAdd(keras.layers.Add):
    """`keras.layers.Add` that keeps the padding mask of its first masked input.

    Keras 3's Add drops the mask as soon as one input has none (Keras 2 kept it),
    so token (masked) + segment (unmasked) embeddings would lose the padding mask
    and the encoder output would no longer carry it (bert4keras relies on that
    implicit mask, e.g. for masked mean pooling or masked losses).
    """

    def compute_mask(self, inputs, mask=None):
        if not isinstance(mask, (list, tuple)):
            return mask
        return next((m for m in mask if m is not None), None)


def remat_scope(remat):
    """`keras.RematScope(mode="full")` if `remat`, else no scope (an enclosing one holds).

    Layers created inside take Keras' rematerialisation mode (see `remat_call`).
    """
    return keras.RematScope(mode="full") if remat else contextlib.nullcontext()


def remat_call(call):
    """`keras.remat(call)` for a layer call whose arguments are not all tensors.

    Keras' own remat hands every call argument to `jax.checkpoint` (which
    refuses strings such as `p_bias="rotary"`) or `tf.recompute_grad` (which
    gives keyword tensors, e.g. T5's position bias, no gradient). Here the
    float tensors go in positionally and everything else (strings, flags, None,
    boolean masks and integer ids, which have no gradient and which
    `tf.recompute_grad` would try to differentiate) is closed over.

    >>> import keras
    >>> from kerasformers.layers.core import remat_call
    >>> f = remat_call(lambda x, factor, mode="double": x * factor * (2 if mode == "double" else 1))
    >>> float(keras.ops.convert_to_numpy(f(keras.ops.ones(()), 3.0, mode="double")))
    6.0
    """

    def wrapped(*args, **kwargs):
        leaves = keras.tree.flatten((args, kwargs))
        is_tensor = [
            ops.is_tensor(x) and "float" in keras.backend.standardize_dtype(x.dtype) for x in leaves
        ]

        def tensors_only(*tensors):
            it = iter(tensors)
            full = [next(it) if t else x for x, t in zip(leaves, is_tensor)]
            call_args, call_kwargs = keras.tree.pack_sequence_as((args, kwargs), full)
            return call(*call_args, **call_kwargs)

        return keras.remat(tensors_only)(*[x for x, t in zip(leaves, is_tensor) if t])

    return wrapped


def with_sublayer_policies(layer, config):
    """`config` (the layer's get_config) recording its quantized sublayers.

    A layer that builds Dense sublayers (`q_dense`, `i0_dense`, ...) passes them
    its own dtype policy; after `model.quantize(...)` only the sublayers are
    quantized, so a reloaded model would rebuild them in float and fail to load
    their int8 weights. Keras' recipe (see `keras.dtype_policies.DTypePolicyMap`):
    the layer's dtype becomes a map from each quantized sublayer's path to its
    policy, which the rebuilt sublayers look up.

    >>> import keras
    >>> from kerasformers.layers import FeedForward
    >>> ffn = FeedForward(8, name="ffn")
    >>> _ = ffn(keras.ops.zeros((1, 2, 4)))
    >>> ffn.o_dense.quantize("int8")
    >>> ffn.get_config()["dtype"]["ffn/o_dense"].name
    'int8_from_float32'
    """

    def own_policy(sub):
        policy = sub.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            policy = policy[sub.path]
        return policy

    quantized = {
        sub.path: own_policy(sub)
        for sub in layer._flatten_layers(include_self=False)
        if sub.quantization_mode is not None
    }
    if quantized:
        default = layer.dtype_policy
        if isinstance(default, keras.dtype_policies.DTypePolicyMap):
            default = default.default_policy
        config["dtype"] = keras.dtype_policies.DTypePolicyMap(
            default_policy=default, policy_map=quantized
        )
    return config
