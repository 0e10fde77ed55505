"""Cached steps of reduced-precision models equal their Keras forward pass.

On torch a cached step runs the common layers as plain torch calls
(`kerasformers.backends.torch`, float32, bfloat16 and Keras' int8 Dense);
on jax and tensorflow the same checks run through Keras. Float32 steps are
checked against the uncached model in test_cache.py.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from tests.utils import quantize

CONFIG = dict(
    model="gpt2",
    vocab_size=98,  # not a multiple of 8 (int8 kernels pad)
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    final_activation="linear",
    return_keras_model=False,
)


def randomized(dtype="float32"):
    obj = build_transformer_model(None, dtype=dtype, **CONFIG)
    rng = np.random.default_rng(0)
    for v in obj.model.weights:
        v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))
    return obj


def stepwise(obj, ids, **kwargs):
    cache = obj.init_cache(ids.shape[0], 16)
    first, cache = obj.call_with_cache(ids[:, :5], cache, logits=True, **kwargs)
    rest, cache = obj.call_with_cache(ids[:, 5:], cache, logits=True, **kwargs)
    out = keras.ops.concatenate([first, rest], axis=1)
    return keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")), cache


IDS = np.random.default_rng(1).integers(1, 96, (2, 9))


def test_int8_steps_equal_the_keras_int8_model():
    obj = randomized()
    float_out = np.asarray(obj.model.predict(IDS, verbose=0))
    quantize(obj.model)  # warnings off (layers without int8 weights say so), no gc per layer
    full = np.asarray(obj.model.predict(IDS, verbose=0))
    steps, _ = stepwise(obj, IDS)
    np.testing.assert_allclose(steps, full, atol=1e-5, rtol=0)
    assert 1e-4 < np.abs(full - float_out).max() < 0.1  # it is quantized, and close


def test_bfloat16_steps_equal_the_bfloat16_model():
    obj = randomized("bfloat16")
    full = keras.ops.convert_to_numpy(keras.ops.cast(obj.model(IDS), "float32"))
    steps, _ = stepwise(obj, IDS)
    scale = np.abs(full).max()
    assert np.abs(steps - full).max() <= 0.02 * scale


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_flag(inplace):
    """inplace=False never touches the given cache; inplace=True (torch) writes into it."""
    obj = randomized()
    cache = obj.init_cache(2, 16)
    _, cache = obj.call_with_cache(IDS[:, :5], cache)
    before = keras.ops.convert_to_numpy(cache["self"][0][0]).copy()
    _, new = obj.call_with_cache(IDS[:, 5:], cache, inplace=inplace)
    after = keras.ops.convert_to_numpy(cache["self"][0][0])
    written = keras.ops.convert_to_numpy(new["self"][0][0])
    assert not np.array_equal(written[:, 5:9], before[:, 5:9])
    if inplace and keras.backend.backend() == "torch":
        np.testing.assert_array_equal(after, written)
    else:
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "swish"])
@pytest.mark.parametrize("rows", [1, 2])
def test_int8_one_token_steps(act, rows):
    """Decoding steps of one token: on torch one row runs oneDNN's int8 linear (with the
    activation as its post-op where it has one: gelu, gelu_new, relu), more rows
    `torch._int_mm`; both are Keras' int8 arithmetic."""
    obj = build_transformer_model(None, hidden_act=act, dtype="float32", **CONFIG)
    rng = np.random.default_rng(0)
    for v in obj.model.weights:
        v.assign(rng.normal(0, 0.2, v.shape).astype("float32"))
    quantize(obj.model)
    ids = IDS[:rows]
    full = np.asarray(obj.model.predict(ids, verbose=0))
    cache = obj.init_cache(rows, 16)
    outs = []
    for t in range(ids.shape[1]):  # one token at a time, as generation does
        out, cache = obj.call_with_cache(ids[:, t : t + 1], cache, logits=True)
        outs.append(keras.ops.convert_to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5, rtol=0)


def test_a_plan_is_reused_across_steps_and_sees_new_weights_when_rebuilt():
    """A Plan prepares each layer once (on torch); after the weights change a new
    Plan (generate makes one per call) uses the new ones."""
    from kerasformers.backends import torch as torch_backend

    obj = randomized()
    plan = torch_backend.Plan() if torch_backend.available() else None
    first, _ = stepwise(obj, IDS, plan=plan)
    again, _ = stepwise(obj, IDS, plan=plan)
    np.testing.assert_array_equal(first, again)
    for v in obj.model.weights:
        v.assign(v * 0.5)
    fresh = torch_backend.Plan() if plan is not None else None
    changed, _ = stepwise(obj, IDS, plan=fresh)
    full = np.asarray(obj.model.predict(IDS, verbose=0))
    np.testing.assert_allclose(changed, full, atol=1e-5, rtol=0)
    assert np.abs(changed - first).max() > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (2, 5, 48)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_packed_linear_equals_addmm(dtype, shape, bias, transposed):
    """oneDNN's prepacked float linear (the torch path's Dense and tied LM head on
    CPU) computes x @ kernel + b: float32 to summation order, bfloat16 to one
    rounding of the float32 sum. torch is a test dependency on every backend."""
    import torch

    from kerasformers.backends.torch import kernels

    if not kernels._PACKED:
        pytest.fail("this torch build has no oneDNN prepacked linear")
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    kernel = torch.randn(48, 40, generator=gen).to(dt)  # [in, out]
    b = torch.randn(40, generator=gen).to(dt) if bias else None
    x = torch.randn(*shape, generator=gen).to(dt)
    if dtype == "bfloat16" and not kernels._PACKED_BF16:
        # this CPU has no oneDNN bfloat16 linear: Dense layers must not take it (addmm)
        assert not kernels.PackedLinear.takes(kernel)
        return
    packed = kernels.PackedLinear(
        kernel.t().contiguous() if transposed else kernel, b, transposed=transposed
    )
    got = packed(x).float()
    want = x.float() @ kernel.float() + (0 if b is None else b.float())
    assert got.shape == (*shape[:-1], 40)
    rtol = 1e-6 if dtype == "float32" else 2**-8  # bfloat16: half an ulp of rounding
    assert ((got - want).abs() <= rtol * want.abs() + 1e-5).all()


def test_packed_kernels_follow_weight_changes():
    """A layer's packed copy is kept across Plans and remade when its tensors change
    (an optimizer step writes the variables in place)."""
    import torch

    from kerasformers.backends.torch import kernels

    kernel, bias = torch.randn(8, 4), torch.randn(4)
    layer = keras.layers.Dense(4)  # only an owner of the kept copy here
    first = kernels.PackedLinear.of(layer, kernel, bias)
    assert kernels.PackedLinear.of(layer, kernel, bias) is first
    with torch.no_grad():
        kernel.mul_(2)
    second = kernels.PackedLinear.of(layer, kernel, bias)
    assert second is not first
    x = torch.randn(1, 8)
    torch.testing.assert_close(second(x), x @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_release_drops_the_kept_kernel_copies():
    """`release` frees the packed copies (torch) and the next steps remake them."""
    from kerasformers.backends import torch as torch_backend

    obj = randomized()
    first, _ = stepwise(obj, IDS)
    dropped = torch_backend.release(obj)
    # torch: q/k/v and o per layer, two FFN Dense per layer, the tied LM head
    assert dropped == (2 * 4 + 1 if torch_backend.available() else 0)
    assert torch_backend.release(obj) == 0
    again, _ = stepwise(obj, IDS)
    np.testing.assert_array_equal(first, again)
