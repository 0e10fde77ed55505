"""bert4keras.backend's helpers in `kerasformers.ops` (re-exported by `kerasformers.backend`),
each against a NumPy transcription of bert4keras 0.11.5's semantics."""

import doctest

import keras
import numpy as np
import pytest

from kerasformers import backend, losses, optimizers
from kerasformers import ops as kops
from kerasformers.ops import (
    Sinusoidal,
    align,
    apply_rotary_position_embeddings,
    batch_gather,
    divisible_temporal_padding,
    flatten,
    leaky_relu,
    pool1d,
    reshape,
    root_mean_square,
    search_layer,
    sequence_masking,
    sinusoidal_embeddings,
)
from tests.utils import to_numpy

# bert4keras.backend's public names: provided here, or gone on purpose (README migration table)
PROVIDED = [
    "gelu_erf",
    "gelu_tanh",
    "piecewise_linear",
    "search_layer",
    "align",
    "reshape",
    "flatten",
    "sequence_masking",
    "batch_gather",
    "pool1d",
    "divisible_temporal_padding",
    "root_mean_square",
    "swish",
    "leaky_relu",
    "attention_normalize",
    "sinusoidal_embeddings",
    "Sinusoidal",
    "apply_rotary_position_embeddings",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
]
GONE = [
    "K",
    "keras",
    "is_tf_keras",
    "do_recompute",
    "get_available_gpus",
    "set_gelu",
    "dtype",
    "where",
    "symbolic",
    "graph_mode_decorator",
    "recompute_grad",
    "custom_objects",
]


def test_every_bert4keras_backend_name_is_provided_or_gone_on_purpose():
    for name in PROVIDED:
        assert name in kops.__all__, name
        assert getattr(backend, name) is getattr(kops, name), name
    for name in GONE:
        assert not hasattr(backend, name), name


def test_one_implementation_each():
    assert backend.piecewise_linear is optimizers.piecewise_linear
    assert backend.multilabel_categorical_crossentropy is losses.multilabel_categorical_crossentropy
    assert (
        backend.sparse_multilabel_categorical_crossentropy
        is losses.sparse_multilabel_categorical_crossentropy
    )


def test_doctests():
    assert doctest.testmod(kops).failed == 0


# ------------------------------------------------------------- sequence_masking
def np_sequence_masking(x, mask=None, value=0.0, axis=None, bias=None):
    """bert4keras 0.11.5 `sequence_masking`, in NumPy."""
    if mask is None and bias is None:
        return x
    value = float(value)
    if mask is None:
        return np.where(bias, x, value) if bias.dtype == bool else x + bias
    axes = [1] if axis is None else (axis if isinstance(axis, list) else [axis])
    axes = [a if a >= 0 else x.ndim + a for a in axes]
    full = np.ones((1,) * x.ndim, bool)
    for a in axes:
        shape = [1] * x.ndim
        shape[0], shape[a] = mask.shape
        full = full & mask.astype(bool).reshape(shape)
    if bias is None:
        return np.where(full, x, value)
    if bias.dtype == bool:
        return np.where(full & bias, x, value)
    return np.where(full, x + bias, value)


def masking_case(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "int32")
    return x, mask


@pytest.mark.parametrize("value", [0, -1e4, "-inf", "inf"])
@pytest.mark.parametrize("axis", [None, 1, 2, -2, [1, 2]])
def test_sequence_masking_matches_bert4keras(value, axis):
    x, mask = masking_case()
    got = to_numpy(sequence_masking(x, mask, value, axis))
    np.testing.assert_array_equal(got, np_sequence_masking(x, mask, value, axis))


def test_sequence_masking_bias_and_return_mask():
    x, mask = masking_case()
    rng = np.random.RandomState(1)
    float_bias = rng.normal(size=(1, 1, 4, 3)).astype("float32")
    bool_bias = rng.rand(1, 4, 4, 1) > 0.3
    for bias in (float_bias, bool_bias):
        np.testing.assert_allclose(
            to_numpy(sequence_masking(x, mask, "-inf", 2, bias)),
            np_sequence_masking(x, mask, "-inf", 2, bias),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            to_numpy(sequence_masking(x, None, -5.0, None, bias)),
            np_sequence_masking(x, None, -5.0, None, bias),
            rtol=1e-6,
        )
    out, aligned = sequence_masking(x, mask.astype(bool), 0, 1, return_mask=True)
    assert tuple(aligned.shape) == (2, 4, 1, 1)
    np.testing.assert_array_equal(to_numpy(aligned)[:, :, 0, 0], mask.astype(bool))
    assert sequence_masking(x) is x
    assert sequence_masking(x, return_mask=True)[1] is None
    with pytest.raises(ValueError, match="'-inf'"):
        sequence_masking(x, mask, "-infinity")


def test_sequence_masking_in_a_functional_model_with_dynamic_length():
    """Symbolic use (a Lambda over [batch, None, dim]) as bert4keras layers did."""
    x_in = keras.Input((None, 3))
    m_in = keras.Input((None,), dtype="int32")
    out = keras.layers.Lambda(lambda t: sequence_masking(t[0], t[1], -1e4, 1))([x_in, m_in])
    model = keras.Model([x_in, m_in], out)
    x, mask = masking_case()
    x = x[:, :, 0]
    np.testing.assert_array_equal(
        model.predict([x, mask], verbose=0), np_sequence_masking(x, mask, -1e4, 1)
    )


# ------------------------------------------------------------------ gathering
def test_batch_gather_is_tf_gather_with_batch_dims():
    rng = np.random.RandomState(0)
    params = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    indices = rng.randint(0, 5, (2, 3, 6))
    expected = np.stack(
        [np.stack([params[i, j][indices[i, j]] for j in range(3)]) for i in range(2)]
    )
    np.testing.assert_array_equal(to_numpy(batch_gather(params, indices)), expected)
    # float indices are cast (bert4keras did the same); one batch axis
    got = to_numpy(batch_gather(params[:, 0], indices[:, 0].astype("float32")))
    np.testing.assert_array_equal(got, np.stack([params[i, 0][indices[i, 0]] for i in range(2)]))


def test_search_layer_walks_upstream_and_into_nested_models():
    ids = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 8, name="Embedding-Token")(ids)
    inner = keras.Model(ids, keras.layers.Dense(8, name="inner-dense")(x), name="encoder")
    outer_in = keras.Input((4,), dtype="int32")
    h = inner(outer_in)
    y = keras.layers.Dense(2, name="head")(keras.layers.Add()([h, h]))
    assert search_layer(y, "head").name == "head"
    assert search_layer(y, "encoder") is inner
    assert search_layer(y, "inner-dense") is inner.get_layer("inner-dense")
    assert search_layer(y, "Embedding-Token") is inner.get_layer("Embedding-Token")
    assert search_layer(inner, "Embedding-Token") is inner.get_layer("Embedding-Token")
    assert search_layer(y, "missing") is None


# ------------------------------------------------------------------- shapes
def test_align_reshape_flatten():
    x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    assert tuple(align(x, [0, 2, 3]).shape) == (2, 1, 3, 4)
    assert tuple(align(x, [0, 1, -1], 5).shape) == (2, 3, 1, 1, 4)
    with pytest.raises(ValueError):
        align(x, [0, 1])
    np.testing.assert_array_equal(to_numpy(reshape(x, (2, 2), 2)), x.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(
        to_numpy(reshape(x, (-1, 2), 2, (3, 1), 1)), x.reshape(2, 3, 1, 2, 2)
    )
    np.testing.assert_array_equal(to_numpy(reshape(x, (6, 4))), x.reshape(6, 4))
    np.testing.assert_array_equal(to_numpy(flatten(x)), x.reshape(-1))
    np.testing.assert_array_equal(to_numpy(flatten(x, 1)), x.reshape(2, 12))
    np.testing.assert_array_equal(to_numpy(flatten(x, 0, 2)), x.reshape(6, 4))
    np.testing.assert_array_equal(to_numpy(flatten(x, -2)), x.reshape(2, 12))


def test_shape_helpers_with_a_dynamic_length():
    x_in = keras.Input((None, 6))
    out = keras.layers.Lambda(
        lambda t: flatten(reshape(divisible_temporal_padding(t, 4), (3, -1), 2), 2)
    )(x_in)
    model = keras.Model(x_in, out)
    x = np.random.RandomState(0).normal(size=(2, 5, 6)).astype("float32")
    expected = np.concatenate([x, np.zeros((2, 3, 6), "float32")], axis=1)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


def test_divisible_temporal_padding_and_pool1d():
    x = np.random.RandomState(0).normal(size=(2, 7, 3)).astype("float32")
    padded = to_numpy(divisible_temporal_padding(x, 4))
    assert padded.shape == (2, 8, 3) and not padded[:, 7:].any()
    np.testing.assert_array_equal(to_numpy(divisible_temporal_padding(x, 7)), x)
    windows = np.stack([x[:, i : i + 3] for i in range(0, 5, 2)], axis=1)  # size 3, stride 2
    np.testing.assert_allclose(to_numpy(pool1d(x, 3, 2)), windows.max(axis=2))
    np.testing.assert_allclose(
        to_numpy(pool1d(x, 3, 2, pool_mode="avg")), windows.mean(axis=2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="pool_mode"):
        pool1d(x, 2, pool_mode="min")


# --------------------------------------------------------------- the maths
def test_root_mean_square_and_leaky_relu():
    x = np.random.RandomState(0).normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(to_numpy(root_mean_square(x)), np.sqrt(np.mean(x**2)), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(root_mean_square(x, axis=-1, keepdims=True)),
        np.sqrt(np.mean(x**2, axis=-1, keepdims=True)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(to_numpy(leaky_relu(x)), np.where(x > 0, x, 0.2 * x), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(leaky_relu(x, 0.1)), np.where(x > 0, x, 0.1 * x), rtol=1e-6)


def np_sinusoidal(pos, dim, base=10000.0):
    """bert4keras 0.11.5: base^(-2i/d), einsum with pos, stack (sin, cos), flatten the pair."""
    indices = np.power(float(base), -2 * np.arange(dim // 2, dtype="float64") / dim)
    emb = np.einsum("...,d->...d", pos.astype("float64"), indices)
    return np.stack([np.sin(emb), np.cos(emb)], axis=-1).reshape(pos.shape + (dim,))


def test_sinusoidal_embeddings_and_initializer():
    pos = np.array([[0, 3, 7], [1, 2, 511]], "float32")
    np.testing.assert_allclose(
        to_numpy(sinusoidal_embeddings(pos, 8)), np_sinusoidal(pos, 8), atol=2e-5
    )
    np.testing.assert_allclose(
        to_numpy(Sinusoidal()((6, 4))), np_sinusoidal(np.arange(6.0), 4), atol=1e-6
    )
    layer = keras.layers.Embedding(6, 4, embeddings_initializer=Sinusoidal())
    layer.build((None,))
    np.testing.assert_allclose(
        to_numpy(layer.embeddings), np_sinusoidal(np.arange(6.0), 4), atol=1e-6
    )


def np_rope(sinusoidal, x):
    """bert4keras 0.11.5 `apply_rotary_position_embeddings` for one tensor, in NumPy."""
    sinusoidal = sinusoidal.reshape(
        sinusoidal.shape[:2] + (1,) * (x.ndim - 3) + sinusoidal.shape[-1:]
    )
    cos_pos = np.repeat(sinusoidal[..., 1::2], 2, axis=-1)
    sin_pos = np.repeat(sinusoidal[..., ::2], 2, axis=-1)
    x2 = np.stack([-x[..., 1::2], x[..., ::2]], axis=-1).reshape(x.shape)
    return x * cos_pos + x2 * sin_pos


def test_apply_rotary_position_embeddings_matches_bert4keras():
    rng = np.random.RandomState(0)
    q = rng.normal(size=(2, 5, 3, 8)).astype("float32")  # [b, n, heads, d]
    k = rng.normal(size=(2, 5, 3, 8)).astype("float32")
    sinusoidal = np_sinusoidal(np.arange(5.0)[None], 8).astype("float32")  # [1, n, d]
    got_q, got_k = apply_rotary_position_embeddings(sinusoidal, q, k)
    np.testing.assert_allclose(to_numpy(got_q), np_rope(sinusoidal, q), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(got_k), np_rope(sinusoidal, k), rtol=1e-5, atol=1e-6)
    single = apply_rotary_position_embeddings(sinusoidal, q[:, :, 0])  # [b, n, d]
    np.testing.assert_allclose(
        to_numpy(single), np_rope(sinusoidal, q[:, :, 0]), rtol=1e-5, atol=1e-6
    )
    # relative: <R_m q, R_n k> depends on m - n only
    scores = np.einsum("bmhd,bnhd->bhmn", to_numpy(got_q)[:, :3], to_numpy(got_k)[:, :3])
    shifted = apply_rotary_position_embeddings(
        np_sinusoidal(np.arange(2.0, 7.0)[None], 8).astype("float32"), q, k
    )
    scores2 = np.einsum("bmhd,bnhd->bhmn", to_numpy(shifted[0])[:, :3], to_numpy(shifted[1])[:, :3])
    np.testing.assert_allclose(scores, scores2, rtol=1e-4, atol=1e-4)


def np_attention_normalize(a, mask, axis, method, bias=None):
    """bert4keras 0.11.5 `attention_normalize` (rows with a visible key)."""
    a = np_sequence_masking(a.astype("float64"), mask, "-inf", axis, bias)
    full = np.isfinite(a)
    if method == "softmax":
        e = np.exp(a - a.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    length = full.sum(axis=axis, keepdims=True).astype("float64")
    if method == "squared_relu":
        return np.where(full, np.maximum(a, 0) ** 2, 0) / length
    scaled = np.where(full, a * np.log(np.maximum(length, 16)) / np.log(512), -np.inf)
    e = np.exp(scaled - scaled.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("method", ["softmax", "squared_relu", "softmax_plus"])
def test_attention_normalize_takes_bert4keras_masks_and_bias(method):
    rng = np.random.RandomState(0)
    a = rng.normal(size=(2, 3, 4, 4)).astype("float32")  # [batch, heads, queries, keys]
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "int32")
    bias = rng.normal(size=(1, 1, 4, 4)).astype("float32")
    got = to_numpy(kops.attention_normalize(a, mask, -1, method))
    np.testing.assert_allclose(
        got, np_attention_normalize(a, mask, -1, method), rtol=1e-5, atol=1e-6
    )
    got = to_numpy(kops.attention_normalize(a, mask, -1, method, bias=bias))
    np.testing.assert_allclose(
        got, np_attention_normalize(a, mask, -1, method, bias), rtol=1e-5, atol=1e-6
    )
    causal = np.tril(np.ones((4, 4), bool))[None, None]
    got = to_numpy(kops.attention_normalize(a, mask, -1, method, bias=causal))
    np.testing.assert_allclose(
        got, np_attention_normalize(a, mask, -1, method, causal), rtol=1e-5, atol=1e-6
    )
