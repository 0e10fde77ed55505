"""The torch fast path of a cached step: the hot layers' math as plain torch calls.

On torch Keras runs eagerly, and every `Layer.__call__` and `keras.ops` call
costs tens of microseconds of Python (dtype checks, tree flattening, masks).
A one-token GPT2-small step makes ~150 layer calls and ~600 op calls: measured
on 2 cores, about 50 ms of overhead around 25 ms of matmuls. Inside a cached
step everything is already concrete (shapes, masks, dtypes), so the common
layers run here instead: the same math, one torch call per operation.

A `Plan` prepares each layer once (its torch tensors bound into a closure,
kernels packed for oneDNN: `layers.py`, `attention.py`) and is then called for
every step of a generation: `plan.call(layer, inputs, arguments)` returns the
layer's output, or `NotImplemented` when the layer is not one of these (or has
LoRA adapters, computes in another dtype than it stores, or is quantized other
than with Keras' default int8 input quantizer): the caller then goes through
Keras as usual. Float32/bfloat16 kernels on CPU run oneDNN's prepacked linear
(`PackedLinear`), int8 ones its int8 linear (`Int8Matmul`, both in `kernels.py`).
Packed kernels are one more copy of each kernel, kept on its layer (so later
generations reuse them) and remade when the layer's tensors change;
`release(model)` drops them. Still, make a new Plan after changing weights
(`generate` makes one per call, `call_with_cache` one per call unless given
one). `tests/models/test_cache.py` checks every cached step against the
uncached model on torch and `test_eager_step.py` the int8, bfloat16 and packed
kernels, so these kernels are under the same tests as the Keras layers they
stand in for.

Measured on GPT2-small, one-token steps (2 cores, AMD EPYC with AVX-512 BF16):
Keras' dispatch alone cost ~50 ms per step; with a Plan the rest is ~5 ms.
"""

from kerasformers.backends.torch.attention import Masks, prepare_attention
from kerasformers.backends.torch.layers import prepare


class Plan:
    """Prepared torch kernels of a model's layers for cached steps.

    Layers are prepared on first use and kept by identity, with the tensors they
    had then: make a new Plan after changing weights or quantizing."""

    def __init__(self):
        self._layers = {}  # id(layer) -> (layer, fn)
        self._masks = Masks()

    def _fn(self, layer, prepare):
        kept = self._layers.get(id(layer))
        if kept is None or kept[0] is not layer:
            kept = self._layers[id(layer)] = (layer, prepare(layer))
        return kept[1]

    def call(self, layer, inputs, arguments):
        """A non-attention layer of a cached step in plain torch, or NotImplemented."""
        fn = self._fn(layer, prepare)
        return NotImplemented if fn is NotImplemented else fn(inputs, arguments)

    def attention(self, layer, inputs, arguments, cache, cache_index, inplace):
        """A MultiHeadAttention in a cached step: (outputs, (k, v)) or NotImplemented."""
        fn = self._fn(layer, prepare_attention)
        if fn is NotImplemented:
            return NotImplemented
        return fn(inputs, arguments, cache, cache_index, inplace, self._masks)
