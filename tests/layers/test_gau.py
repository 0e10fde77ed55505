"""GatedAttentionUnit against bert4keras 0.11.5 fixtures and an independent NumPy GAU.

The fixtures come from scripts/make_gau_fixtures.py (run in a bert4keras
environment); every case also checks the NumPy reference against them, so the
reference itself is pinned to bert4keras.
"""

import glob
import json
import math
import os

import keras
import numpy as np
import pytest

from kerasformers.layers import AttentionMask, GatedAttentionUnit, SinusoidalPositionEmbedding
from tests.utils import to_numpy

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "gau")
CASES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(FIXTURES, "*.npz")))
TOL = 1e-5  # the README's bound; measured up to 3.4e-6 (NumPy vs bert4keras, unscaled case)
LENGTHS = [7, 3, 0]  # row 2 is fully padded
# The fixtures' sizes everywhere: JAX compiles each eager op once per shape.
N, HIDDEN, UNITS, KEY = 7, 8, 12, 6


def load(case):
    with np.load(os.path.join(FIXTURES, case + ".npz"), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["config"] = json.loads(str(arrays["config"]))
    arrays["weights"] = {
        k[len("weights/") :]: arrays.pop(k) for k in list(arrays) if k.startswith("weights/")
    }
    return arrays


# ---------------------------------------------------------------- NumPy reference

_erf = np.vectorize(math.erf)
ACTIVATIONS = {
    "swish": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
}


def rope(x):
    """Rotate pairs (x[2i], x[2i+1]) at position p by p * 10000^(-2i/d); x [b, n, d]."""
    d = x.shape[-1]
    theta = np.arange(x.shape[1])[:, None] * 10000.0 ** (-2 * np.arange(d // 2) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) - odd * np.sin(theta)
    out[..., 1::2] = odd * np.cos(theta) + even * np.sin(theta)
    return out


def dense(x, w, name, activation=None):
    y = x @ w[name + "/kernel"]
    if name + "/bias" in w:
        y = y + w[name + "/bias"]
    return y if activation is None else activation(y)


def affine(z, w, name):
    return z * w[name + "/gamma"] + w.get(name + "/beta", 0.0)


def numpy_gau(
    inputs, w, config, mask=None, attention_mask=None, attention_bias=None, use_rope=False
):
    """Float64 GAU: o_dense(u * (A v)), A normalised over the visible keys."""
    w = {k: v.astype("float64") for k, v in w.items()}
    act = ACTIVATIONS[config.get("activation", "swish")]
    units, key_size = config["units"], config["key_size"]
    if config.get("self_attention", True):
        h = dense(inputs[0].astype("float64"), w, "i_dense", act)
        u, v, z = h[..., :units], h[..., units : 2 * units], h[..., 2 * units :]
        q, k = affine(z, w, "q_scaleoffset"), affine(z, w, "k_scaleoffset")
    else:
        q, k, v = (t.astype("float64") for t in inputs)
        uq = dense(q, w, "uq_dense", act)
        u, q = uq[..., :units], uq[..., units:]
        k, v = dense(k, w, "k_dense", act), dense(v, w, "v_dense", act)
    if use_rope:
        q, k = rope(q), rope(k)
    a = q @ k.transpose(0, 2, 1)
    if config.get("attention_scale", True):
        a = a / np.sqrt(key_size)
    if attention_bias is not None:
        a = a + attention_bias
    visible = np.ones(a.shape, bool)
    if mask is not None:
        visible &= mask[:, None, :]
    if attention_mask is not None:
        visible &= attention_mask
    length = visible.sum(-1, keepdims=True)
    method = config.get("normalization", "squared_relu")
    if method == "squared_relu":
        probs = np.where(visible, np.maximum(a, 0) ** 2, 0) / np.maximum(length, 1)
    else:
        if method == "softmax_plus":
            a = a * np.log(np.maximum(length, 16)) / np.log(512)
        e = np.where(visible, np.exp(a - np.where(visible, a, -np.inf).max(-1, keepdims=True)), 0)
        probs = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)
    return dense(u * (probs @ v), w, "o_dense")


# ---------------------------------------------------------------- helpers


def inputs_of(arrays):
    return [arrays[k] for k in ("x", "q", "k", "v") if k in arrays]


def set_weights(layer, weights):
    """Assign fixture weights by '<sublayer>/<name>'; both sides must hold the same names."""
    ours = {"/".join(w.path.split("/")[-2:]): w for w in layer.weights}
    assert sorted(ours) == sorted(weights)
    for name, value in weights.items():
        ours[name].assign(value)


def call_ours(layer, arrays, rope_from_layer=False):
    inputs = inputs_of(arrays)
    kwargs = {}
    mask = arrays.get("mask")
    if mask is not None:
        kwargs["mask"] = mask if len(inputs) == 1 else [None, mask, mask]
    for name in ("attention_mask", "attention_bias"):
        if name in arrays:
            kwargs[name] = arrays[name]
    if int(arrays["rope"]) and not rope_from_layer:
        kwargs["position_bias"] = SinusoidalPositionEmbedding(layer.key_size, merge_mode="zero")(
            inputs[-1]
        )
        kwargs["p_bias"] = "rotary"
    return to_numpy(layer(inputs[0] if len(inputs) == 1 else inputs, **kwargs))


def built_layer(arrays, **overrides):
    layer = GatedAttentionUnit(**dict(arrays["config"], **overrides))
    inputs = inputs_of(arrays)
    layer.build([i.shape for i in inputs] if len(inputs) > 1 else inputs[0].shape)
    set_weights(layer, arrays["weights"])
    return layer


def padded_batch(seed=0, n=N, hidden=HIDDEN):
    x = np.random.RandomState(seed).normal(size=(len(LENGTHS), n, hidden)).astype("float32")
    mask = np.arange(n)[None] < np.array(LENGTHS)[:, None]
    return x, mask


def randomize(layer, seed=1):
    rng = np.random.RandomState(seed)
    for w in layer.weights:
        base = 1.0 if w.path.endswith("gamma") else 0.0
        w.assign((base + 0.3 * rng.normal(size=w.shape)).astype("float32"))
    return {"/".join(w.path.split("/")[-2:]): to_numpy(w) for w in layer.weights}


# ---------------------------------------------------------------- tests


def test_fixtures_present():
    assert len(CASES) == 7, CASES


@pytest.mark.parametrize("case", CASES)
def test_equals_bert4keras_and_numpy(case):
    arrays = load(case)
    layer = built_layer(arrays)
    ours = call_ours(layer, arrays)
    ref = numpy_gau(
        inputs_of(arrays),
        arrays["weights"],
        arrays["config"],
        arrays.get("mask"),
        arrays.get("attention_mask"),
        arrays.get("attention_bias"),
        bool(arrays["rope"]),
    )
    want = arrays["output"]
    assert ours.shape == want.shape
    assert np.abs(ref - want).max() <= TOL, "NumPy reference disagrees with bert4keras"
    assert np.abs(ours - want).max() <= TOL
    assert np.abs(ours - ref).max() <= TOL
    if int(arrays["rope"]):  # rope=True computes the same positions inside the layer
        same = call_ours(built_layer(arrays, rope=True), arrays, rope_from_layer=True)
        np.testing.assert_allclose(same, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("normalization", ["squared_relu", "softmax_plus", "softmax"])
def test_padded_keys_never_leak_and_empty_rows_are_finite(normalization):
    x, mask = padded_batch()
    layer = GatedAttentionUnit(UNITS, KEY, normalization=normalization, rope=True)
    layer.build(x.shape)
    weights = randomize(layer)
    out = to_numpy(layer(x, mask=mask))
    ref = numpy_gau([x], weights, layer.get_config(), mask, use_rope=True)
    valid = np.array(LENGTHS) > 0
    np.testing.assert_allclose(out[valid], ref[valid], rtol=0, atol=TOL)
    noisy = np.where(mask[..., None], x, 100.0 * np.random.RandomState(3).normal(size=x.shape))
    np.testing.assert_allclose(
        to_numpy(layer(noisy, mask=mask))[:, :3][valid], out[:, :3][valid], rtol=0, atol=1e-5
    )
    # no visible key at all: u * 0 -> o_dense(0) = its bias, never NaN or an average of padding
    assert np.isfinite(out).all()
    np.testing.assert_allclose(
        out[2], np.broadcast_to(weights["o_dense/bias"], out[2].shape), rtol=0, atol=1e-6
    )


def test_keras_mask_from_embedding_hides_padding():
    ids = np.array([[3, 4, 5, 6, 7, 8, 9], [8, 9, 2, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0]], "int32")
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(10, HIDDEN, mask_zero=True, name="embedding")(tokens)
    gau = GatedAttentionUnit(UNITS, KEY, normalization="softmax_plus", rope=True, name="gau")
    out = gau(hidden)
    model = keras.Model(tokens, out)
    assert out._keras_mask is not None  # the padding mask flows on
    weights = randomize(model)
    ours = model.predict(ids, verbose=0, batch_size=3)  # traced, length unknown
    vectors = weights["embedding/embeddings"][ids]
    gau_weights = {k: v for k, v in weights.items() if not k.startswith("embedding/")}
    ref = numpy_gau([vectors], gau_weights, gau.get_config(), ids != 0, use_rope=True)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    # without the mask the padded keys do change row 1
    assert np.abs(to_numpy(gau(vectors))[1, :3] - ours[1, :3]).max() > 1e-3


def test_attention_mask_3d_4d_and_causality():
    x, mask = padded_batch()
    ids = np.where(mask, 5, 0)
    layer = GatedAttentionUnit(UNITS, KEY)
    layer.build(x.shape)
    weights = randomize(layer)
    causal3 = np.tril(np.ones((N, N), bool))[None]
    causal4 = AttentionMask("lm")(ids)  # [b, 1, q, k], padding and causal
    a = to_numpy(layer(x, mask=mask, attention_mask=causal3))
    b = to_numpy(layer(x, attention_mask=causal4))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    ref = numpy_gau([x], weights, layer.get_config(), mask, causal3)
    np.testing.assert_allclose(a, ref, rtol=0, atol=TOL)
    future = x.copy()
    future[:, 3:] += 1.0
    c = to_numpy(layer(future, mask=mask, attention_mask=causal3))
    np.testing.assert_allclose(c[:, :3], a[:, :3], rtol=0, atol=1e-6)
    assert np.abs(c[0, 3:] - a[0, 3:]).max() > 1e-3


def test_attention_bias_is_added_before_normalization():
    x, mask = padded_batch()
    bias = np.random.RandomState(4).normal(size=(3, N, N)).astype("float32")
    layer = GatedAttentionUnit(UNITS, KEY, normalization="softmax")
    layer.build(x.shape)
    weights = randomize(layer)
    out = to_numpy(layer(x, mask=mask, attention_bias=bias[:, None]))  # 4-D works too
    ref = numpy_gau([x], weights, layer.get_config(), mask, attention_bias=bias)
    np.testing.assert_allclose(out[:2], ref[:2], rtol=0, atol=TOL)


def test_cross_attention_uses_the_key_mask():
    x, mask = padded_batch()
    q = x[:, :4]
    layer = GatedAttentionUnit(UNITS, KEY, self_attention=False, normalization="softmax_plus")
    layer.build([q.shape, x.shape, x.shape])
    weights = randomize(layer)
    out = to_numpy(layer([q, x, x], mask=[None, mask, mask]))
    ref = numpy_gau([q, x, x], weights, layer.get_config(), mask)
    assert out.shape == (3, 4, HIDDEN)
    np.testing.assert_allclose(out[:2], ref[:2], rtol=0, atol=TOL)


def test_config_and_keras_file_round_trip(tmp_path):
    x = keras.Input((None, HIDDEN))
    layer = GatedAttentionUnit(
        UNITS,
        KEY,
        activation="gelu",
        use_bias=False,
        normalization="softmax_plus",
        attention_scale=False,
        attention_dropout=0.1,
        rope=True,
        name="gau",
    )
    model = keras.Model(x, layer(x))
    config = layer.get_config()
    assert config["activation"] == "gelu" and config["attention_dropout"] == 0.1
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_layer("gau").get_config() == config
    data, _ = padded_batch()
    randomize(model)
    want = to_numpy(model(data))
    model.save(tmp_path / "gau.keras")
    loaded = keras.saving.load_model(tmp_path / "gau.keras")
    np.testing.assert_array_equal(to_numpy(loaded(data)), want)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(data)), want)
    assert sorted(w.path for w in layer.weights) == [
        "gau/i_dense/kernel",
        "gau/k_scaleoffset/gamma",
        "gau/o_dense/kernel",
        "gau/q_scaleoffset/gamma",
    ]
    with pytest.raises(ValueError, match="normalization"):
        GatedAttentionUnit(UNITS, KEY, normalization="sparsemax")
    with pytest.raises(ValueError, match="position_bias"):
        GatedAttentionUnit(UNITS, KEY)(data, p_bias="rotary")


def test_attention_dropout_only_in_training():
    x, mask = padded_batch()
    layer = GatedAttentionUnit(UNITS, KEY, attention_dropout=0.5)
    layer.build(x.shape)
    weights = randomize(layer)
    ref = numpy_gau([x], weights, layer.get_config(), mask)
    np.testing.assert_allclose(
        to_numpy(layer(x, mask=mask, training=False))[:2], ref[:2], rtol=0, atol=TOL
    )
    dropped = to_numpy(layer(x, mask=mask, training=True))
    assert np.isfinite(dropped).all() and np.abs(dropped[:2] - ref[:2]).max() > 1e-3


def test_mixed_bfloat16_is_finite():
    keras.config.set_dtype_policy("mixed_bfloat16")
    x, mask = padded_batch()
    layer = GatedAttentionUnit(UNITS, KEY, normalization="softmax_plus", rope=True)
    layer.build(x.shape)
    weights = randomize(layer)
    out = layer(x, mask=mask)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = to_numpy(out)
    assert np.isfinite(out).all()
    ref = numpy_gau([x], weights, layer.get_config(), mask, use_rope=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=0.05 * np.abs(ref).max())
