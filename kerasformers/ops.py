"""Backend-neutral maths shared by layers and models, written with `keras.ops` only.

Nothing here imports TensorFlow, JAX or torch at module level: every function
runs on whichever backend `KERAS_BACKEND` selects (`embedding_lookup` reaches
into TensorFlow only when TensorFlow is the backend). It also holds bert4keras
0.11.5's `backend.py` helpers under their old names (`sequence_masking`,
`batch_gather`, `search_layer`, `reshape`, `flatten`, ...; the losses and
`piecewise_linear` re-exported from `losses` / `optimizers`), so
`from kerasformers.backend import sequence_masking` ports unchanged.

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

__all__ = [
    "embedding_lookup",
    "slice_update",
    "gelu_erf",
    "gelu_tanh",
    "swish",
    "relu_squared",
    "get_activation",
    "serialize_activation",
    "sinusoidal_embeddings",
    "sinusoidal_table",
    "apply_rotary_position_embeddings",
    "attention_normalize",
]


def _tensor(x):
    """NumPy arrays to backend tensors (torch tensors do not mix with them); rest as is."""
    return ops.convert_to_tensor(x) if isinstance(x, np.ndarray) else x


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
    tensors = [_tensor(t) for t in tensors]
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


def attention_normalize(scores, mask=None, axis=-1, method="softmax", bias=None):
    """Normalise attention scores under a boolean mask (True = visible).

    softmax: standard; squared_relu: relu(a)^2 / L (GAU); softmax_plus:
    softmax(a * log L / log 512) with L >= 16 (entropy-invariant scale).
    Computed in float32 so masks never overflow in half precision.

    mask: broadcastable to `scores`, or (bert4keras' convention) a [batch, seq]
    mask of the keys along `axis` when `scores` has more axes. bias: a float
    tensor added to the scores, or a boolean one combined with `mask`, as in
    bert4keras. Unlike bert4keras, a row with no visible key gives zeros, not nan.

    >>> import numpy as np
    >>> a = np.zeros((1, 2, 3), "float32")                 # [batch, queries, keys]
    >>> p = attention_normalize(a, np.array([[1, 1, 0]]))  # a [batch, keys] mask
    >>> keras.ops.convert_to_numpy(p)[0, 0].tolist()
    [0.5, 0.5, 0.0]
    """
    scores, mask, bias = _tensor(scores), _tensor(mask), _tensor(bias)
    ndim = len(scores.shape)
    if mask is not None and len(mask.shape) == 2 and ndim > 2:
        mask = align(ops.cast(mask, "bool"), [0, axis % ndim], ndim)
    if bias is not None:
        if keras.backend.standardize_dtype(bias.dtype) == "bool":
            mask = bias if mask is None else ops.logical_and(mask, bias)
        else:
            scores = scores + ops.cast(bias, scores.dtype)
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


# ------------------------------------------------- bert4keras.backend's helpers
# Same names and conventions as bert4keras 0.11.5's backend.py, written with
# keras.ops so they run on every backend. What that module had and is gone on
# purpose (`K`, `set_gelu`, `recompute_grad`, `symbolic`, `where`, `dtype`,
# `get_available_gpus`, the TF_KERAS / RECOMPUTE switches) is listed with its
# replacement in the README's migration table.
from kerasformers.losses import (  # noqa: E402  (one implementation each)
    multilabel_categorical_crossentropy,
    sparse_multilabel_categorical_crossentropy,
)
from kerasformers.optimizers import piecewise_linear  # noqa: E402


def _ndim(x):
    return len(x.shape)


def align(tensor, axes, ndim=None):
    """bert4keras' `align`: a batched `expand_dims`; input axis i becomes axis `axes[i]`
    of an `ndim`-dimensional result (size-1 axes elsewhere). `axes` keep their order.

    >>> import numpy as np
    >>> tuple(align(np.ones((2, 5)), [0, 2], 4).shape)
    (2, 1, 5, 1)
    >>> tuple(align(np.ones((2, 5, 3)), [0, 1, -1], 4).shape)
    (2, 5, 1, 3)
    """
    if len(axes) != _ndim(tensor):
        raise ValueError(f"align: {len(axes)} axes for a {_ndim(tensor)}-d tensor")
    if ndim is None:
        if min(axes) < 0:
            raise ValueError("align: negative axes need ndim")
        ndim = max(axes) + 1
    axes = [a % ndim for a in axes]
    if sorted(axes) != axes or len(set(axes)) != len(axes):
        raise ValueError(f"align: axes must be increasing (after wrapping), got {axes}")
    tensor = ops.convert_to_tensor(tensor) if not hasattr(tensor, "shape") else tensor
    for axis in range(ndim):
        if axis not in axes:
            tensor = ops.expand_dims(tensor, axis)
    return tensor


def _dims(tensor):
    """Static sizes where known, dynamic ones (TensorFlow graphs) elsewhere."""
    static, dynamic = tensor.shape, ops.shape(tensor)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def reshape(tensor, *args):
    """bert4keras' flexible `reshape`: `reshape(x, shape)` is `ops.reshape`;
    `reshape(x, shape1, axis1, shape2, axis2, ...)` splits axis1 into shape1, ...
    (one -1 per shape allowed).

    >>> import numpy as np
    >>> tuple(reshape(np.zeros((2, 6, 4)), (3, -1), 1, (2, 2), 2).shape)
    (2, 3, 2, 2, 2)
    """
    if len(args) == 1:
        return ops.reshape(tensor, args[0])
    if len(args) % 2:
        raise ValueError("reshape: give (shape, axis) pairs")
    dims = [[d] for d in _dims(tensor)]
    for shape, axis in zip(args[::2], args[1::2]):
        shape = list(shape)
        if shape.count(-1) > 1:
            raise ValueError(f"reshape: at most one -1 in {shape}")
        if -1 in shape:  # Python ints: no traced product of a shape (JAX)
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = dims[axis][0] // known
        dims[axis] = shape
    return ops.reshape(tensor, [d for shape in dims for d in shape])


def flatten(tensor, start=None, end=None):
    """bert4keras' `flatten`: merge axes `start:end` (default all) into one.

    >>> import numpy as np
    >>> tuple(flatten(np.zeros((2, 3, 4, 5)), 1, 3).shape)
    (2, 12, 5)
    """
    ndim = _ndim(tensor)
    start = 0 if start is None else start % ndim
    end = ndim if end is None else (end if end >= 0 else ndim + end)
    dims = _dims(tensor)
    merged = dims[start:end]
    size = math.prod(merged) if all(isinstance(d, int) for d in merged) else -1
    return ops.reshape(tensor, dims[:start] + [size] + dims[end:])


def _mask_value(value, dtype):
    if isinstance(value, str):
        if value not in ("-inf", "inf"):
            raise ValueError(
                f"sequence_masking value must be a number, '-inf' or 'inf', got {value!r}"
            )
        value = float(value)
    return value


def sequence_masking(x, mask=None, value=0, axis=None, bias=None, return_mask=False):
    """bert4keras' `sequence_masking`: set `x` to `value` where `mask` is 0/False.

    mask: [batch, seq] (bool or 0/1), aligned with `x`'s axis `axis` (default 1;
    a list of axes masks each of them, the masks combined with and);
    value: a number, '-inf' or 'inf' (bert4keras 0.11.5 used true infinities;
    under float16 a large finite number overflows to inf anyway);
    bias: added to the kept entries (a float tensor) or a further boolean mask,
    broadcastable to `x`; with `mask=None` a float bias is just added.
    With `return_mask` also returns the aligned boolean mask (or None).
    `mask=None` and `bias=None` return `x` unchanged.

    >>> import numpy as np
    >>> x = np.arange(6, dtype="float32").reshape(1, 3, 2)
    >>> y = sequence_masking(x, np.array([[1, 1, 0]]), "-inf")
    >>> keras.ops.convert_to_numpy(y)[0].tolist()
    [[0.0, 1.0], [2.0, 3.0], [-inf, -inf]]
    """
    if mask is None and bias is None:
        return (x, None) if return_mask else x
    value = _mask_value(value, x.dtype)
    if mask is None:
        if keras.backend.standardize_dtype(bias.dtype) == "bool":
            mask = bias
            x = ops.where(mask, x, ops.cast(value, x.dtype))
        else:
            x = x + bias
        return (x, mask) if return_mask else x
    ndim = _ndim(x)
    axes = [1] if axis is None else (list(axis) if isinstance(axis, (list, tuple)) else [axis])
    axes = [a % ndim for a in axes]
    mask = ops.cast(mask, "bool")
    full = align(mask, [0, axes[0]], ndim)
    for a in axes[1:]:
        full = ops.logical_and(full, align(mask, [0, a], ndim))
    mask = full
    if bias is not None:
        if keras.backend.standardize_dtype(bias.dtype) == "bool":
            mask = ops.logical_and(mask, bias)
        else:
            x = x + bias
    x = ops.where(mask, x, ops.cast(value, x.dtype))
    return (x, mask) if return_mask else x


def batch_gather(params, indices):
    """bert4keras' `batch_gather` (`tf.gather(params, indices, batch_dims=indices.ndim - 1)`).

    params [B..., n, ...], indices [B..., k] integers in [0, n): returns
    [B..., k, ...], row b of the result taken from row b of params.

    >>> import numpy as np
    >>> params = np.array([[10., 11., 12.], [20., 21., 22.]])
    >>> keras.ops.convert_to_numpy(batch_gather(params, np.array([[2, 0], [1, 1]]))).tolist()
    [[12.0, 10.0], [21.0, 21.0]]
    """
    indices = ops.convert_to_tensor(indices)
    if "int" not in keras.backend.standardize_dtype(indices.dtype):
        indices = ops.cast(indices, "int32")
    params = ops.convert_to_tensor(params) if not hasattr(params, "shape") else params
    batch_dims = _ndim(indices) - 1
    extra = _ndim(params) - _ndim(indices)
    if extra < 0:
        raise ValueError("batch_gather: indices have more axes than params")
    idx = ops.reshape(indices, tuple(_dims(indices)) + (1,) * extra)
    idx = ops.broadcast_to(idx, _dims(indices) + _dims(params)[batch_dims + 1 :])
    return ops.take_along_axis(params, idx, axis=batch_dims)


def pool1d(x, pool_size, strides=1, padding="valid", data_format=None, pool_mode="max"):
    """bert4keras' `pool1d`: max or average pooling of a sequence [batch, seq, dim].

    >>> import numpy as np
    >>> x = np.array([[[1.], [3.], [2.], [5.]]], "float32")
    >>> keras.ops.convert_to_numpy(pool1d(x, 2, 2))[0, :, 0].tolist()
    [3.0, 5.0]
    """
    pool = {"max": ops.max_pool, "avg": ops.average_pool}
    if pool_mode not in pool:
        raise ValueError(f"pool_mode must be 'max' or 'avg', got {pool_mode!r}")
    return pool[pool_mode](x, pool_size, strides, padding, data_format=data_format)


def divisible_temporal_padding(x, n):
    """bert4keras' `divisible_temporal_padding`: right-pad axis 1 with zeros to a multiple of n.

    >>> import numpy as np
    >>> tuple(divisible_temporal_padding(np.ones((2, 5, 3)), 4).shape)
    (2, 8, 3)
    """
    length = _dims(x)[1]
    pad = (-length) % n
    widths = [[0, 0] for _ in range(_ndim(x))]
    widths[1][1] = pad
    return ops.pad(x, widths)


def root_mean_square(x, axis=None, keepdims=False):
    """bert4keras' `root_mean_square`: sqrt(mean(x^2)) over `axis`.

    >>> round(float(root_mean_square(np.array([3.0, 4.0]) * np.sqrt(2))), 4)
    5.0
    """
    return ops.sqrt(ops.mean(ops.square(x), axis=axis, keepdims=keepdims))


def search_layer(inputs, name, exclude_from=None):
    """bert4keras' `search_layer`: the layer called `name` that `inputs` (a Keras
    tensor of a functional model, or a layer) depends on, searching upstream
    through the graph (and into nested models); None if there is none.

    >>> ids = keras.Input((4,), dtype="int32")
    >>> x = keras.layers.Embedding(10, 8, name="Embedding-Token")(ids)
    >>> y = keras.layers.Dense(2, name="head")(x)
    >>> search_layer(y, "Embedding-Token").name
    'Embedding-Token'
    >>> search_layer(y, "nope") is None
    True
    """
    if exclude_from is None:
        exclude_from = set()
    if isinstance(inputs, keras.Operation):
        layer = inputs
    else:
        layer = inputs._keras_history[0]  # (operation, node index, tensor index)
    if layer.name == name:
        return layer
    if layer in exclude_from:
        return None
    exclude_from.add(layer)
    if isinstance(layer, keras.Model):
        for sublayer in layer.layers:
            if sublayer.name == name:
                return sublayer
    nodes = layer._inbound_nodes
    for parent in nodes[0].parent_nodes if nodes else []:
        found = search_layer(parent.operation, name, exclude_from)
        if found is not None:
            return found
    return None


@register
def leaky_relu(x, alpha=0.2):
    """bert4keras' `leaky_relu` (slope 0.2 by default, Keras' is 0.2 too).

    >>> round(float(leaky_relu(np.float32(-1.0))), 4)
    -0.2
    """
    return ops.leaky_relu(x, negative_slope=alpha)


@register
class Sinusoidal(keras.initializers.Initializer):
    """bert4keras' `Sinusoidal` initializer: a [size, dim] interleaved sin/cos table
    (`sinusoidal_embeddings(arange(size), dim)`), e.g. for a trainable
    `keras.layers.Embedding(size, dim, embeddings_initializer=Sinusoidal())`.

    >>> table = keras.ops.convert_to_numpy(Sinusoidal()((4, 6)))
    >>> bool(np.allclose(table, sinusoidal_table(4, 6), atol=1e-6))
    True
    """

    def __call__(self, shape, dtype=None):
        size, dim = shape
        table = sinusoidal_embeddings(ops.arange(size, dtype="float32"), dim)
        return ops.cast(table, dtype or keras.config.floatx())


__all__ += [
    "search_layer",
    "align",
    "reshape",
    "flatten",
    "sequence_masking",
    "batch_gather",
    "pool1d",
    "divisible_temporal_padding",
    "root_mean_square",
    "leaky_relu",
    "Sinusoidal",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "piecewise_linear",
]
