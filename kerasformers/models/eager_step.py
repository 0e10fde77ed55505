"""The torch fast path of a cached step: the hot layers' math as plain torch calls.

On torch Keras runs eagerly, and every `Layer.__call__` and `keras.ops` call
costs tens of microseconds of Python (dtype checks, tree flattening, masks).
A one-token GPT2-small step makes ~150 layer calls and ~600 op calls: measured
on 2 cores, about 50 ms of overhead around 25 ms of matmuls. Inside a cached
step everything is already concrete (shapes, masks, dtypes), so the common
layers run here instead: the same math, one torch call per operation.

A `Plan` prepares each layer once (its torch tensors bound into a closure,
kernels packed for oneDNN) and is then called for every step of a generation:
`plan.call(layer, inputs, arguments)` returns the layer's output, or
`NotImplemented` when the layer is not one of these (or has LoRA adapters,
computes in another dtype than it stores, or is quantized other than with
Keras' default int8 input quantizer): the caller then goes through Keras as
usual. Float32/bfloat16 kernels on CPU run oneDNN's prepacked linear
(`PackedLinear`), int8 ones its int8 linear (`Int8Matmul`). Packed kernels are
one more copy of each kernel, kept on its layer (so later generations reuse
them) and remade when the layer's tensors change; `release(model)` drops them.
Still, make a new Plan after changing weights (`generate` makes one per call,
`call_with_cache` one per call unless given one). `tests/models/test_cache.py`
checks every cached step against the uncached model on torch and
`test_eager_step.py` the int8, bfloat16 and packed kernels, so these kernels
are under the same tests as the Keras layers they stand in for.

Both kernels depend on the CPU: the bfloat16 packed linear needs AVX-512 (or
AVX-NE-CONVERT), the int8 one exact VNNI products; without them `addmm` and
`torch._int_mm` run instead (same results).

Measured on GPT2-small, one-token steps (2 cores, AMD EPYC with AVX-512 BF16):
Keras' dispatch alone cost ~50 ms per step; with a Plan the rest is ~5 ms.
The products take 24 ms with `addmm` in float32 and 16.7 ms prepacked (+ the
LM head 13.4 / 7.2 ms), 17.8 / 9.7 ms in bfloat16. Batch-1 int8 steps take
oneDNN's prepacked int8 linear (6.7 ms for all products on an Intel Xeon against
12 ms with `torch._int_mm`, which stays for several rows: oneDNN takes one input
scale per call, Keras quantizes per row).
"""

import keras

from kerasformers import backend as K
from kerasformers.layers import FeedForward, LayerNormalization
from kerasformers.layers.core import MaskedAdd
from kerasformers.layers.embeddings import Embedding, PositionEmbedding

try:  # torch is optional: this module is only used on the torch backend
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = F = None


def available():
    return torch is not None and keras.backend.backend() == "torch"


#: oneDNN's int8 linear (torch builds with oneDNN; without it, torch._int_mm only).
#: Exact only on CPUs with VNNI: without it oneDNN sums pairs of u8 x s8 products in
#: saturating int16 (measured: 0.26 off on an AVX2-only EPYC), so there _int_mm stays.
_QLINEAR = (torch is not None and hasattr(torch.ops.onednn, "qlinear_pointwise")
            and getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
_ZERO_POINT = None if torch is None else torch.tensor(128)
_qlinear = torch.ops.onednn.qlinear_pointwise.tensor if _QLINEAR else None
#: oneDNN's prepacked float linear (torch builds with oneDNN on CPU)
_PACKED = (torch is not None and torch.backends.mkldnn.is_available()
           and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
#: ... in bfloat16 too: needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (else addmm)
_PACKED_BF16 = _PACKED and torch.ops.mkldnn._is_mkldnn_bf16_supported()
#: attributes under which layers keep their prepared kernels (see `release`)
_KEPT = ("_kf_packed", "_kf_int8", "_kf_qkv")


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
_POST_OPS = {K.gelu_erf: ("gelu", "none"), K.gelu_tanh: ("gelu", "tanh"),
             keras.activations.relu: ("relu", "")}


def _then(act, fn):
    """x -> act(fn(x)) (fn itself without an activation)."""
    return fn if act is None else (lambda x: act(fn(x)))


# ------------------------------------------------------------------ kernels
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


class PackedLinear:
    """x @ kernel + bias (float32 or bfloat16, CPU) with the kernel reordered once
    into oneDNN's blocked layout (`mkldnn._linear_pointwise`, the kernel torch's
    compiler uses for CPU linears). Measured on GPT2-small's products (2 cores, AMD
    EPYC): one row 16.7 vs 24.2 ms with `addmm` in float32, 9.7 vs 17.8 ms in
    bfloat16; 8 rows 25 vs 55 ms; the LM head 7.2 vs 13.4 ms. The cost is one more
    copy of the kernel, kept on its layer. Float32 results differ from `addmm` by
    summation order only (~1e-6 relative); bfloat16 ones are identical (both
    accumulate in float32 and round once). `kernel` is [in, out] (Keras' Dense) or,
    with `transposed=True`, [out, in] (an embedding table used as the LM head)."""

    def __init__(self, kernel, bias=None, transposed=False):
        rows = kernel if transposed else kernel.t()  # [out, in]
        with torch.no_grad():
            self.weight = torch.ops.mkldnn._reorder_linear_weight(
                rows.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().to(kernel.dtype)
        self.dtype = kernel.dtype

    @staticmethod
    def takes(kernel):
        return _PACKED and kernel.device.type == "cpu" and (
            kernel.dtype == torch.float32
            or (kernel.dtype == torch.bfloat16 and _PACKED_BF16))

    @classmethod
    def of(cls, owner, kernel, bias=None, transposed=False):
        """The owner layer's PackedLinear, rebuilt only when its tensors changed."""
        return _kept(owner, _KEPT[0], (kernel, bias), None,
                     lambda: cls(kernel, bias, transposed))

    def __call__(self, x):
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias,
                                                  "none", [], "")


def release(model):
    """Drop the packed kernel copies kept on `model`'s layers (a Keras model, layer
    or kerasformers Transformer): frees their memory (one more copy of each float
    kernel, one of each int8 kernel); the next `generate` on torch remakes them.

    >>> from kerasformers import build_transformer_model
    >>> obj = build_transformer_model(None, model="gpt2", vocab_size=32, hidden_size=8,
    ...                               num_hidden_layers=1, num_attention_heads=2,
    ...                               intermediate_size=16, return_keras_model=False)
    >>> release(obj)
    0
    """
    model = getattr(model, "model", model)
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else [model]
    dropped = 0
    for layer in layers:
        for name in _KEPT:
            if layer.__dict__.pop(name, None) is not None:
                dropped += 1
    return dropped


def _kept(owner, name, tensors, extra, build):
    """`build()`, kept on `owner` as `name` until one of `tensors` (or `extra`) changes."""
    key = tuple((t.data_ptr(), t._version) for t in tensors if t is not None) + (extra,)
    kept = getattr(owner, name, None)
    if kept is None or kept[0] != key:
        kept = (key, build())
        object.__setattr__(owner, name, kept)
    return kept[1]


def _quantize_rows(x2, epsilon):
    """Keras' AbsMaxQuantizer per row: (round(x * s), s) with s = 127 / (max|x| + eps).
    |x * s| < 127 already, so Keras' clip to [-127, 127] changes nothing."""
    scale = 127.0 / (torch.linalg.vector_norm(x2, float("inf"), -1, keepdim=True) + epsilon)
    return torch.round(x2 * scale), scale


class Int8Matmul:
    """x @ int8 kernel with Keras' int8 arithmetic (inputs quantized per row by their
    absolute maximum, int8 x int8 -> int32 products, de-scaled by both scales), plus
    an optional float bias. One row (the batch-1 decoding step) runs oneDNN's
    prepacked int8 linear (`onednn.qlinear_pointwise`: measured 2x faster than
    `torch._int_mm` on GPT2-small's weights here, and exact: integer products); more
    rows (per-row scales, which that kernel does not take) run `torch._int_mm`.
    `kernel` is [in, out] (Keras' Dense) or, with `transposed=True`, [out, in] (an
    embedding table used as the LM head)."""

    def __init__(self, kernel, kernel_scale, bias=None, transposed=False, epsilon=1e-7):
        self.epsilon = epsilon  # the input quantizer's
        self.rows = kernel if transposed else kernel.t()  # [out, in]
        self.units = self.rows.shape[0]
        self.kernel_scale = kernel_scale.float()
        self.w_scale = (1.0 / self.kernel_scale).contiguous()
        self.bias = None if bias is None else bias.float().contiguous()
        self._packed = self._padded = None

    @classmethod
    def of(cls, owner, kernel, kernel_scale, bias=None, transposed=False):
        """The owner layer's Int8Matmul, rebuilt only when its tensors changed."""
        epsilon = owner.inputs_quantizer.epsilon
        return _kept(owner, _KEPT[1], (kernel, kernel_scale, bias), epsilon,
                     lambda: cls(kernel, kernel_scale, bias, transposed, epsilon))

    def __call__(self, x, post=None, activation=None):
        """x (float32: int8 layers compute in float32) @ kernel + bias, then
        `activation`; `post` (name, algorithm) is the same activation as a oneDNN
        post-op, applied inside the kernel where it runs."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        q, scale = _quantize_rows(x2, self.epsilon)
        if x2.shape[0] == 1 and _QLINEAR:
            if self._packed is None:
                self._packed = (torch.ops.onednn.qlinear_prepack(self.rows.contiguous(),
                                                                 [1, self.rows.shape[1]]),
                                torch.zeros(self.units, dtype=torch.int64))
            packed, zeros = self._packed
            name, algorithm = post or ("none", "")
            y = _qlinear(q.add_(128).to(torch.uint8), scale.reciprocal(), _ZERO_POINT, packed,
                         self.w_scale, zeros, self.bias, 1.0, 0, torch.float32, name, [],
                         algorithm)
        else:
            y = self._int_mm(q.to(torch.int8)).float() / (self.kernel_scale * scale)
            if self.bias is not None:
                y = y + self.bias
            if activation is not None:
                y = activation(y)
        return y if len(shape) == 2 else y.view(*shape[:-1], self.units)

    def _int_mm(self, q):
        if self._padded is None:  # [in, out], out padded to a multiple of 8 for _int_mm
            pad = -self.units % 8
            self._padded = F.pad(self.rows.t(), (0, pad)).contiguous()
        if q.shape[1] % 8:  # shapes the int8 kernel does not take
            return torch.matmul(q.to(torch.int32), self._padded.to(torch.int32))[:, :self.units]
        return torch._int_mm(q, self._padded)[:, :self.units]


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
        if (len({k.dtype for k in kernels}) > 1 or not PackedLinear.takes(kernels[0])
                or any(_activation(d.activation) is not None for d in denses)):
            return None
    else:
        return None

    def build():
        kernel = torch.cat(kernels, 1)
        dtype = kernel.dtype if scales is None else torch.float32  # int8: a float bias
        bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(k.shape[1], dtype=dtype) if b is None else b.to(dtype)
             for k, b in zip(kernels, biases)])
        if scales is None:
            return PackedLinear(kernel, bias)
        return Int8Matmul(kernel, torch.cat(scales), bias, epsilon=epsilon)
    tensors = [t for t in kernels + biases + (scales or []) if t is not None]
    matmul = _kept(owner, _KEPT[2], tensors, epsilon, build)
    return matmul, [k.shape[1] for k in kernels]


def _dense_ok(layer):
    return (isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call
            and (_plain(layer) or _int8(layer)))


def _int8(layer):
    """Keras' int8 quantization (its default per-row input quantizer) of a float32
    layer, without LoRA."""
    policy = layer.dtype_policy
    quantizer = getattr(layer, "inputs_quantizer", None)
    return (policy.quantization_mode == "int8" and policy.compute_dtype == "float32"
            and not getattr(layer, "lora_enabled", False)
            and type(quantizer) is keras.quantizers.AbsMaxQuantizer
            and tuple(quantizer.value_range) == (-127, 127) and quantizer.output_dtype == "int8"
            and quantizer.axis in (None, -1, (-1,)))  # Keras' calls pass axis=-1


def _layer_norm(layer):
    if layer.conditional or layer.scale not in (True, False, None) or \
            layer.offset not in (True, False, None):
        return NotImplemented
    gamma = _raw(layer.gamma).float() if layer.scale is True else None
    beta = _raw(layer.beta).float() if layer.offset is True else None
    dtype, eps = getattr(torch, layer.compute_dtype), layer.epsilon
    zero_mean, unit_variance = layer.zero_mean, layer.unit_variance

    if zero_mean and unit_variance and dtype == torch.float32:
        return lambda x: F.layer_norm(x.float(), x.shape[-1:], gamma, beta, eps)

    def norm(x):
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


def _feed_forward(layer):
    if not all(_dense_ok(d) for d in [*layer.input_dense, layer.o_dense]):
        return NotImplemented
    first, *gates = [_linear(d) for d in layer.input_dense]
    out = _linear(layer.o_dense)

    def ffn(x):
        h = first(x)
        for gate in gates:
            h = h * gate(x)
        return out(h)
    return ffn


def _embedding(layer):
    if layer.quantization_mode == "int8":  # int8 rows, one scale per row
        if not hasattr(layer, "embeddings_scale"):
            return NotImplemented
        table, scale = _raw(layer._embeddings), _raw(layer.embeddings_scale)
        head = Int8Matmul.of(layer, table, scale, transposed=True) \
            if _int8(layer) else None

        def embed(x, mode="embedding"):
            if mode == "dense":
                return NotImplemented if head is None else head(x)
            ids = x.long()
            return table[ids].to(torch.float32) / scale[ids][..., None]
        return embed
    table = _raw(layer.embeddings)
    head = _lazy(lambda: PackedLinear.of(layer, table, transposed=True)) \
        if PackedLinear.takes(table) else (lambda x: torch.matmul(x.to(table.dtype), table.t()))

    def embed(x, mode="embedding"):
        if mode == "dense":
            return head(x)
        return F.embedding(x.long(), table)
    return embed


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


def _prepare(layer):
    """`fn(inputs, arguments)` for a non-attention layer, or NotImplemented."""
    int8 = _int8(layer) and isinstance(layer, (keras.layers.Dense, Embedding))
    if not _plain(layer) and not int8:
        return NotImplemented
    kind = type(layer)
    if kind is LayerNormalization:
        fn = _layer_norm(layer)
        return fn if fn is NotImplemented else (lambda x, arguments: fn(x))
    if kind is FeedForward:
        fn = _feed_forward(layer)
        return fn if fn is NotImplemented else (
            lambda x, arguments: NotImplemented if arguments else fn(x))
    if kind is PositionEmbedding:
        return _position_embedding(layer)
    if kind is Embedding:
        fn = _embedding(layer)
        return fn if fn is NotImplemented else (lambda x, arguments: fn(x, **arguments))
    if kind in (keras.layers.Add, MaskedAdd):
        def add(inputs, arguments):
            if arguments:
                return NotImplemented
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        return add
    if isinstance(layer, keras.layers.Dense) and _dense_ok(layer):
        fn = _linear(layer)
        return lambda x, arguments: NotImplemented if arguments else fn(x)
    if kind is keras.layers.Dropout:
        return lambda x, arguments: x
    return NotImplemented


def _prepare_attention(layer):
    """`fn(inputs, arguments, cache, cache_index, inplace, masks)` for a
    MultiHeadAttention, or NotImplemented."""
    denses = (layer.q_dense, layer.k_dense, layer.v_dense)
    if (layer.return_attention_scores or layer.normalization != "softmax"
            or layer.key_size != layer.head_size
            or not all(_dense_ok(d) for d in (*denses, layer.o_dense))):
        return NotImplemented
    q_dense, k_dense, v_dense = (_lazy(lambda d=d: _linear(d)) for d in denses)
    o_dense = _linear(layer.o_dense)
    fused = _concatenated(layer, denses)
    h, d, head_size = layer.heads, layer.key_size, layer.head_size
    scale = d ** -0.5 if layer.attention_scale else 1.0

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


class _Masks:
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


class Plan:
    """Prepared torch kernels of a model's layers for cached steps.

    Layers are prepared on first use and kept by identity, with the tensors they
    had then: make a new Plan after changing weights or quantizing."""

    def __init__(self):
        self._layers = {}  # id(layer) -> (layer, fn)
        self._masks = _Masks()

    def _fn(self, layer, prepare):
        kept = self._layers.get(id(layer))
        if kept is None or kept[0] is not layer:
            kept = self._layers[id(layer)] = (layer, prepare(layer))
        return kept[1]

    def call(self, layer, inputs, arguments):
        """A non-attention layer of a cached step in plain torch, or NotImplemented."""
        fn = self._fn(layer, _prepare)
        return NotImplemented if fn is NotImplemented else fn(inputs, arguments)

    def attention(self, layer, inputs, arguments, cache, cache_index, inplace):
        """A MultiHeadAttention in a cached step: (outputs, (k, v)) or NotImplemented."""
        fn = self._fn(layer, _prepare_attention)
        if fn is NotImplemented:
            return NotImplemented
        return fn(inputs, arguments, cache, cache_index, inplace, self._masks)
