"""MaskedLMLoss and MaskedAccuracy against NumPy (float64) on the current backend."""

import doctest

import keras
import numpy as np
import pytest

from kerasformers.pretraining import losses
from kerasformers.pretraining.losses import MaskedAccuracy, MaskedLMLoss
from tests.utils import to_numpy

B, L, V = 3, 7, 11


def np_loss(labels, logits, weights=None):
    """Mean cross-entropy over labels != -100 (optionally weighted), 0 when none."""
    logits = np.asarray(logits, "float64")
    labels = np.asarray(labels).astype("int64").reshape(logits.shape[:-1])
    valid = labels != -100
    w = valid.astype("float64")
    if weights is not None:
        w = w * np.broadcast_to(
            np.reshape(weights, weights.shape + (1,) * (labels.ndim - np.ndim(weights))),
            labels.shape,
        )
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(logits, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    total = w.sum()
    return 0.0 if total == 0 else float(((lse - picked) * w).sum() / total)


def np_accuracy(label_batches, logit_batches):
    right = count = 0
    for labels, logits in zip(label_batches, logit_batches):
        valid = labels != -100
        right += int((np.argmax(logits, -1) == labels)[valid].sum())
        count += int(valid.sum())
    return right / count if count else 0.0


def sample(seed=0, ignore=0.6, scale=3.0):
    rng = np.random.RandomState(seed)
    logits = (scale * rng.normal(size=(B, L, V))).astype("float32")
    labels = rng.randint(0, V, (B, L))
    labels[rng.rand(B, L) < ignore] = -100
    return labels, logits


def test_doctests():
    result = doctest.testmod(losses)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64"])
def test_loss_matches_numpy_for_any_int_labels(dtype):
    labels, logits = sample()
    ours = float(to_numpy(MaskedLMLoss()(labels.astype(dtype), logits)))
    assert ours == pytest.approx(np_loss(labels, logits), rel=1e-5)
    # labels shaped [B, L, 1] (as Keras sometimes passes them) give the same
    ours = float(to_numpy(MaskedLMLoss()(labels[..., None].astype(dtype), logits)))
    assert ours == pytest.approx(np_loss(labels, logits), rel=1e-5)


def test_loss_is_a_mean_over_labelled_tokens_not_positions():
    labels, logits = sample(seed=1, ignore=0.9)
    labels[0, 0] = 3  # at least one labelled token
    single = np.full_like(labels, -100)
    single[0, 0] = 3
    ours = float(to_numpy(MaskedLMLoss()(single, logits)))
    row = logits[0, 0].astype("float64")
    expected = np.log(np.exp(row - row.max()).sum()) + row.max() - row[3]
    assert ours == pytest.approx(expected, rel=1e-5)


def test_all_ignored_gives_zero_not_nan():
    _, logits = sample()
    loss = float(to_numpy(MaskedLMLoss()(np.full((B, L), -100), logits)))
    assert loss == 0.0
    metric = MaskedAccuracy()
    metric.update_state(np.full((B, L), -100), logits)
    assert float(to_numpy(metric.result())) == 0.0


def test_huge_logits_stay_finite():
    labels, logits = sample(scale=1e4)
    ours = float(to_numpy(MaskedLMLoss()(labels, logits)))
    assert np.isfinite(ours) and ours == pytest.approx(np_loss(labels, logits), rel=1e-5)


def test_sample_weight_per_example_and_per_token():
    labels, logits = sample(seed=2)
    per_example = np.array([1.0, 0.0, 2.5], "float32")
    ours = float(to_numpy(MaskedLMLoss()(labels, logits, sample_weight=per_example)))
    assert ours == pytest.approx(np_loss(labels, logits, per_example), rel=1e-5)
    per_token = np.random.RandomState(3).rand(B, L).astype("float32")
    ours = float(to_numpy(MaskedLMLoss()(labels, logits, sample_weight=per_token)))
    assert ours == pytest.approx(np_loss(labels, logits, per_token), rel=1e-5)


def test_bfloat16_logits_computed_in_float32():
    labels, logits = sample(seed=4, scale=30.0)
    low = keras.ops.cast(logits, "bfloat16")
    rounded = to_numpy(low)  # the bf16 values, exactly, as float32
    ours = MaskedLMLoss()(labels, low)
    assert keras.backend.standardize_dtype(ours.dtype) == "float32"
    assert float(to_numpy(ours)) == pytest.approx(np_loss(labels, rounded), rel=1e-5)
    metric = MaskedAccuracy()
    metric.update_state(labels, low)
    assert float(to_numpy(metric.result())) == pytest.approx(np_accuracy([labels], [rounded]))


def test_accuracy_accumulates_tokens_and_resets():
    batches = [sample(seed=s) for s in (5, 6, 7)]
    batches[1][0][:] = -100  # a batch with nothing labelled counts for nothing
    metric = MaskedAccuracy()
    for labels, logits in batches:
        # every other labelled token predicted right, so the ratio is not trivially ~1/V
        rows, cols = np.nonzero(labels >= 0)
        rows, cols = rows[::2], cols[::2]
        logits[rows, cols] = np.eye(V)[labels[rows, cols]] * 50
        metric.update_state(labels.astype("int64"), logits)
    expected = np_accuracy(*zip(*batches))
    assert 0.2 < expected < 0.9
    assert float(to_numpy(metric.result())) == pytest.approx(expected)
    metric.reset_state()
    assert float(to_numpy(metric.result())) == 0.0


def test_serialization_round_trip():
    loss = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(MaskedLMLoss(name="mlm"))
    )
    assert isinstance(loss, MaskedLMLoss) and loss.name == "mlm"
    metric = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(MaskedAccuracy(name="acc"))
    )
    assert isinstance(metric, MaskedAccuracy) and metric.name == "acc"
    assert keras.saving.get_registered_object("kerasformers>MaskedLMLoss") is MaskedLMLoss
    assert keras.saving.get_registered_object("kerasformers>MaskedAccuracy") is MaskedAccuracy


def test_compiled_evaluate_matches_numpy():
    """Through model.compile/evaluate (Keras' CompileLoss path), one batch: the same numbers."""
    labels, _ = sample(seed=8)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((L,), dtype="int32")
    logits = keras.layers.Dense(V)(keras.layers.Embedding(V, 4)(inputs))
    model = keras.Model(inputs, logits)
    model.compile(loss=MaskedLMLoss(), metrics=[MaskedAccuracy()])
    ids = np.random.RandomState(1).randint(0, V, (B, L)).astype("int32")
    out = model.evaluate(ids, labels.astype("int32"), batch_size=B, verbose=0, return_dict=True)
    predicted = to_numpy(model(ids))
    assert out["loss"] == pytest.approx(np_loss(labels, predicted), rel=1e-5)
    assert out["masked_accuracy"] == pytest.approx(np_accuracy([labels], [predicted]))


def test_all_ignored_batch_has_zero_gradients():
    """A batch without labelled tokens: loss 0 and gradients exactly 0 (not NaN)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((L,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(V)(keras.layers.Embedding(V, 4)(inputs)))
    model.compile(keras.optimizers.SGD(0.1), loss=MaskedLMLoss())
    before = [to_numpy(w) for w in model.trainable_weights]
    ids = np.random.RandomState(1).randint(0, V, (B, L)).astype("int32")
    assert model.train_on_batch(ids, np.full((B, L), -100, "int32")) == 0.0
    for a, w in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, to_numpy(w))


def test_mixed_bfloat16_model_trains():
    """Under mixed_bfloat16 the logits are bfloat16; the loss is float32 and decreases."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((L,), dtype="int32")
    logits = keras.layers.Dense(V)(keras.layers.Embedding(V, 8)(inputs))
    model = keras.Model(inputs, logits)
    model.compile(keras.optimizers.Adam(0.05), loss=MaskedLMLoss())
    ids = np.random.RandomState(1).randint(0, V, (16, L)).astype("int32")
    labels = np.where(np.random.RandomState(2).rand(16, L) < 0.5, ids, -100).astype("int32")
    first = model.train_on_batch(ids, labels)
    for _ in range(20):
        last = model.train_on_batch(ids, labels)
    assert np.isfinite(last) and last < first / 2
