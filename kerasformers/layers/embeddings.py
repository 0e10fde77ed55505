"""Token and position embeddings.

>>> import numpy as np
>>> from kerasformers.layers import Embedding
>>> emb = Embedding(10, 4)
>>> x = emb(np.array([[1, 2, 0]]))
>>> tuple(x.shape), tuple(emb(x, mode="dense").shape)   # tied output head
((1, 3, 4), (1, 3, 10))
"""

import math

import keras
import numpy as np
from keras import ops

from kerasformers.ops import embedding_lookup, sinusoidal_embeddings, sinusoidal_table
from kerasformers.saving import register


@register
class Embedding(keras.layers.Embedding):
    """Keras Embedding with a tied "dense" mode and a configurable padding id.

    `call(ids)` embeds; `call(x, mode="dense")` multiplies by the transposed
    table, which is how MLM/LM heads share the token embedding. The mask marks
    `ids != pad_token_id` (only when `mask_zero=True`; `pad_token_id=None` means
    every id is a real token, e.g. GPT-2, and gives no mask).
    `first_token_valid=True` always marks position 0 as real (T5, where the
    decoder's start token is the padding id 0), as bert4keras' Embedding did.

    `quantize("int8")` (e.g. through `model.quantize("int8")`) stores the table
    as int8 rows with one scale per token, as Keras' Embedding does; the tied
    "dense" mode then runs like Keras' int8 Dense (inputs quantized per token,
    int8 x int8 product, de-scaled). Other modes raise NotImplementedError
    (Model.quantize warns and keeps the table in float).
    """

    def __init__(self, input_dim, output_dim, pad_token_id=0, first_token_valid=False, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.pad_token_id = pad_token_id
        self.first_token_valid = first_token_valid

    def call(self, inputs, mode="embedding"):
        if mode == "dense":
            kernel = ops.cast(self.embeddings, self.compute_dtype)
            return ops.matmul(ops.cast(inputs, self.compute_dtype), ops.transpose(kernel))
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        return ops.cast(embedding_lookup(self.embeddings, inputs), self.compute_dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(
                f"Embedding {self.name!r}: kerasformers' Embedding (token table and tied "
                f"LM head) supports quantize('int8') only, not {mode!r}; it stays in float"
            )
        super().quantize(mode, type_check=False, config=config)  # Keras refuses subclasses

    def _int8_build(self, embeddings_shape, config=None):
        super()._int8_build(embeddings_shape, config)
        default = keras.quantizers.AbsMaxQuantizer(axis=-1)
        self.inputs_quantizer = (
            default
            if config is None
            else keras.quantizers.QuantizationConfig.activation_quantizer_or_default(
                config, default
            )
        )

    def _int8_call(self, inputs, mode="embedding", training=None):
        if mode != "dense":
            return super()._int8_call(inputs)
        # x @ (rows / scale[:, None]).T, the way Keras' int8 Dense multiplies
        x = ops.cast(inputs, self.compute_dtype)
        output_scale = self.embeddings_scale
        if self.inputs_quantizer is not None:
            x, inputs_scale = self.inputs_quantizer(x, axis=-1)
            output_scale = ops.multiply(output_scale, inputs_scale)
        y = ops.matmul(x, ops.transpose(self._embeddings))
        y = ops.divide(ops.cast(y, self.compute_dtype), ops.cast(output_scale, self.compute_dtype))
        if self.lora_enabled:
            delta = ops.matmul(self.lora_embeddings_a, self.lora_embeddings_b)
            delta = ops.cast(delta * (self.lora_alpha / self.lora_rank), self.compute_dtype)
            y = y + ops.matmul(ops.cast(inputs, self.compute_dtype), ops.transpose(delta))
        return y

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero or self.pad_token_id is None:
            return None
        if "float" in str(getattr(inputs, "dtype", "")):  # dense mode
            return mask
        mask = ops.not_equal(inputs, self.pad_token_id)
        if self.first_token_valid:
            mask = ops.concatenate([ops.ones_like(mask[:, :1]), mask[:, 1:]], axis=1)
        return mask

    def compute_output_spec(self, inputs, mode="embedding"):
        if mode == "dense":
            shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
        else:
            shape = tuple(inputs.shape) + (self.output_dim,)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        config["first_token_valid"] = self.first_token_valid
        return config


def _positions(length, offset=0):
    """int32 positions offset, offset + 1, ..., offset + length - 1."""
    positions = ops.arange(length, dtype="int32")
    if isinstance(offset, int) and offset == 0:
        return positions
    return positions + ops.cast(offset, "int32")


def _batch_positions(length, offset):
    """[1, length] positions from a scalar offset, [batch, length] from a [batch, 1]
    offset (one start per row, e.g. rows whose prompts hold padding); never < 0."""
    positions = _positions(length, offset)
    if len(positions.shape) == 1:
        return ops.expand_dims(positions, 0)
    return ops.maximum(positions, 0)


def _query_key_positions(inputs, offset, key_length):
    q, k = inputs
    if key_length is None:
        key_length = ops.shape(k)[1]
    return _positions(ops.shape(q)[1], offset), ops.arange(key_length, dtype="int32")


@register
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding added (or merged) to its input.

    merge_mode: 'add' | 'mul' | 'zero' (return the embeddings) | 'concat'.
    hierarchical: None, True (alpha 0.4) or a float alpha: position p uses
    alpha * E'[p // n] + (1 - alpha) * E'[p % n] with E' = (E - alpha E[0]) / (1 - alpha),
    so n learned positions cover n^2 (long-text BERT).
    custom_position_ids: inputs are [x, position_ids].
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        merge_mode="add",
        hierarchical=None,
        embeddings_initializer="zeros",
        custom_position_ids=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.merge_mode = merge_mode
        self.hierarchical = hierarchical
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.custom_position_ids = custom_position_ids
        self.supports_masking = True

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
        )

    def call(self, inputs, offset=0):
        """`offset`: position of the first input token (incremental decoding), a
        scalar or one per row ([batch, 1])."""
        if self.custom_position_ids:
            inputs, position_ids = inputs
            position_ids = ops.cast(position_ids, "int32")
        else:
            position_ids = _batch_positions(ops.shape(inputs)[1], offset)
        table = ops.cast(self.embeddings, self.compute_dtype)
        if self.hierarchical:
            alpha = 0.4 if self.hierarchical is True else self.hierarchical
            table = (table - alpha * table[:1]) / (1 - alpha)
            high = embedding_lookup(table, position_ids // self.input_dim)
            low = embedding_lookup(table, position_ids % self.input_dim)
            pos = alpha * high + (1 - alpha) * low
        else:
            pos = embedding_lookup(table, position_ids)
        return _merge(inputs, pos, self.merge_mode)

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        if self.custom_position_ids:
            input_shape = input_shape[0]
        if self.merge_mode == "concat":
            return tuple(input_shape[:2]) + (input_shape[2] + self.output_dim,)
        return tuple(input_shape[:2]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            merge_mode=self.merge_mode,
            hierarchical=self.hierarchical,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            custom_position_ids=self.custom_position_ids,
        )
        return config


def _merge(inputs, pos, merge_mode):
    if merge_mode == "add":
        return inputs + ops.cast(pos, inputs.dtype)
    if merge_mode == "mul":
        return inputs * (ops.cast(pos, inputs.dtype) + 1.0)
    if merge_mode == "zero":
        return ops.cast(pos, inputs.dtype) if "float" in str(inputs.dtype) else pos
    if merge_mode == "concat":
        pos = ops.cast(pos, inputs.dtype)
        pos = ops.broadcast_to(pos, tuple(ops.shape(inputs)[:2]) + (pos.shape[-1],))
        return ops.concatenate([inputs, pos], axis=-1)
    raise ValueError(f"Unknown merge_mode {merge_mode!r}")


@register
class SinusoidalPositionEmbedding(keras.layers.Layer):
    """Fixed interleaved sin/cos position embedding; merge_mode 'zero' feeds RoPE.

    Output for 'zero' is [1 or batch, seq, output_dim] in float32.
    """

    def __init__(self, output_dim, merge_mode="add", custom_position_ids=False, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.merge_mode = merge_mode
        self.custom_position_ids = custom_position_ids
        self.supports_masking = True

    def call(self, inputs, offset=0):
        """`offset`: position of the first input token (incremental decoding), a
        scalar or one per row ([batch, 1])."""
        if self.custom_position_ids:
            inputs, position_ids = inputs
        else:
            position_ids = _batch_positions(ops.shape(inputs)[1], offset)
        pos = sinusoidal_embeddings(position_ids, self.output_dim)
        if self.merge_mode == "zero":
            return pos
        return _merge(inputs, pos, self.merge_mode)

    def compute_mask(self, inputs, mask=None):
        if self.merge_mode == "zero":
            return None
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_spec(self, inputs, **kwargs):
        x = inputs[0] if self.custom_position_ids else inputs
        if self.merge_mode == "zero":
            batch = inputs[1].shape[0] if self.custom_position_ids else 1
            return keras.KerasTensor((batch, x.shape[1], self.output_dim), dtype="float32")
        last = x.shape[2] + self.output_dim if self.merge_mode == "concat" else x.shape[2]
        return keras.KerasTensor(tuple(x.shape[:2]) + (last,), dtype=x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_dim=self.output_dim,
            merge_mode=self.merge_mode,
            custom_position_ids=self.custom_position_ids,
        )
        return config


@register
class RelativePositionEmbedding(keras.layers.Layer):
    """Classical (Shaw et al.) relative position embedding, as NEZHA uses.

    Inputs [q, k] (only their lengths matter); output [q_len, k_len, output_dim]
    embedding distance j - i clipped to +-(input_dim - 1) // 2. With
    `sinusoidal=True` (NEZHA) the table is the fixed interleaved sin/cos table
    and holds no weight; otherwise it is a trainable weight.
    """

    def __init__(
        self, input_dim, output_dim, sinusoidal=False, embeddings_initializer="zeros", **kwargs
    ):
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.sinusoidal = sinusoidal
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        if not self.sinusoidal:
            self.embeddings = self.add_weight(
                name="embeddings",
                shape=(self.input_dim, self.output_dim),
                initializer=self.embeddings_initializer,
            )

    def call(self, inputs, offset=0, key_length=None):
        """`offset`: position of the first query; `key_length`: number of keys
        (default: the length of `k`). Both serve incremental decoding, where new
        queries at offset.. attend a cache of `key_length` keys."""
        q_idx, k_idx = _query_key_positions(inputs, offset, key_length)
        max_dist = (self.input_dim - 1) // 2
        rel = ops.clip(k_idx[None, :] - q_idx[:, None], -max_dist, max_dist) + max_dist
        if self.sinusoidal:
            table = ops.convert_to_tensor(sinusoidal_table(self.input_dim, self.output_dim))
        else:
            table = self.embeddings
        return ops.cast(embedding_lookup(table, rel), self.compute_dtype)

    def compute_output_spec(self, inputs, **kwargs):
        q, k = inputs
        return keras.KerasTensor(
            (q.shape[1], k.shape[1], self.output_dim), dtype=self.compute_dtype
        )

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            sinusoidal=self.sinusoidal,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config


def t5_bucket_table(num_buckets, max_distance):
    """Bucket of every distance 0..max_distance for T5's log-bucketing (one direction).

    Distances below num_buckets // 2 get their own bucket; longer ones share
    logarithmically wider buckets up to max_distance, and everything farther
    lands in the last bucket. Computed in float32 exactly as Mesh TF and
    transformers do, so the boundary distances (16, 32, 64 for the defaults)
    fall into the same buckets as in the reference.
    """
    n = np.arange(max_distance + 1)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        ratio = np.log(n.astype("float32") / np.float32(max_exact))
    large = (
        ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    )
    large = max_exact + np.where(n < max_exact, 0, large).astype("int32")
    large = np.minimum(large, num_buckets - 1)
    return np.where(n < max_exact, n, large).astype("int32")


@register
class RelativePositionEmbeddingT5(RelativePositionEmbedding):
    """T5's bucketed relative position bias (Raffel et al. 2020).

    Inputs [q, k] (only their lengths matter); output [q_len, k_len, output_dim]
    (output_dim = heads): the learned bias of the bucket of distance k - q.
    `input_dim` buckets (32 in T5), `max_distance` 128; `bidirectional=True`
    (encoder) spends half the buckets on keys after the query, False (decoder)
    maps every key after the query to bucket 0. Weight `embeddings`
    [buckets, heads] (transformers' layout; Mesh TF stores its transpose).
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        max_distance=128,
        bidirectional=True,
        embeddings_initializer="zeros",
        **kwargs,
    ):
        super().__init__(
            input_dim, output_dim, embeddings_initializer=embeddings_initializer, **kwargs
        )
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def compute_position_ids(self, relative_position):
        """Bucket ids of `relative_position` (= key index - query index)."""
        num_buckets = self.input_dim
        buckets = 0
        if self.bidirectional:
            num_buckets //= 2
            buckets = ops.cast(relative_position > 0, "int32") * num_buckets
            n = ops.abs(relative_position)
        else:
            n = ops.maximum(-relative_position, 0)
        table = ops.convert_to_tensor(t5_bucket_table(num_buckets, self.max_distance))
        return buckets + ops.take(table, ops.minimum(n, self.max_distance), axis=0)

    def call(self, inputs, offset=0, key_length=None):
        q_idx, k_idx = _query_key_positions(inputs, offset, key_length)
        buckets = self.compute_position_ids(k_idx[None, :] - q_idx[:, None])
        return ops.cast(embedding_lookup(self.embeddings, buckets), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("sinusoidal", None)
        config.update(max_distance=self.max_distance, bidirectional=self.bidirectional)
        return config
