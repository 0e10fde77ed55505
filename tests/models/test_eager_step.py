"""Cached steps of reduced-precision models equal their Keras forward pass.

On torch a cached step runs the common layers as plain torch calls
(`kerasformers.models.eager_step`, float32, bfloat16 and Keras' int8 Dense);
on jax and tensorflow the same checks run through Keras. Float32 steps are
checked against the uncached model in test_cache.py.
"""

import warnings

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model

CONFIG = dict(model="gpt2", vocab_size=98,  # not a multiple of 8 (int8 kernels pad)
              hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=64, final_activation="linear",
              return_keras_model=False)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers without int8 weights say so
        obj.model.quantize("int8")
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj.model.quantize("int8")
    ids = IDS[:rows]
    full = np.asarray(obj.model.predict(ids, verbose=0))
    cache = obj.init_cache(rows, 16)
    outs = []
    for t in range(ids.shape[1]):  # one token at a time, as generation does
        out, cache = obj.call_with_cache(ids[:, t:t + 1], cache, logits=True)
        outs.append(keras.ops.convert_to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5, rtol=0)


def test_a_plan_is_reused_across_steps_and_sees_new_weights_when_rebuilt():
    """A Plan prepares each layer once (on torch); after the weights change a new
    Plan (generate makes one per call) uses the new ones."""
    from kerasformers.models import eager_step

    obj = randomized()
    plan = eager_step.Plan() if eager_step.available() else None
    first, _ = stepwise(obj, IDS, plan=plan)
    again, _ = stepwise(obj, IDS, plan=plan)
    np.testing.assert_array_equal(first, again)
    for v in obj.model.weights:
        v.assign(v * 0.5)
    fresh = eager_step.Plan() if plan is not None else None
    changed, _ = stepwise(obj, IDS, plan=fresh)
    full = np.asarray(obj.model.predict(IDS, verbose=0))
    np.testing.assert_allclose(changed, full, atol=1e-5, rtol=0)
    assert np.abs(changed - first).max() > 1e-3
