"""MultiHeadAttention in a cached step as plain torch calls: q/k/v in one product,
the new keys/values written into the cache, `scaled_dot_product_attention`."""

import torch
import torch.nn.functional as F

from kerasformers.backends.torch.kernels import _KEPT, Int8Matmul, PackedLinear, _kept
from kerasformers.backends.torch.layers import (
    _activation,
    _dense_ok,
    _int8,
    _lazy,
    _linear,
    _plain,
    _raw,
)


def _concatenated(owner, denses):
    """One kernel for several Dense layers reading the same input (q, k, v): one
    call (and for int8 one quantization of the input) instead of three. Returns
    (fn, output sizes), or None when they cannot be joined: int8 layers quantizing
    their inputs differently, float layers other than CPU float32/bfloat16 or with
    different dtypes or activations."""
    kernels = [_raw(d._kernel) for d in denses]
    biases = [None if d.bias is None else _raw(d.bias) for d in denses]
    if all(_int8(d) for d in denses):
        epsilon = denses[0].inputs_quantizer.epsilon
        if any(d.inputs_quantizer.epsilon != epsilon for d in denses):
            return None
        scales = [_raw(d.kernel_scale) for d in denses]
    elif all(_plain(d) for d in denses):
        epsilon, scales = None, None
        if (
            len({k.dtype for k in kernels}) > 1
            or not PackedLinear.takes(kernels[0])
            or any(_activation(d.activation) is not None for d in denses)
        ):
            return None
    else:
        return None

    def build():
        kernel = torch.cat(kernels, 1)
        dtype = kernel.dtype if scales is None else torch.float32  # int8: a float bias
        bias = (
            None
            if all(b is None for b in biases)
            else torch.cat(
                [
                    torch.zeros(k.shape[1], dtype=dtype) if b is None else b.to(dtype)
                    for k, b in zip(kernels, biases)
                ]
            )
        )
        if scales is None:
            return PackedLinear(kernel, bias)
        return Int8Matmul(kernel, torch.cat(scales), bias, epsilon=epsilon)

    tensors = [t for t in kernels + biases + (scales or []) if t is not None]
    matmul = _kept(owner, _KEPT[2], tensors, epsilon, build)
    return matmul, [k.shape[1] for k in kernels]


def prepare_attention(layer):
    """`fn(inputs, arguments, cache, cache_index, inplace, masks)` for a
    MultiHeadAttention, or NotImplemented."""
    denses = (layer.q_dense, layer.k_dense, layer.v_dense)
    if (
        layer.return_attention_scores
        or layer.normalization != "softmax"
        or layer.attention_type != "softmax"  # linear kinds keep a recurrent state
        or layer.attention_scale not in (True, False)  # a per-query scale
        or layer.key_size != layer.head_size
        or not all(_dense_ok(d) for d in (*denses, layer.o_dense))
    ):
        return NotImplemented
    q_dense, k_dense, v_dense = (_lazy(lambda d=d: _linear(d)) for d in denses)
    o_dense = _linear(layer.o_dense)
    fused = _concatenated(layer, denses)
    h, d, head_size = layer.heads, layer.key_size, layer.head_size
    scale = d**-0.5 if layer.attention_scale else 1.0

    def attention(inputs, arguments, cache, cache_index, inplace, masks):
        if arguments and (len(arguments) > 1 or "attention_mask" not in arguments):
            return NotImplemented
        if isinstance(inputs, (list, tuple)):
            q_in, k_in, v_in = inputs[:3]
        else:
            q_in = k_in = v_in = inputs
        b, n = q_in.shape[0], q_in.shape[1]
        keys, values = cache
        length = keys.shape[1]
        if cache_index is not None:  # self-attention: write the new keys/values
            if fused is not None and q_in is k_in and k_in is v_in:
                matmul, sizes = fused
                q, k_new, v_new = torch.split(matmul(q_in), sizes, dim=-1)
            else:
                q, k_new, v_new = q_dense(q_in), k_dense(k_in), v_dense(v_in)
            start = int(cache_index)
            length = start + n  # positions after these are not written yet: masked anyway
            if not inplace:
                keys, values = keys.clone(), values.clone()
            keys[:, start:length] = k_new.view(b, n, h, d)
            values[:, start:length] = v_new.view(b, n, h, head_size)
        else:
            q = q_dense(q_in)
        q = q.view(b, n, h, d).transpose(1, 2)
        mask = masks.additive(arguments.get("attention_mask"), q.dtype, length)
        k, v = keys[:, :length].transpose(1, 2), values[:, :length].transpose(1, 2)
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        o = o.transpose(1, 2).reshape(b, n, h * head_size)
        return o_dense(o), (keys, values)

    return attention


class Masks:
    """The additive form of the last boolean attention mask seen, cut to the first
    `length` keys (every layer of a step gets the same mask tensor: converted once)."""

    def __init__(self):
        self.key = self.value = None

    def additive(self, mask, dtype, length):
        if mask is None:
            return None
        if self.key is None or self.key[0] is not mask or self.key[1:] != (dtype, length):
            m = torch.as_tensor(mask, dtype=torch.bool)[..., :length]
            if m.dim() == 3:
                m = m[:, None]
            large = -0.7 * (65500.0 if dtype == torch.float16 else 3.38953e38)
            self.key, self.value = (mask, dtype, length), torch.where(m, 0.0, large).to(dtype)
        return self.value
