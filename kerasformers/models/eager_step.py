"""The torch fast path of a cached step: the hot layers' math as plain torch calls.

On torch Keras runs eagerly, and every `Layer.__call__` and `keras.ops` call
costs tens of microseconds of Python (dtype checks, tree flattening, masks).
A one-token GPT2-small step makes ~150 layer calls and ~600 op calls: measured
on 2 cores, about 50 ms of overhead around 25 ms of matmuls. Inside a cached
step everything is already concrete (shapes, masks, dtypes), so the common
layers run here instead: the same math, one torch call per operation.

`fast_call(step, layer, inputs, arguments)` returns the layer's output, or
`NotImplemented` when the layer is not one of these (or is quantized, has LoRA
adapters, or computes in another dtype than it stores): the caller then goes
through Keras as usual. `tests/models/test_cache.py` checks every cached step
against the uncached model on torch, so these kernels are under the same test
as the Keras layers they stand in for.
"""

import keras

from kerasformers import backend as K
from kerasformers.layers import FeedForward, LayerNormalization
from kerasformers.layers.core import MaskedAdd
from kerasformers.layers.embeddings import Embedding

try:  # torch is optional: this module is only used on the torch backend
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None


def available():
    return torch is not None and keras.backend.backend() == "torch"


def _plain(layer):
    """A layer whose call is plain float math on its stored variables."""
    policy = layer.dtype_policy
    return (policy.quantization_mode is None and not getattr(layer, "lora_enabled", False)
            and policy.variable_dtype == policy.compute_dtype)


def _raw(variable):
    """The torch tensor behind a Keras variable (`.value` re-checks autocasting on
    every read; `_plain` layers store what they compute with)."""
    value = getattr(variable, "_value", None)
    return variable.value if value is None else value


def _activation(fn, x):
    if fn is None or fn is keras.activations.linear:
        return x
    if fn is K.gelu_erf:
        return F.gelu(x)
    if fn is K.gelu_tanh:
        return F.gelu(x, approximate="tanh")
    if fn is keras.activations.relu:
        return torch.relu(x)
    return fn(x)


def dense(layer, x):
    """keras.layers.Dense: x @ kernel + bias, then the activation (float or int8)."""
    if layer.quantization_mode == "int8":
        y = _int8_matmul(x, _raw(layer._kernel), _raw(layer.kernel_scale))
    else:
        y = torch.matmul(x, _raw(layer._kernel))
    if layer.bias is not None:
        y = y + _raw(layer.bias)
    return _activation(layer.activation, y)


def _int8_matmul(x, kernel, kernel_scale):
    """Keras' int8 Dense (`quantize('int8')`): inputs quantized per token by their
    absolute maximum, an int8 x int8 -> int32 product (`torch._int_mm`, 4x less
    weight memory to read than float32), de-scaled by both scales."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    scale = 127.0 / (x2.abs().amax(-1, keepdim=True) + keras.config.epsilon())
    xq = torch.clamp(torch.round(x2 * scale), -127, 127).to(torch.int8)
    if xq.shape[1] % 8 == 0 and kernel.shape[1] % 8 == 0:
        y = torch._int_mm(xq, kernel)
    else:  # shapes the int8 kernel does not take
        y = torch.matmul(xq.to(torch.int32), kernel.to(torch.int32))
    y = y.to(x.dtype) / (kernel_scale * scale)
    return y.reshape(*shape[:-1], kernel.shape[1])


def _dense_ok(layer):
    return (isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call
            and (_plain(layer) or _int8(layer)))


def _int8(layer):
    """Keras' int8 quantization of a float32 layer, without LoRA."""
    policy = layer.dtype_policy
    return (policy.quantization_mode == "int8" and policy.compute_dtype == "float32"
            and not getattr(layer, "lora_enabled", False)
            and getattr(layer, "inputs_quantizer", True) is not None)


def _layer_norm(layer, x):
    if layer.conditional:
        return NotImplemented
    x = x.float()
    gamma = _raw(layer.gamma).float() if layer.scale is True else None
    beta = _raw(layer.beta).float() if layer.offset is True else None
    if layer.scale not in (True, False, None) or layer.offset not in (True, False, None):
        return NotImplemented
    if layer.zero_mean and layer.unit_variance:
        y = F.layer_norm(x, x.shape[-1:], gamma, beta, layer.epsilon)
    else:
        if layer.zero_mean:
            x = x - x.mean(-1, keepdim=True)
        if layer.unit_variance:
            x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + layer.epsilon)
        y = x if gamma is None else x * gamma
        y = y if beta is None else y + beta
    return y.to(getattr(torch, layer.compute_dtype))


def _feed_forward(layer, x):
    if not all(_dense_ok(d) for d in [*layer.input_dense, layer.o_dense]):
        return NotImplemented
    h = dense(layer.input_dense[0], x)
    for d in layer.input_dense[1:]:
        h = h * dense(d, x)
    return dense(layer.o_dense, h)


def _embedding(layer, x, mode="embedding"):
    if layer.quantization_mode == "int8":  # int8 rows, one scale per row
        if not hasattr(layer, "embeddings_scale"):
            return NotImplemented
        table, scale = _raw(layer._embeddings), _raw(layer.embeddings_scale)
        if mode == "dense":
            kernel, column_scale = _transposed(layer, table, scale)
            return _int8_matmul(x, kernel, column_scale)[..., :table.shape[0]]
        ids = x.long()
        return table[ids].to(torch.float32) / scale[ids][..., None]
    table = _raw(layer.embeddings)
    if mode == "dense":
        return torch.matmul(x.to(table.dtype), table.t())
    return F.embedding(x.long(), table)


def _transposed(layer, table, scale):
    """The int8 table transposed, contiguous and padded to a multiple of 8 columns (what
    `torch._int_mm` takes; a vocabulary such as GPT-2's 50,257 is not), with its scales
    padded alike; kept on the layer until the table changes."""
    kept = getattr(layer, "_kf_transposed", None)
    key = (table.data_ptr(), table._version, tuple(table.shape), scale.data_ptr(), scale._version)
    if kept is None or kept[0] != key:
        pad = -table.shape[0] % 8
        kernel = F.pad(table.t(), (0, pad)).contiguous()
        kept = (key, kernel, F.pad(scale, (0, pad), value=1.0))
        object.__setattr__(layer, "_kf_transposed", kept)
    return kept[1], kept[2]


def attention(layer, inputs, arguments, cache, cache_index, inplace):
    """MultiHeadAttention in a cached step; returns (outputs, (k, v)) or NotImplemented."""
    if (set(arguments) - {"attention_mask"} or layer.return_attention_scores
            or layer.normalization != "softmax" or layer.key_size != layer.head_size
            or not all(_dense_ok(d) for d in (layer.q_dense, layer.k_dense, layer.v_dense,
                                              layer.o_dense))):
        return NotImplemented
    if isinstance(inputs, (list, tuple)):
        q_in, k_in, v_in = inputs[:3]
    else:
        q_in = k_in = v_in = inputs
    b, n = q_in.shape[0], q_in.shape[1]
    h, d = layer.heads, layer.key_size
    q = dense(layer.q_dense, q_in).view(b, n, h, d).transpose(1, 2)
    keys, values = cache
    if cache_index is not None:  # self-attention: write the new keys/values
        start = int(cache_index)
        k_new = dense(layer.k_dense, k_in).view(b, n, h, d)
        v_new = dense(layer.v_dense, v_in).view(b, n, h, layer.head_size)
        if not inplace:
            keys, values = keys.clone(), values.clone()
        keys[:, start:start + n] = k_new.to(keys.dtype)
        values[:, start:start + n] = v_new.to(values.dtype)
    mask = arguments.get("attention_mask")
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() == 3:
            mask = mask[:, None]
        large = -0.7 * (65500.0 if q.dtype == torch.float16 else 3.38953e38)
        mask = torch.where(mask, 0.0, large).to(q.dtype)
    scale = d ** -0.5 if layer.attention_scale else 1.0
    o = F.scaled_dot_product_attention(
        q, keys.transpose(1, 2).to(q.dtype), values.transpose(1, 2).to(q.dtype),
        attn_mask=mask, scale=scale)
    o = o.transpose(1, 2).reshape(b, n, h * layer.head_size)
    return dense(layer.o_dense, o), (keys, values)


def fast_call(layer, inputs, arguments):
    """A non-attention layer of a cached step in plain torch, or NotImplemented."""
    if not _plain(layer) and not (_int8(layer) and isinstance(layer, (keras.layers.Dense,
                                                                        Embedding))):
        return NotImplemented
    kind = type(layer)
    if kind is LayerNormalization:
        return _layer_norm(layer, inputs)
    if kind is FeedForward:
        return _feed_forward(layer, inputs) if not arguments else NotImplemented
    if kind is Embedding:
        return _embedding(layer, inputs, **arguments)
    if kind in (keras.layers.Add, MaskedAdd) and not arguments:
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out
    if isinstance(layer, keras.layers.Dense) and _dense_ok(layer) and not arguments:
        return dense(layer, inputs)
    if kind is keras.layers.Dropout:
        return inputs
    return NotImplemented

