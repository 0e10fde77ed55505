"""GlobalPooling against NumPy: padding never leaks, masks from Keras or passed explicitly."""

import keras
import numpy as np
import pytest

from kerasformers.layers import GlobalPooling
from tests.utils import to_numpy

MODES = ["mean", "max", "sum", "sqrt_mean", "first", "last"]
B, N, D = 4, 6, 3
# right padding, left padding, no padding, a row without tokens
MASK = np.array(
    [[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool
)
IDS = np.where(MASK, np.arange(1, N + 1), 0).astype("int32")


def numpy_pool(x, mask, mode):
    """Pool each row's valid tokens in float64; zeros for a row without tokens."""
    out = np.zeros((x.shape[0],) + x.shape[2:])
    for i, row in enumerate(mask):
        tokens = x[i][row].astype("float64")
        if not len(tokens):
            continue
        out[i] = {
            "mean": lambda t: t.mean(0),
            "max": lambda t: t.max(0),
            "sum": lambda t: t.sum(0),
            "sqrt_mean": lambda t: t.sum(0) / np.sqrt(len(t)),
            "first": lambda t: t[0],
            "last": lambda t: t[-1],
        }[mode](tokens)
    return out


def sequence(seed=0, shape=(B, N, D)):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("mode", MODES)
def test_explicit_mask_ignores_any_padding_value(mode):
    x = sequence()
    ref = numpy_pool(x, MASK, mode)
    noisy = x.copy()
    noisy[~MASK] = np.array([np.nan, np.inf, -np.inf, 1e30])[np.arange((~MASK).sum()) % 4, None]
    for mask in (MASK, MASK.astype("float32"), MASK.astype("int32")):
        out = to_numpy(GlobalPooling(mode)(noisy, mask=mask))
        assert out.shape == (B, D) and np.isfinite(out).all()
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[3], 0.0)  # no token: zeros


@pytest.mark.parametrize("mode", MODES)
def test_mask_from_keras_masking_and_as_model_input(mode):
    table = sequence(1, (N + 1, D))
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(N + 1, D, mask_zero=True, name="embedding")(tokens)
    pooled = GlobalPooling(mode, name="pool")(hidden)
    model = keras.Model(tokens, pooled)
    model.get_layer("embedding").set_weights([table])
    ref = numpy_pool(table[IDS], MASK, mode)
    np.testing.assert_allclose(to_numpy(model(IDS)), ref, rtol=1e-6, atol=1e-6)
    # the mask as a separate model input, passed explicitly
    x, m = keras.Input((None, D)), keras.Input((None,), dtype="bool")
    explicit = keras.Model([x, m], GlobalPooling(mode)(x, mask=m))
    np.testing.assert_allclose(to_numpy(explicit([table[IDS], MASK])), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_without_mask_every_position_counts(mode):
    x = sequence(2)
    want = numpy_pool(x, np.ones((B, N), bool), mode)
    np.testing.assert_allclose(to_numpy(GlobalPooling(mode)(x)), want, rtol=1e-5, atol=1e-6)


def test_compiled_model_with_unknown_length():
    """predict() traces the layer (TF graph, jax.jit, torch) with a None sequence length."""
    tokens, x = keras.Input((None,), dtype="int32"), keras.Input((None, D))
    hidden = keras.layers.Embedding(N + 1, D, mask_zero=True, name="embedding")(tokens)
    outputs = [GlobalPooling(mode)(h) for mode in MODES for h in (hidden, x)]
    model = keras.Model([tokens, x], outputs)
    table, data = sequence(5, (N + 1, D)), sequence(6)
    model.get_layer("embedding").set_weights([table])
    got = model.predict([IDS, data], verbose=0, batch_size=B)
    for i, mode in enumerate(MODES):
        np.testing.assert_allclose(
            got[2 * i], numpy_pool(table[IDS], MASK, mode), rtol=1e-5, atol=1e-6, err_msg=mode
        )
        np.testing.assert_allclose(
            got[2 * i + 1],
            numpy_pool(data, np.ones((B, N), bool), mode),
            rtol=1e-5,
            atol=1e-6,
            err_msg=mode,
        )


def test_higher_rank_inputs_pool_the_token_axis():
    x = sequence(3, (B, N, 2, D))
    for mode in ("max", "last", "sqrt_mean"):
        out = to_numpy(GlobalPooling(mode)(x, mask=MASK))
        assert out.shape == (B, 2, D)
        np.testing.assert_allclose(out, numpy_pool(x, MASK, mode), rtol=1e-6, atol=1e-6)


def test_first_last_average_recipe_keeps_the_mask():
    tokens = keras.Input((None,), dtype="int32")
    first = keras.layers.Embedding(N + 1, D, mask_zero=True)(tokens)
    last = keras.layers.Dense(D, name="dense")(first)
    out = GlobalPooling("mean")(keras.layers.Average()([first, last]))
    model = keras.Model(tokens, out)
    h1 = to_numpy(model.layers[1](IDS))
    h2 = to_numpy(model.get_layer("dense")(h1))
    want = numpy_pool((h1 + h2) / 2, MASK, "mean")
    np.testing.assert_allclose(to_numpy(model(IDS)), want, rtol=1e-5, atol=1e-6)


def test_config_round_trip_aliases_and_errors():
    layer = GlobalPooling("cls", name="pool")
    assert layer.get_config()["mode"] == "first"
    assert GlobalPooling("average").mode == "mean" and GlobalPooling("avg").mode == "mean"
    x = keras.Input((None, D))
    model = keras.Model(x, layer(x))
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_layer("pool").get_config() == layer.get_config()
    assert layer.compute_output_shape((None, 5, D)) == (None, D)
    with pytest.raises(ValueError, match="mode"):
        GlobalPooling("median")


@pytest.mark.parametrize("mode", ["mean", "max", "last"])
def test_bfloat16_keeps_dtype_and_is_finite(mode):
    x = sequence(4)
    out = GlobalPooling(mode, dtype="mixed_bfloat16")(x.astype("float32"), mask=MASK)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = to_numpy(out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, numpy_pool(x, MASK, mode), rtol=2e-2, atol=2e-2)
