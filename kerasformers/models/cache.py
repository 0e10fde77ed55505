"""Incremental decoding: the key/value cache and one cached step of a model.

A cache is a dict of tensors (a pytree: `jax.jit`, `tf.function` and beam
reordering treat it as plain data):

  index         int32 scalar, number of positions already written;
  key_mask      bool [batch, max_length], written and not padding;
  segment       int32 [batch, max_length], cumulative segment sums (UniLM only);
  segment_total int32 [batch], the running segment sum (UniLM only);
  self          one (k, v) per self-attention call, [batch, max_length, heads, size];
  cross         one (k, v) per cross-attention call, the projected encoder
                states (T5 decoder only);
  context_mask  bool [batch, 1, 1, context_length] (T5 decoder only);
  position_shift int32 [batch], optional: subtracted from the absolute
                position of every new token (rows whose cached part ends in
                padding continue as if the padding were not there).

A step runs the model's own template (`Transformer.call`) on the new tokens
only, with the layers it already has: attention layers read and extend their
cache slot, position layers start at `index`, and the attention mask relates
the new queries to every cached key exactly as the full model's mask does, so
every step's outputs equal the uncached forward pass at those positions.
"""

import keras
from keras import ops

from kerasformers import ops as K
from kerasformers.layers import (
    GatedAttentionUnit,
    MultiHeadAttention,
    PositionEmbedding,
    RelativePositionEmbedding,
    SinusoidalPositionEmbedding,
)
from kerasformers.layers.core import key_sets as key_set_mask


def _is_self_attention(inputs):
    if not isinstance(inputs, (list, tuple)):
        return True
    return inputs[1] is inputs[0]


def _concrete_int(x):
    """int(x) when x is a concrete value; None while tracing (jit, tf.function)."""
    try:
        return int(x)
    except Exception:  # a tracer: no value to check
        return None


def empty_cache(batch_size, max_length, attention_shapes, dtype, unilm=False, states=None):
    """A zero cache; `attention_shapes` lists (heads, key_size, head_size) per
    self-attention call. `states`: linear attention's recurrent states, one per
    self-attention call, in place of the key/value buffers."""
    cache = {
        "index": ops.convert_to_tensor(0, dtype="int32"),
        "key_mask": ops.zeros((batch_size, max_length), dtype="bool"),
        "self": tuple(
            (
                ops.zeros((batch_size, max_length, heads, key_size), dtype=dtype),
                ops.zeros((batch_size, max_length, heads, head_size), dtype=dtype),
            )
            for heads, key_size, head_size in attention_shapes
        )
        if states is None
        else tuple(states),
    }
    if unilm:
        cache["segment"] = ops.zeros((batch_size, max_length), dtype="int32")
        cache["segment_total"] = ops.zeros((batch_size,), dtype="int32")
    return cache


def reorder_cache(cache, indices):
    """Select (and repeat) batch rows of a cache, e.g. the surviving beams."""
    indices = ops.convert_to_tensor(indices, dtype="int32")
    out = {}
    for key, value in cache.items():
        if key == "index":
            out[key] = value
        elif key in ("self", "cross"):
            out[key] = tuple(tuple(ops.take(t, indices, axis=0) for t in slot) for slot in value)
        else:
            out[key] = ops.take(value, indices, axis=0)
    return out


class Step:
    """The state of one cached call: masks, position offset, cache slots."""

    def __init__(
        self,
        inputs,
        cache,
        mode,
        pad_token_id,
        mask=None,
        key_sets=False,
        logit_layers=(),
        plan=None,
        inplace=False,
    ):
        token_ids = inputs[0]
        length = token_ids.shape[1]
        max_length = cache["key_mask"].shape[1]
        index = ops.cast(cache["index"], "int32")
        start = _concrete_int(index)
        if start is not None and start + length > max_length:
            raise ValueError(
                f"the cache holds {max_length} positions: {start} are written "
                f"and {length} more do not fit (init_cache(max_length=...))"
            )
        self.cache = cache
        self.index = index
        self.start = start  # the index as a Python int (None while tracing)
        self.max_length = max_length
        if mask is not None:
            real = ops.cast(mask, "bool")
        elif pad_token_id is None:
            real = ops.ones(ops.shape(token_ids), dtype="bool")
        else:
            real = ops.not_equal(token_ids, pad_token_id)
        self.key_mask = K.slice_update(cache["key_mask"], (0, index), real)
        keys = self.key_mask[:, None, None, :]
        if mode == "unilm" and len(inputs) < 2:
            raise ValueError("application='unilm' needs [token_ids, segment_ids]")
        if key_sets and mode in ("lm", "unilm"):
            # linear attention: the new keys as two sets; earlier keys are in the state
            segments = inputs[1] if mode == "unilm" else None
            total = cache.get("segment_total")
            self.attention_mask = key_set_mask(real, mode, segments, total)
            if mode == "unilm":
                sums = total[:, None] + ops.cumsum(ops.cast(inputs[1], "int32"), axis=1)
                self.segment = K.slice_update(cache["segment"], (0, index), sums)
                self.segment_total = sums[:, -1]
        elif mode == "lm":
            queries = ops.arange(length, dtype="int32") + index
            visible = ops.arange(max_length, dtype="int32")[None, :] <= queries[:, None]
            self.attention_mask = ops.logical_and(keys, visible[None, None])
        elif mode == "unilm":
            sums = cache["segment_total"][:, None] + ops.cumsum(
                ops.cast(inputs[1], "int32"), axis=1
            )
            self.segment = K.slice_update(cache["segment"], (0, index), sums)
            self.segment_total = sums[:, -1]
            visible = self.segment[:, None, :] <= sums[:, :, None]
            self.attention_mask = ops.logical_and(keys, visible[:, None])
        else:
            raise ValueError(f"incremental decoding needs a causal mask, not {mode!r}")
        self.mode = mode
        self.logit_layers = set(logit_layers)
        shift = cache.get("position_shift")
        self.shift = shift
        self.position_offset = (
            index if shift is None else (index - ops.cast(shift, "int32")[:, None])
        )
        self.new_self = []
        self.cross_count = 0
        self.context_mask = cache.get("context_mask")
        self.plan = plan  # torch: a backends.torch Plan runs the common layers as torch calls
        self.inplace = inplace  # torch fast path: write keys/values into the given buffers

    def attention_arguments(self, inputs):
        """Cache arguments of the next attention call, and whether it is self-attention."""
        if _is_self_attention(inputs):
            slots = self.cache["self"]
            position = len(self.new_self)
            if position >= len(slots):
                raise ValueError(
                    f"the model made more self-attention calls than the cache "
                    f"has slots ({len(slots)})"
                )
            return {"cache": slots[position], "cache_index": self.index}, True
        slots = self.cache.get("cross", ())
        if self.cross_count >= len(slots):
            raise ValueError("cross-attention without a cached context (init_cache(context))")
        self.cross_count += 1
        return {"cache": slots[self.cross_count - 1]}, False

    def position_arguments(self, layer, inputs):
        if isinstance(layer, RelativePositionEmbedding):
            if self.shift is not None:
                raise ValueError(
                    "position_shift (rows with a gap of padding) is not supported "
                    f"by relative positions ({layer.name}); decode such rows "
                    "one at a time"
                )
            arguments = {"offset": self.index}
            if _is_self_attention(inputs):
                arguments["key_length"] = self.max_length
            return arguments
        if isinstance(layer, (PositionEmbedding, SinusoidalPositionEmbedding)):
            return {} if layer.custom_position_ids else {"offset": self.position_offset}
        return {}

    def call(self, layer, inputs, arguments):
        """Call `layer` as part of the step (cache and position arguments added)."""
        if isinstance(layer, (MultiHeadAttention, GatedAttentionUnit)):
            extra, is_self = self.attention_arguments(inputs)
            result = NotImplemented
            if self.plan is not None and isinstance(layer, MultiHeadAttention):
                result = self.plan.attention(
                    layer,
                    inputs,
                    arguments,
                    extra["cache"],
                    self.start if is_self else None,
                    self.inplace,
                )
            if result is NotImplemented:
                result = layer(inputs, **arguments, **extra)
            outputs, kv = result
            if is_self:
                self.new_self.append(kv)
            return outputs
        if layer.name in self.logit_layers:  # the LM head without its softmax
            if isinstance(layer, keras.layers.Dense) and layer.quantization_mode is not None:
                return _without_activation(layer, inputs)
            if isinstance(layer, keras.layers.Dense):
                x = ops.matmul(ops.cast(inputs, layer.compute_dtype), layer.kernel)
                return x + layer.bias if layer.use_bias else x
            return inputs
        positions = self.position_arguments(layer, inputs)
        if positions:
            arguments = {**arguments, **positions}
        if self.plan is not None:
            outputs = self.plan.call(layer, inputs, arguments)
            if outputs is not NotImplemented:
                return outputs
        return layer(inputs, **arguments)

    def updated_cache(self, length):
        if len(self.new_self) != len(self.cache["self"]):
            raise ValueError(
                f"the step used {len(self.new_self)} self-attention calls, the "
                f"cache has {len(self.cache['self'])} slots"
            )
        cache = dict(self.cache)
        cache["index"] = self.index + length
        cache["key_mask"] = self.key_mask
        cache["self"] = tuple(self.new_self)
        if self.mode == "unilm":
            cache["segment"] = self.segment
            cache["segment_total"] = self.segment_total
        return cache


def _without_activation(layer, inputs):
    """A quantized Dense's output before its activation. Its `kernel` is the raw
    int8/int4 tensor, not the matrix it stands for, so the layer's own quantized
    call runs, with the activation switched off (call_with_cache holds its lock)."""
    activation = layer.activation
    layer.activation = None
    try:
        return layer(inputs)
    finally:
        layer.activation = activation


def as_int_inputs(inputs):
    """The step inputs as a list of int32 tensors."""
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    return [ops.convert_to_tensor(x, dtype="int32") for x in inputs]


def compute_dtype_of(layers):
    for layer in layers.values():
        if isinstance(layer, MultiHeadAttention):
            return layer.compute_dtype
    return keras.config.floatx()
