"""GlobalPointer / EfficientGlobalPointer against an independent NumPy computation."""

import keras
import numpy as np
import pytest

from kerasformers.layers import EfficientGlobalPointer, GlobalPointer
from kerasformers.losses import global_pointer_crossentropy, global_pointer_f1
from tests.utils import to_numpy

B, N, HIDDEN, HEADS, SIZE = 2, 5, 6, 3, 4
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)


def rope(x):
    """Rotate each pair (x[2i], x[2i+1]) at position p by p * 10000^(-2i/d); x [b, n, ..., d]."""
    d = x.shape[-1]
    theta = np.arange(x.shape[1])[:, None] * 10000.0 ** (-2 * np.arange(d // 2) / d)  # [n, d/2]
    theta = theta.reshape((1, x.shape[1]) + (1,) * (x.ndim - 3) + (d // 2,))
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) - odd * np.sin(theta)
    out[..., 1::2] = odd * np.cos(theta) + even * np.sin(theta)
    return out


def numpy_mask(logits, mask, tril):
    keep = np.ones(logits.shape, bool)
    if mask is not None:
        keep &= mask[:, None, :, None] & mask[:, None, None, :]
    if tril:
        keep &= np.triu(np.ones((N, N), bool))[None, None]
    return keep


def numpy_global_pointer(x, kernel, bias, rope_on):
    h = x.astype("float64") @ kernel + bias  # [b, n, heads * 2d]
    h = h.reshape(B, N, HEADS, 2 * SIZE)
    q, k = h[..., :SIZE], h[..., SIZE:]
    if rope_on:
        q, k = rope(q), rope(k)
    return np.einsum("bmhd,bnhd->bhmn", q, k) / np.sqrt(SIZE)


def numpy_efficient(x, p_kernel, p_bias, q_kernel, q_bias, rope_on):
    h = x.astype("float64") @ p_kernel + p_bias  # [b, n, 2d]
    q, k = h[..., 0::2], h[..., 1::2]
    if rope_on:
        q, k = rope(q), rope(k)
    logits = np.einsum("bmd,bnd->bmn", q, k) / np.sqrt(SIZE)
    head_bias = (h @ q_kernel + q_bias) / 2  # [b, n, 2 * heads]
    start, end = head_bias[..., 1::2], head_bias[..., 0::2]  # odd: start i, even: end j
    return (
        logits[:, None]
        + end.transpose(0, 2, 1)[:, :, None, :]
        + start.transpose(0, 2, 1)[:, :, :, None]
    )


def randomize(layer, seed):
    rng = np.random.RandomState(seed)
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.5)


def inputs(seed=0):
    return np.random.RandomState(seed).normal(size=(B, N, HIDDEN)).astype("float32")


@pytest.mark.parametrize("cls", [GlobalPointer, EfficientGlobalPointer])
@pytest.mark.parametrize(
    "RoPE,tril_mask,use_mask",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True)],
)
def test_scores_equal_numpy(cls, RoPE, tril_mask, use_mask):
    x = inputs()
    layer = cls(HEADS, SIZE, RoPE=RoPE, tril_mask=tril_mask)
    layer.build(x.shape)
    randomize(layer, 1)
    mask = MASK if use_mask else None
    ours = to_numpy(layer(x, mask=mask))
    weights = [to_numpy(w).astype("float64") for w in layer.weights]
    if cls is GlobalPointer:
        ref = numpy_global_pointer(x, *weights, RoPE)
    else:
        ref = numpy_efficient(x, *weights, RoPE)
    keep = numpy_mask(ref, mask, tril_mask)
    assert ours.shape == (B, HEADS, N, N)
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-4, atol=1e-4)
    assert (ours[~keep] == -1e12).all()
    if not tril_mask:
        assert (~keep).sum() == (0 if mask is None else (~numpy_mask(ref, mask, False)).sum())


@pytest.mark.parametrize("cls", [GlobalPointer, EfficientGlobalPointer])
def test_keras_mask_from_embedding_and_config_round_trip(cls):
    ids = np.array([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0]], "int32")
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(10, HIDDEN, mask_zero=True)(tokens)
    layer = cls(HEADS, SIZE, use_bias=False, kernel_initializer="glorot_uniform", name="gp")
    model = keras.Model(tokens, layer(hidden))
    scores = to_numpy(model(ids))
    assert (scores[1, :, 3:, :] == -1e12).all() and (scores[1, :, :, 3:] == -1e12).all()
    assert (scores[0][numpy_mask(scores, None, True)[0]] > -1e11).all()
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(ids)), scores)
    config = layer.get_config()
    assert type(clone.get_layer("gp")) is cls and clone.get_layer("gp").get_config() == config
    assert config["use_bias"] is False and len(layer.weights) == (1 if cls is GlobalPointer else 2)


def test_rope_scores_depend_on_relative_position_only():
    """With RoPE, a token pair shifted together along the sequence scores the same."""
    layer = GlobalPointer(1, SIZE, tril_mask=False)
    x = np.zeros((1, N, HIDDEN), "float32")
    x[0, 0], x[0, 2] = inputs()[0, :2]
    shifted = np.roll(x, 2, axis=1)
    a, b = to_numpy(layer(x)), to_numpy(layer(shifted))
    np.testing.assert_allclose(a[0, 0, 0, 2], b[0, 0, 2, 4], rtol=1e-5)


@pytest.mark.parametrize("cls", [GlobalPointer, EfficientGlobalPointer])
def test_mixed_bfloat16_training_has_no_nan(cls):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        ids = np.array([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0]] * 2, "int32")
        labels = np.zeros((4, HEADS, N, N), "float32")
        labels[:, 0, 1, 2] = labels[:, 2, 0, 0] = 1.0
        tokens = keras.Input((None,), dtype="int32")
        hidden = keras.layers.Embedding(10, HIDDEN, mask_zero=True)(tokens)
        layer = cls(HEADS, SIZE)
        model = keras.Model(tokens, layer(hidden))
        scores = model(ids)
        assert keras.backend.standardize_dtype(scores.dtype) == "bfloat16"
        scores = to_numpy(scores)
        assert np.isfinite(scores).all() and scores.min() < -1e11
        model.compile(
            keras.optimizers.Adam(0.01),
            loss=global_pointer_crossentropy,
            metrics=[global_pointer_f1],
        )
        history = model.fit(ids, labels, batch_size=2, epochs=2, verbose=0).history
        assert np.isfinite(history["loss"]).all()
        assert all(np.isfinite(to_numpy(w)).all() for w in model.weights)
    finally:
        keras.config.set_dtype_policy(previous)


def test_float16_mask_value_is_finite():
    layer = GlobalPointer(HEADS, SIZE, dtype="float16")
    scores = to_numpy(layer(inputs(), mask=MASK))
    assert np.isfinite(scores).all() and scores.min() == np.float32(np.float16(-6e4))
