"""Losses and metrics against independent NumPy formulas (float64), incl. huge logits."""

import doctest

import keras
import numpy as np
import pytest

from kerasformers import losses
from kerasformers.losses import (
    am_softmax_loss,
    global_pointer_crossentropy,
    global_pointer_f1,
    multilabel_categorical_crossentropy,
    sequence_masked_accuracy,
    sequence_masked_crossentropy,
    sparse_global_pointer_crossentropy,
    sparse_multilabel_categorical_crossentropy,
)
from tests.utils import to_numpy


def lse(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def np_mcce(y_true, y_pred):
    """Su's multi-label CE, written from its definition; -inf logits are dropped."""
    out = []
    for t, s in zip(y_true.reshape(-1, y_true.shape[-1]), y_pred.reshape(-1, y_pred.shape[-1])):
        keep = s > -np.inf
        t, s = t[keep].astype("float64"), s[keep].astype("float64")
        with np.errstate(divide="ignore"):
            neg = np.concatenate([s + np.log(1 - t), [0.0]])
            pos = np.concatenate([-s + np.log(t), [0.0]])
        out.append(lse(neg) + lse(pos))
    return np.array(out).reshape(y_true.shape[:-1])


def test_doctests():
    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_multilabel_categorical_crossentropy(scale):
    rng = np.random.RandomState(0)
    y_pred = (scale * rng.normal(size=(2, 3, 7))).astype("float32")
    y_true = (rng.rand(2, 3, 7) < 0.3).astype("float32")
    ours = to_numpy(multilabel_categorical_crossentropy(y_true, y_pred))
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, np_mcce(y_true, y_pred), rtol=1e-5, atol=1e-4)


def test_multilabel_soft_labels_and_masked_logits():
    rng = np.random.RandomState(1)
    y_pred = rng.normal(size=(4, 6)).astype("float32")
    y_true = rng.rand(4, 6).astype("float32")
    y_true[:, 0] = 0.0
    y_pred[:, 0] = -np.inf  # masked candidates
    ours = to_numpy(multilabel_categorical_crossentropy(y_true, y_pred))
    np.testing.assert_allclose(ours, np_mcce(y_true, y_pred), rtol=1e-5)
    np.testing.assert_allclose(ours, np_mcce(y_true[:, 1:], y_pred[:, 1:]), rtol=1e-5)


def np_sparse_mcce(y_true, y_pred, mask_zero):
    dense = np.zeros(y_pred.shape, "float32")
    for idx in np.ndindex(y_true.shape[:-1]):
        for k in y_true[idx]:
            if not (mask_zero and k == 0):
                dense[idx + (k,)] = 1.0
    if mask_zero:  # class 0 takes no part
        return np_mcce(dense[..., 1:], y_pred[..., 1:])
    return np_mcce(dense, y_pred)


@pytest.mark.parametrize("mask_zero", [False, True])
@pytest.mark.parametrize("scale", [2.0, 1e4])
def test_sparse_multilabel_equals_dense(mask_zero, scale):
    rng = np.random.RandomState(2)
    y_pred = (scale * rng.normal(size=(3, 9))).astype("float32")
    y_true = np.array(
        [[1, 4, 7], [2, 5, 0], [0, 0, 0]] if mask_zero else [[1, 4, 7], [2, 5, 8], [0, 3, 6]],
        "int32",
    )
    ours = to_numpy(sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero))
    assert np.isfinite(ours).all()
    # exact even where bert4keras' log(sum_all - sum_pos) cancelled (positives >> the rest)
    np.testing.assert_allclose(ours, np_sparse_mcce(y_true, y_pred, mask_zero), rtol=1e-5)


def gp_batch(seed=3, b=2, h=3, n=4):
    rng = np.random.RandomState(seed)
    y_pred = rng.normal(size=(b, h, n, n)).astype("float32") * 3
    y_pred[..., np.tril_indices(n, -1)[0], np.tril_indices(n, -1)[1]] = -1e12
    y_true = np.zeros_like(y_pred)
    spans = np.zeros((b, h, 2, 2), "int32")  # <= 2 spans per head, (0, 0) pads
    for i, j in np.ndindex(b, h):
        for k in range(rng.randint(0, 3)):
            start = rng.randint(1, n)
            end = rng.randint(start, n)
            if y_true[i, j, start, end] == 0:
                y_true[i, j, start, end] = 1
                spans[i, j, k] = (start, end)
    return y_true, y_pred, spans


def test_global_pointer_crossentropy_and_sparse_variant():
    y_true, y_pred, spans = gp_batch()
    b, h, n, _ = y_pred.shape
    ref = np_mcce(y_true.reshape(b, h, -1), y_pred.reshape(b, h, -1)).mean(1)
    np.testing.assert_allclose(
        to_numpy(global_pointer_crossentropy(y_true, y_pred)), ref, rtol=1e-5
    )
    # sparse: span (0, 0) is padding and never a label, so the two agree
    # (GPLinker sums over heads; "mean" is the opt-in)
    flat = y_pred.reshape(b, h, -1)[..., 1:]
    per_head = np_mcce(y_true.reshape(b, h, -1)[..., 1:], flat)
    sparse = to_numpy(sparse_global_pointer_crossentropy(spans, y_pred))
    np.testing.assert_allclose(sparse, per_head.sum(1), rtol=1e-4)
    mean = to_numpy(sparse_global_pointer_crossentropy(spans, y_pred, head_reduction="mean"))
    np.testing.assert_allclose(mean, per_head.mean(1), rtol=1e-4)


def np_gplinker_loss(spans, y_pred):
    """GPLinker's `globalpointer_crossentropy`, written from bert4keras 0.11.5 in NumPy:
    flatten (start, end) to start * n + end, bert4keras' sparse multi-label CE with
    mask_zero=True, then `K.mean(K.sum(loss, axis=1))` (sum over heads, mean over batch)."""
    b, h, n, _ = y_pred.shape
    labels = spans[..., 0] * n + spans[..., 1]
    scores = y_pred.reshape(b, h, -1).astype("float64")
    out = np.zeros((b, h))
    for i, j in np.ndindex(b, h):
        s, idx = scores[i, j], labels[i, j]
        s = np.concatenate([[np.inf], s[1:], [0.0]])  # mask_zero: class 0 -> +inf, extra 0
        pos = np.concatenate([s[idx], [0.0]])
        pos_loss = lse(-pos)
        s_neg = np.concatenate([[-np.inf], s[1:]])  # then class 0 -> -inf
        all_loss = lse(s_neg)
        aux = np.clip(1 - np.exp(lse(s_neg[idx]) - all_loss), 1e-7, 1)
        out[i, j] = pos_loss + all_loss + np.log(aux)
    return out.sum(axis=1).mean()


def test_sparse_global_pointer_crossentropy_is_gplinkers_loss():
    """The batch mean Keras takes of our [batch] output equals GPLinker's scalar loss."""
    _, y_pred, spans = gp_batch()
    ours = to_numpy(sparse_global_pointer_crossentropy(spans, y_pred)).mean()
    np.testing.assert_allclose(ours, np_gplinker_loss(spans, y_pred), rtol=1e-4)
    with pytest.raises(ValueError, match="head_reduction"):
        sparse_global_pointer_crossentropy(spans, y_pred, head_reduction="max")


def test_global_pointer_f1():
    y_true, y_pred, _ = gp_batch(4)
    predicted = (y_pred > 0).astype("float32")
    ref = 2 * (y_true * predicted).sum() / (y_true + predicted).sum()
    np.testing.assert_allclose(to_numpy(global_pointer_f1(y_true, y_pred)), ref, rtol=1e-6)
    assert float(to_numpy(global_pointer_f1(np.zeros((1, 1, 2, 2)), -np.ones((1, 1, 2, 2))))) == 0


def np_am_softmax(onehot, cos, margin, scale):
    logits = scale * (cos.astype("float64") - margin * onehot)
    with np.errstate(invalid="ignore"):
        target = np.where(onehot > 0, onehot * logits, 0).sum(-1)
    return lse(logits) * onehot.sum(-1) - target


@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_am_softmax_sparse_dense_and_excluded_entries(scale):
    rng = np.random.RandomState(5)
    cos = np.tanh(rng.normal(size=(4, 5))).astype("float32")
    cos[np.arange(4), np.arange(4) + 1] = -np.inf  # e.g. a sentence with itself
    labels = np.array([0, 3, 4, 2])
    onehot = np.eye(5, dtype="float32")[labels]
    ref = np_am_softmax(onehot, cos, 0.35, scale)
    for y_true in (labels, labels[:, None], onehot):
        ours = to_numpy(am_softmax_loss(y_true, cos, scale=scale))
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, ref, rtol=1e-5)
    soft = np.full((4, 5), 0.1, "float32")
    soft[np.arange(4), labels] = 0.6
    soft[np.arange(4), np.arange(4) + 1] = 0.0
    np.testing.assert_allclose(
        to_numpy(am_softmax_loss(soft, cos, 0.2, 10.0)),
        np_am_softmax(soft, cos, 0.2, 10.0),
        rtol=1e-5,
    )


def seq_batch(seed=6, from_logits=False, scale=1.0):
    rng = np.random.RandomState(seed)
    logits = (scale * rng.normal(size=(3, 5, 7))).astype("float32")
    y_true = rng.randint(0, 7, (3, 5)).astype("int32")
    mask = np.arange(5)[None] < np.array([[5], [3], [1]])
    if from_logits:
        return y_true, logits, mask
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return y_true, (probs / probs.sum(-1, keepdims=True)).astype("float32"), mask


@pytest.mark.parametrize("from_logits,scale", [(False, 1.0), (True, 1.0), (True, 1e4)])
def test_sequence_masked_crossentropy(from_logits, scale):
    y_true, y_pred, mask = seq_batch(from_logits=from_logits, scale=scale)
    x = y_pred.astype("float64")
    logp = x - lse(x)[..., None] if from_logits else np.log(np.clip(x, 1e-7, 1 - 1e-7))
    token = -np.take_along_axis(logp, y_true[..., None], -1)[..., 0]
    ours = to_numpy(sequence_masked_crossentropy(y_true, y_pred, from_logits=from_logits))
    np.testing.assert_allclose(ours, token, rtol=1e-5, atol=1e-5)  # per token for Keras
    ours = to_numpy(sequence_masked_crossentropy(y_true, y_pred, mask, from_logits))
    np.testing.assert_allclose(ours, token[mask].mean(), rtol=1e-5)


def test_sequence_masked_accuracy():
    y_true, y_pred, mask = seq_batch(7)
    y_true[0, :3] = y_pred[0, :3].argmax(-1)
    hits = y_pred.argmax(-1) == y_true
    np.testing.assert_array_equal(
        to_numpy(sequence_masked_accuracy(y_true[..., None], y_pred)), hits
    )
    np.testing.assert_allclose(
        to_numpy(sequence_masked_accuracy(y_true, y_pred, mask)), hits[mask].mean(), rtol=1e-6
    )


def test_in_compile_the_keras_mask_drops_padding():
    """evaluate() with a Keras-masked output gives the explicit-mask values."""
    keras.utils.set_random_seed(0)
    ids = np.array([[3, 4, 5, 6], [7, 8, 0, 0], [9, 0, 0, 0]], "int32")
    y_true = np.random.RandomState(0).randint(0, 5, ids.shape)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    model.compile(loss=sequence_masked_crossentropy, metrics=[sequence_masked_accuracy])
    loss, accuracy = model.evaluate(ids, y_true, batch_size=3, verbose=0)
    probs = model(ids)
    np.testing.assert_allclose(
        loss, to_numpy(sequence_masked_crossentropy(y_true, probs, ids > 0)), rtol=1e-5
    )
    np.testing.assert_allclose(
        accuracy, to_numpy(sequence_masked_accuracy(y_true, probs, ids > 0)), rtol=1e-5
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_stay_finite(dtype):
    """Half-precision predictions (huge and masked ones too) are computed in float32."""
    y_true, y_pred, _ = gp_batch(8)
    y_pred[..., 0, 0] = 6e4 if dtype == "float16" else 1e30
    y_pred = np.maximum(y_pred, -6e4 if dtype == "float16" else -1e30)
    half = keras.ops.cast(y_pred, dtype)
    as_float = to_numpy(half)
    for fn in (global_pointer_crossentropy, global_pointer_f1):
        ours = to_numpy(fn(y_true, half))
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        np.testing.assert_allclose(ours, to_numpy(fn(y_true, as_float)), rtol=1e-6)
    ys, probs, mask = seq_batch(9)
    ours = to_numpy(sequence_masked_crossentropy(ys, keras.ops.cast(probs, dtype), mask))
    assert np.isfinite(ours)
    np.testing.assert_allclose(
        ours, to_numpy(sequence_masked_crossentropy(ys, probs, mask)), rtol=2e-2
    )
    cos = keras.ops.cast(np.tanh(y_pred[:, 0, 0]), dtype)
    assert np.isfinite(to_numpy(am_softmax_loss(np.array([0, 1]), cos))).all()
