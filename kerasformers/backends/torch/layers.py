"""The common layers of a cached step as plain torch functions, one preparer each.

A preparer takes a layer and returns `fn(inputs, arguments)` (its torch tensors
bound into a closure), or `NotImplemented` when the layer calls in a way it does
not cover: the caller then goes through Keras. `prepare(layer)` looks the layer's
class up in a registry {layer class: preparer}; `@prepares(cls)` adds to it.
Attention layers have their own preparer (`attention.py`): they also take the cache.
"""

import keras
import torch
import torch.nn.functional as F

from kerasformers import ops as K
from kerasformers.backends.torch.kernels import Int8Matmul, PackedLinear
from kerasformers.layers import FeedForward, LayerNormalization
from kerasformers.layers.core import MaskedAdd
from kerasformers.layers.embeddings import Embedding, PositionEmbedding

#: layer class -> (preparer, whether it also prepares the class's subclasses)
_PREPARERS = {}


def prepares(*classes, subclasses=False):
    """Register the decorated function as the preparer of `classes`: of exactly
    these classes (a subclass may call differently), or with `subclasses=True`
    of their subclasses too (the preparer then checks what it needs)."""

    def register(preparer):
        for cls in classes:
            _PREPARERS[cls] = (preparer, subclasses)
        return preparer

    return register


def prepare(layer):
    """`fn(inputs, arguments)` for a non-attention layer, or NotImplemented."""
    int8 = _int8(layer) and isinstance(layer, (keras.layers.Dense, Embedding))
    if not _plain(layer) and not int8:
        return NotImplemented
    kind = type(layer)
    for cls in kind.__mro__:
        preparer, subclasses = _PREPARERS.get(cls, (None, False))
        if preparer is not None and (cls is kind or subclasses):
            return preparer(layer)
    return NotImplemented


def _plain(layer):
    """A layer whose call is plain float math on its stored variables."""
    policy = layer.dtype_policy
    return (
        policy.quantization_mode is None
        and not getattr(layer, "lora_enabled", False)
        and policy.variable_dtype == policy.compute_dtype
    )


def _int8(layer):
    """Keras' int8 quantization (its default per-row input quantizer) of a float32
    layer, without LoRA."""
    policy = layer.dtype_policy
    quantizer = getattr(layer, "inputs_quantizer", None)
    return (
        policy.quantization_mode == "int8"
        and policy.compute_dtype == "float32"
        and not getattr(layer, "lora_enabled", False)
        and type(quantizer) is keras.quantizers.AbsMaxQuantizer
        and tuple(quantizer.value_range) == (-127, 127)
        and quantizer.output_dtype == "int8"
        and quantizer.axis in (None, -1, (-1,))
    )  # Keras' calls pass axis=-1


def _raw(variable):
    """The torch tensor behind a Keras variable (`.value` re-checks autocasting on
    every read; `_plain` layers store what they compute with)."""
    value = getattr(variable, "_value", None)
    return variable.value if value is None else value


def _activation(fn):
    """The activation `fn` as a torch function, or None for the identity."""
    if fn is None or fn is keras.activations.linear:
        return None
    if fn is K.gelu_erf:
        return F.gelu
    if fn is K.gelu_tanh:
        return lambda x: F.gelu(x, approximate="tanh")
    if fn is keras.activations.relu:
        return torch.relu
    return fn


#: activations oneDNN's int8 linear applies itself (a post-op): name, algorithm
_POST_OPS = {
    K.gelu_erf: ("gelu", "none"),
    K.gelu_tanh: ("gelu", "tanh"),
    keras.activations.relu: ("relu", ""),
}


def _then(act, fn):
    """x -> act(fn(x)) (fn itself without an activation)."""
    return fn if act is None else (lambda x: act(fn(x)))


def _lazy(build):
    """`fn(x)` that calls `build()` for the real function on first use (a packed
    kernel copy is made only if the layer is actually called on its own)."""
    fn = None

    def call(x):
        nonlocal fn
        if fn is None:
            fn = build()
        return fn(x)

    return call


def _dense_ok(layer):
    return (
        isinstance(layer, keras.layers.Dense)
        and type(layer).call is keras.layers.Dense.call
        and (_plain(layer) or _int8(layer))
    )


def _linear(layer):
    """keras.layers.Dense as `fn(x)`: x @ kernel + bias, then the activation."""
    act = _activation(layer.activation)
    bias = None if layer.bias is None else _raw(layer.bias)
    if layer.quantization_mode == "int8":
        matmul = Int8Matmul.of(layer, _raw(layer._kernel), _raw(layer.kernel_scale), bias)
        post = _POST_OPS.get(layer.activation)
        if post is None:
            return _then(act, matmul)
        return lambda x: matmul(x, post=post, activation=act)
    kernel = _raw(layer._kernel)
    if PackedLinear.takes(kernel):
        return _then(act, PackedLinear.of(layer, kernel, bias))
    if bias is None:
        return _then(act, lambda x: torch.matmul(x, kernel))

    def linear(x):  # addmm: the bias added in the product's epilogue
        if x.dim() == 2:
            return torch.addmm(bias, x, kernel)
        y = torch.addmm(bias, x.reshape(-1, x.shape[-1]), kernel)
        return y.view(*x.shape[:-1], y.shape[-1])

    return _then(act, linear)


# ---------------------------------------------------------------- preparers
@prepares(keras.layers.Dense, subclasses=True)
def _dense(layer):
    """Dense and its subclasses that call as Dense does."""
    if not _dense_ok(layer):
        return NotImplemented
    fn = _linear(layer)
    return lambda x, arguments: NotImplemented if arguments else fn(x)


@prepares(LayerNormalization)
def _layer_norm(layer):
    if (
        layer.conditional
        or layer.scale not in (True, False, None)
        or layer.offset not in (True, False, None)
    ):
        return NotImplemented
    gamma = _raw(layer.gamma).float() if layer.scale is True else None
    beta = _raw(layer.beta).float() if layer.offset is True else None
    dtype, eps = getattr(torch, layer.compute_dtype), layer.epsilon
    zero_mean, unit_variance = layer.zero_mean, layer.unit_variance

    if zero_mean and unit_variance and dtype == torch.float32:
        return lambda x, arguments: F.layer_norm(x.float(), x.shape[-1:], gamma, beta, eps)

    def norm(x, arguments):
        x = x.float()
        if zero_mean and unit_variance:
            y = F.layer_norm(x, x.shape[-1:], gamma, beta, eps)
        else:
            if zero_mean:
                x = x - x.mean(-1, keepdim=True)
            if unit_variance:
                x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
            y = x if gamma is None else x * gamma
            y = y if beta is None else y + beta
        return y.to(dtype)

    return norm


@prepares(FeedForward)
def _feed_forward(layer):
    if not all(_dense_ok(d) for d in [*layer.input_dense, layer.o_dense]):
        return NotImplemented
    first, *gates = [_linear(d) for d in layer.input_dense]
    out = _linear(layer.o_dense)

    def ffn(x, arguments):
        if arguments:
            return NotImplemented
        h = first(x)
        for gate in gates:
            h = h * gate(x)
        return out(h)

    return ffn


@prepares(Embedding)
def _embedding(layer):
    if layer.quantization_mode == "int8":  # int8 rows, one scale per row
        if not hasattr(layer, "embeddings_scale"):
            return NotImplemented
        table, scale = _raw(layer._embeddings), _raw(layer.embeddings_scale)
        head = Int8Matmul.of(layer, table, scale, transposed=True) if _int8(layer) else None

        def embed(x, mode="embedding"):
            if mode == "dense":
                return NotImplemented if head is None else head(x)
            ids = x.long()
            return table[ids].to(torch.float32) / scale[ids][..., None]
    else:
        table = _raw(layer.embeddings)
        head = (
            _lazy(lambda: PackedLinear.of(layer, table, transposed=True))
            if PackedLinear.takes(table)
            else (lambda x: torch.matmul(x.to(table.dtype), table.t()))
        )

        def embed(x, mode="embedding"):
            if mode == "dense":
                return head(x)
            return F.embedding(x.long(), table)

    return lambda x, arguments: embed(x, **arguments)


@prepares(PositionEmbedding)
def _position_embedding(layer):
    """Learned absolute positions added to the input (not hierarchical, no custom ids)."""
    if layer.hierarchical or layer.custom_position_ids or layer.merge_mode != "add":
        return NotImplemented
    table = _raw(layer.embeddings)

    def add_positions(x, arguments):
        offset = arguments.get("offset", 0)
        if set(arguments) - {"offset"}:
            return NotImplemented
        offset = torch.as_tensor(offset, dtype=torch.int64)
        positions = torch.arange(x.shape[1]) + offset  # [n] or [batch, n] (one per row)
        if positions.dim() == 2:
            positions = positions.clamp_(min=0)
        return x + table[positions].to(x.dtype)

    return add_positions


@prepares(keras.layers.Add, MaskedAdd)
def _add(layer):
    def add(inputs, arguments):
        if arguments:
            return NotImplemented
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out

    return add


@prepares(keras.layers.Dropout)
def _dropout(layer):
    return lambda x, arguments: x
