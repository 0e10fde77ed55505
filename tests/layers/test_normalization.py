"""(Conditional) LayerNormalization and ScaleOffset against NumPy formulas and bert4keras.

The bert4keras outputs come from scripts/make_gau_fixtures.py
(tests/fixtures/bert4keras_layers/layer_normalization.npz): standard, RMS,
parameter-free and conditional (bert4keras' layer_norm_cond) cases.
"""

import json
import os

import keras
import numpy as np
import pytest

from kerasformers.layers import Embedding, LayerNormalization, ScaleOffset
from tests.utils import to_numpy

FIXTURE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)),
    "fixtures",
    "bert4keras_layers",
    "layer_normalization.npz",
)
TOL = 1e-4


def load():
    with np.load(FIXTURE, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {}
    for key in arrays:
        if key.endswith("/config"):
            case = key[: -len("/config")]
            weights = {
                k[len(case) + 9 :]: v for k, v in arrays.items() if k.startswith(case + "/weights/")
            }
            cases[case] = (json.loads(str(arrays[key])), arrays[case + "/output"], weights)
    return cases, arrays["x"], arrays["cond"]


CASES, X, COND = load()
ACTIVATIONS = {"linear": lambda h: h, "relu": lambda h: np.maximum(h, 0)}


def numpy_layer_norm(x, weights, config, cond=None):
    """Float64: normalise, then gamma (+ cond Wg) and beta (+ cond Wb) as configured."""
    x = x.astype("float64")
    w = {k: v.astype("float64") for k, v in weights.items()}
    if config.get("zero_mean", True):
        x = x - x.mean(-1, keepdims=True)
    if config.get("unit_variance", True):
        x = x / np.sqrt((x**2).mean(-1, keepdims=True) + config.get("epsilon", 1e-7))
    gamma, beta = w.get("gamma", 1.0), w.get("beta", 0.0)
    if config.get("conditional"):
        c = cond.astype("float64")
        if "hidden_dense/kernel" in w:
            c = ACTIVATIONS[config.get("hidden_activation", "linear")](c @ w["hidden_dense/kernel"])
        while c.ndim < x.ndim:
            c = c[:, None]
        if "gamma_dense/kernel" in w:
            gamma = gamma + c @ w["gamma_dense/kernel"]
        if "beta_dense/kernel" in w:
            beta = beta + c @ w["beta_dense/kernel"]
    return x * gamma + beta


def relative_weights(layer):
    """{'beta', 'gamma', '<sublayer>/kernel': variable} relative to the layer."""
    return {w.path[len(layer.name) + 1 :]: w for w in layer.weights}


def set_weights(layer, weights):
    ours = relative_weights(layer)
    assert sorted(ours) == sorted(weights)
    for name, value in weights.items():
        ours[name].assign(value)


def test_fixture_cases_present():
    assert sorted(CASES) == [
        "conditional",
        "conditional_hidden",
        "conditional_scale_only",
        "parameter_free",
        "rms",
        "standard",
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_bert4keras_and_numpy(case):
    config, want, weights = CASES[case]
    layer = LayerNormalization(**config)
    inputs = [X, COND] if config.get("conditional") else X
    layer.build([X.shape, COND.shape] if config.get("conditional") else X.shape)
    set_weights(layer, weights)
    ours = to_numpy(layer(inputs))
    ref = numpy_layer_norm(X, weights, config, COND)
    assert ours.shape == want.shape
    assert np.abs(ref - want).max() <= TOL, "NumPy formula disagrees with bert4keras"
    assert np.abs(ours - want).max() <= TOL


def test_conditional_starts_as_the_plain_norm_and_learns_from_the_condition():
    """beta_dense / gamma_dense are zero-initialised: a fresh conditional norm is the plain one."""
    plain = LayerNormalization()
    cond_ln = LayerNormalization(conditional=True, hidden_units=5, hidden_activation="relu")
    np.testing.assert_allclose(to_numpy(cond_ln([X, COND])), to_numpy(plain(X)), rtol=0, atol=1e-6)
    names = sorted(relative_weights(cond_ln))
    assert names == [
        "beta",
        "beta_dense/kernel",
        "gamma",
        "gamma_dense/kernel",
        "hidden_dense/kernel",
    ]
    assert all(
        not to_numpy(relative_weights(cond_ln)[n]).any()
        for n in ("beta_dense/kernel", "gamma_dense/kernel")
    )
    # trainable: one step on a condition-dependent target moves the zero kernels
    target = X * (1.0 + COND[:, :1, None])
    cx, cc = keras.Input(X.shape[1:]), keras.Input(COND.shape[1:])
    model = keras.Model([cx, cc], cond_ln([cx, cc]))
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch([X, COND], target)
    assert np.abs(to_numpy(relative_weights(cond_ln)["gamma_dense/kernel"])).max() > 0


def test_per_token_condition_and_custom_weights_match_numpy():
    rng = np.random.RandomState(0)
    cond = rng.normal(size=X.shape[:2] + (4,)).astype("float32")  # [b, n, dc]
    layer = LayerNormalization(conditional=True, hidden_units=3, epsilon=1e-12)
    layer.build([X.shape, cond.shape])
    weights = {
        k: rng.normal(size=w.shape).astype("float32") for k, w in relative_weights(layer).items()
    }
    set_weights(layer, weights)
    np.testing.assert_allclose(
        to_numpy(layer([X, cond])),
        numpy_layer_norm(X, weights, layer.get_config(), cond),
        rtol=0,
        atol=TOL,
    )


def test_scale_offset_constants_and_condition():
    """Constant scale with a conditional offset: x * 2 + cond Wb (no gamma weights)."""
    layer = ScaleOffset(scale=2.0, offset=True, conditional=True)
    layer.build([X.shape, COND.shape])
    assert sorted(relative_weights(layer)) == ["beta", "beta_dense/kernel", "gamma_dense/kernel"]
    rng = np.random.RandomState(1)
    weights = {
        k: rng.normal(size=w.shape).astype("float32") for k, w in relative_weights(layer).items()
    }
    set_weights(layer, weights)
    c = COND.astype("float64")[:, None]
    want = (
        X * (2.0 + c @ weights["gamma_dense/kernel"])
        + weights["beta"]
        + c @ weights["beta_dense/kernel"]
    )
    np.testing.assert_allclose(to_numpy(layer([X, COND])), want, rtol=0, atol=TOL)


def test_mask_passes_through_and_config_round_trips():
    tokens, cond = keras.Input((None,), dtype="int32"), keras.Input((4,))
    h = Embedding(10, 6, mask_zero=True)(tokens)
    layer = LayerNormalization(
        conditional=True,
        hidden_units=5,
        hidden_activation="gelu",
        hidden_initializer="he_normal",
        zero_mean=False,
        offset=False,
        epsilon=1e-6,
        name="cln",
    )
    out = layer([h, cond])
    assert out._keras_mask is not None
    model = keras.Model([tokens, cond], out)
    config = layer.get_config()
    assert config["hidden_activation"] == "gelu" and config["epsilon"] == 1e-6
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights([np.random.RandomState(2).normal(size=w.shape) for w in model.weights])
    model.set_weights(clone.get_weights())
    assert clone.get_layer("cln").get_config() == config
    ids = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 1]], "int32")
    np.testing.assert_array_equal(to_numpy(clone([ids, COND])), to_numpy(model([ids, COND])))


def test_mixed_bfloat16_normalises_in_float32():
    layer = LayerNormalization(conditional=True, hidden_units=3, dtype="mixed_bfloat16")
    out = layer([X * 1e3, COND])  # large inputs: a bfloat16 variance would be coarse
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    plain = numpy_layer_norm(X, {"gamma": np.ones(6), "beta": np.zeros(6)}, {})
    np.testing.assert_allclose(to_numpy(out), plain, rtol=0, atol=2e-2)
