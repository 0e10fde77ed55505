"""oneDNN's prepacked CPU kernels for the torch fast path, kept on their layers.

`PackedLinear` (float32/bfloat16) and `Int8Matmul` (Keras' int8 arithmetic) are
the products of a cached step on torch (`kerasformers.backends.torch.plan`).
Packed kernels are one more copy of each kernel, kept on its layer (so later
generations reuse them) and remade when the layer's tensors change;
`release(model)` drops them.

Both kernels depend on the CPU: the bfloat16 packed linear needs AVX-512 (or
AVX-NE-CONVERT), the int8 one exact VNNI products; without them `addmm` and
`torch._int_mm` run instead (same results).

Measured on GPT2-small, one-token steps (2 cores, AMD EPYC with AVX-512 BF16):
the products take 24 ms with `addmm` in float32 and 16.7 ms prepacked (+ the
LM head 13.4 / 7.2 ms), 17.8 / 9.7 ms in bfloat16. Batch-1 int8 steps take
oneDNN's prepacked int8 linear (6.7 ms for all products on an Intel Xeon against
12 ms with `torch._int_mm`, which stays for several rows: oneDNN takes one input
scale per call, Keras quantizes per row).
"""

import torch
import torch.nn.functional as F

#: oneDNN's int8 linear (torch builds with oneDNN; without it, torch._int_mm only).
#: Exact only on CPUs with VNNI: without it oneDNN sums pairs of u8 x s8 products in
#: saturating int16 (measured: 0.26 off on an AVX2-only EPYC), so there _int_mm stays.
_QLINEAR = (
    hasattr(torch.ops.onednn, "qlinear_pointwise")
    and getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
)
_ZERO_POINT = torch.tensor(128)
_qlinear = torch.ops.onednn.qlinear_pointwise.tensor if _QLINEAR else None
#: oneDNN's prepacked float linear (torch builds with oneDNN on CPU)
_PACKED = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_reorder_linear_weight"
)
#: ... in bfloat16 too: needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (else addmm)
_PACKED_BF16 = _PACKED and torch.ops.mkldnn._is_mkldnn_bf16_supported()
#: attributes under which layers keep their prepared kernels (see `release`)
_KEPT = ("_kf_packed", "_kf_int8", "_kf_qkv")


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
            self.weight = torch.ops.mkldnn._reorder_linear_weight(rows.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().to(kernel.dtype)
        self.dtype = kernel.dtype

    @staticmethod
    def takes(kernel):
        return (
            _PACKED
            and kernel.device.type == "cpu"
            and (kernel.dtype == torch.float32 or (kernel.dtype == torch.bfloat16 and _PACKED_BF16))
        )

    @classmethod
    def of(cls, owner, kernel, bias=None, transposed=False):
        """The owner layer's PackedLinear, rebuilt only when its tensors changed."""
        return _kept(owner, _KEPT[0], (kernel, bias), None, lambda: cls(kernel, bias, transposed))

    def __call__(self, x):
        return torch.ops.mkldnn._linear_pointwise(
            x.to(self.dtype), self.weight, self.bias, "none", [], ""
        )


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
        return _kept(
            owner,
            _KEPT[1],
            (kernel, kernel_scale, bias),
            epsilon,
            lambda: cls(kernel, kernel_scale, bias, transposed, epsilon),
        )

    def __call__(self, x, post=None, activation=None):
        """x (float32: int8 layers compute in float32) @ kernel + bias, then
        `activation`; `post` (name, algorithm) is the same activation as a oneDNN
        post-op, applied inside the kernel where it runs."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        q, scale = _quantize_rows(x2, self.epsilon)
        if x2.shape[0] == 1 and _QLINEAR:
            if self._packed is None:
                self._packed = (
                    torch.ops.onednn.qlinear_prepack(
                        self.rows.contiguous(), [1, self.rows.shape[1]]
                    ),
                    torch.zeros(self.units, dtype=torch.int64),
                )
            packed, zeros = self._packed
            name, algorithm = post or ("none", "")
            y = _qlinear(
                q.add_(128).to(torch.uint8),
                scale.reciprocal(),
                _ZERO_POINT,
                packed,
                self.w_scale,
                zeros,
                self.bias,
                1.0,
                0,
                torch.float32,
                name,
                [],
                algorithm,
            )
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
            return torch.matmul(q.to(torch.int32), self._padded.to(torch.int32))[:, : self.units]
        return torch._int_mm(q, self._padded)[:, : self.units]
