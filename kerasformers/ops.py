"""Backend-neutral maths shared by layers and models, written with `keras.ops` only.

Nothing here imports TensorFlow, JAX or torch at module level: every function
runs on whichever backend `KERAS_BACKEND` selects (`embedding_lookup` reaches
into TensorFlow only when TensorFlow is the backend).

>>> import keras, numpy as np
>>> from kerasformers.ops import gelu_erf, sinusoidal_embeddings
>>> round(float(keras.ops.convert_to_numpy(gelu_erf(np.float32(1.0)))), 4)
0.8413
>>> tuple(sinusoidal_embeddings(np.arange(3, dtype="float32"), 4).shape)
(3, 4)
"""

import math

import keras
import numpy as np
from keras import ops

from kerasformers.saving import register

__all__ = ["embedding_lookup", "slice_update", "gelu_erf", "gelu_tanh", "swish", "relu_squared",
           "get_activation", "serialize_activation", "sinusoidal_embeddings", "sinusoidal_table",
           "apply_rotary_position_embeddings", "attention_normalize"]


def embedding_lookup(table, ids):
    """`ops.take(table, ids, axis=0)` whose gradient is dense on every backend.

    On TensorFlow a gather's gradient is `tf.IndexedSlices` with one row per
    occurrence of an id, and Keras 3's optimizers square such slices row by row
    (Adam's second moment becomes sum(g_i^2) instead of (sum g_i)^2 for a token
    seen twice in a batch), so embeddings train wrongly there (measured: a
    UniLM toy task that JAX learns to 100% stalls at 27%). Summing the rows first
    gives the update JAX and torch compute.
    """
    if keras.backend.backend() == "tensorflow":
        from kerasformers.backends.tensorflow.ops import dense_gradient

        table = dense_gradient(table)
    return ops.take(table, ids, axis=0)


def slice_update(x, start, update):
    """`ops.slice_update(x, start, update)`; on torch with concrete starts a copy and
    an index assignment (`kerasformers.backends.torch.ops.slice_update`)."""
    if keras.backend.backend() == "torch":
        from kerasformers.backends.torch.ops import slice_update as torch_slice_update

        out = torch_slice_update(x, start, update)
        if out is not NotImplemented:
            return out
    return ops.slice_update(x, start, update)


@register
def gelu_erf(x):
    """GELU with the exact erf form (BERT's original and the default here)."""
    return ops.gelu(x, approximate=False)


@register
def gelu_tanh(x):
    """GELU with the tanh approximation (GPT-2, ALBERT's `gelu_new`)."""
    return ops.gelu(x, approximate=True)


@register
def swish(x):
    return ops.silu(x)


@register
def relu_squared(x):
    return ops.square(ops.relu(x))


# Names used by bert4keras configs and by HF `hidden_act` values.
_ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_erf": gelu_erf,
    "gelu_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "swish": swish,
    "silu": swish,
    "relu_squared": relu_squared,
}


def get_activation(name):
    """Resolve an activation by name (bert4keras and HF spellings) or pass a callable.

    >>> get_activation('gelu') is gelu_erf
    True
    """
    if name is None:
        return keras.activations.get("linear")
    if callable(name):
        return name
    if isinstance(name, str) and name.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[name.lower()]
    try:
        return keras.activations.get(name)
    except Exception as e:  # keras raises a generic ValueError; name ours
        raise ValueError(f"Unknown activation {name!r}") from e


def serialize_activation(activation):
    """Inverse of `get_activation` for `get_config`."""
    if isinstance(activation, str) or activation is None:
        return activation
    for key, fn in _ACTIVATIONS.items():
        if fn is activation:
            return key
    return keras.activations.serialize(activation)


def sinusoidal_embeddings(pos, dim, base=10000.0):
    """Interleaved sin/cos table: [..., dim] = [sin0, cos0, sin1, cos1, ...].

    The interleaved layout is what bert4keras (NEZHA, RoFormer) uses.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal dim must be even, got {dim}")
    pos = ops.cast(pos, "float32")
    # angle for channel c uses frequency index c // 2; even channels take sin,
    # odd ones cos: this interleaves without a reshape (shape-agnostic).
    freq = np.power(base, -2.0 * (np.arange(dim) // 2) / dim).astype("float32")
    angles = ops.expand_dims(pos, -1) * ops.convert_to_tensor(freq)
    even = ops.convert_to_tensor(np.arange(dim) % 2 == 0)
    return ops.where(even, ops.sin(angles), ops.cos(angles))


def sinusoidal_table(num_positions, dim, base=10000.0):
    """NumPy version of `sinusoidal_embeddings` for positions 0..n-1 (float32)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    inv = np.power(base, -2.0 * np.arange(dim // 2, dtype=np.float64) / dim)
    emb = pos * inv
    table = np.stack([np.sin(emb), np.cos(emb)], axis=-1).reshape(num_positions, dim)
    return table.astype("float32")


def apply_rotary_position_embeddings(sinusoidal, *tensors):
    """Rotary position embedding (RoPE), interleaved pairs (x0,x1), (x2,x3), ...

    `sinusoidal` is [batch or 1, seq, dim] (interleaved sin/cos); each tensor is
    [batch, seq, ..., dim]. Returns the rotated tensors (same dtypes).
    """
    ndim = len(tensors[0].shape)
    sinusoidal = ops.cast(sinusoidal, tensors[0].dtype)
    while len(sinusoidal.shape) < ndim:
        sinusoidal = ops.expand_dims(sinusoidal, -2)
    # cos_pos = [c0, c0, c1, c1, ...], sin_pos = [s0, s0, s1, s1, ...]
    cos_pos = ops.repeat(sinusoidal[..., 1::2], 2, axis=-1)
    sin_pos = ops.repeat(sinusoidal[..., ::2], 2, axis=-1)
    outputs = []
    for t in tensors:
        t2 = ops.stack([-t[..., 1::2], t[..., ::2]], axis=-1)
        t2 = ops.reshape(t2, ops.shape(t))
        outputs.append(t * cos_pos + t2 * sin_pos)
    return outputs[0] if len(outputs) == 1 else outputs


def attention_normalize(scores, mask=None, axis=-1, method="softmax"):
    """Normalise attention scores under a boolean mask (True = visible).

    softmax: standard; squared_relu: relu(a)^2 / L (GAU); softmax_plus:
    softmax(a * log L / log 512) with L >= 16 (entropy-invariant scale).
    Computed in float32 so masks never overflow in half precision.
    """
    dtype = scores.dtype
    scores = ops.cast(scores, "float32")
    if method == "softmax":
        if mask is not None:
            scores = ops.where(mask, scores, -1e30)
        probs = ops.softmax(scores, axis=axis)
        if mask is not None:  # fully masked rows give 0, not a uniform row
            probs = ops.where(mask, probs, 0.0)
        return ops.cast(probs, dtype)
    if mask is None:
        length = ops.cast(ops.shape(scores)[axis], "float32")
    else:
        mask_f = ops.cast(ops.broadcast_to(mask, ops.shape(scores)), "float32")
        length = ops.sum(mask_f, axis=axis, keepdims=True)
    if method == "squared_relu":
        probs = ops.square(ops.relu(scores)) / ops.maximum(length, 1.0)
        if mask is not None:
            probs = probs * mask_f
        return ops.cast(probs, dtype)
    if method == "softmax_plus":
        length = ops.maximum(length, 16.0)
        scores = scores * ops.log(length) / math.log(512.0)
        if mask is not None:
            scores = ops.where(mask, scores, -1e30)
        return ops.cast(ops.softmax(scores, axis=axis), dtype)
    raise ValueError(f"Unknown attention normalization {method!r}")
