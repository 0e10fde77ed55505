"""bert4keras' `Loss` layer: trains in `fit` with `compile(optimizer)` only, its value is
the hand-computed loss, masks reach `compute_loss`, `output_axis` selects, config round-trips."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from kerasformers.layers import Loss
from kerasformers.layers import loss as loss_module

VOCAB, LENGTH = 12, 7
SEEN_MASKS = []


class CrossEntropy(Loss):
    """task_seq2seq_autotitle.py's loss, the Keras mask of y_pred applied as well."""

    def compute_loss(self, inputs, mask=None):
        y_true, y_mask, y_pred = inputs
        # which inputs came with a Keras mask (recorded as Python bools: traced calls too)
        SEEN_MASKS.append(None if mask is None else [m is not None for m in mask])
        y_mask = ops.cast(y_mask, "float32")
        if mask is not None and mask[2] is not None:
            y_mask = y_mask * ops.cast(mask[2], "float32")
        y_true, y_mask, y_pred = y_true[:, 1:], y_mask[:, 1:], y_pred[:, :-1]
        loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        return ops.sum(loss * y_mask) / ops.sum(y_mask)


def seq2seq_model(output_axis=2):
    token_ids = keras.Input((None,), dtype="int32", name="Input-Token")
    segment_ids = keras.Input((None,), dtype="int32", name="Input-Segment")
    x = keras.layers.Embedding(VOCAB, 16, mask_zero=True, name="Embedding-Token")(token_ids)
    x = keras.layers.Dense(16, activation="tanh")(x)  # layers carry the mask along
    probs = keras.layers.Dense(VOCAB, activation="softmax", name="MLM-Proba")(x)
    layer = CrossEntropy(output_axis)
    output = layer([token_ids, segment_ids, probs])
    return keras.Model([token_ids, segment_ids], output), layer


def data(seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, VOCAB, (16, LENGTH)).astype("int32")
    tokens[::3, -2:] = 0  # padding: only the Keras mask removes these from the loss
    segments = np.zeros_like(tokens)
    segments[:, 3:] = 1
    return tokens, segments


def hand_loss(probs, tokens, segments):
    weight = (segments * (tokens != 0)).astype("float64")[:, 1:]
    p = np.take_along_axis(probs[:, :-1].astype("float64"), tokens[:, 1:, None], -1)[..., 0]
    return float(np.sum(-np.log(p) * weight) / np.sum(weight))


def test_loss_layer_trains_in_fit_and_equals_the_hand_computed_loss():
    keras.utils.set_random_seed(0)
    model, _ = seq2seq_model()
    tokens, segments = data()
    model.compile(keras.optimizers.Adam(1e-2))
    SEEN_MASKS.clear()
    probs = model.predict([tokens, segments], verbose=0)
    assert probs.shape == (16, LENGTH, VOCAB)
    expected = hand_loss(probs, tokens, segments)
    got = model.evaluate([tokens, segments], verbose=0, batch_size=16)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the Keras mask of y_pred reached compute_loss (the ids carry none)
    assert SEEN_MASKS and all(seen == [False, False, True] for seen in SEEN_MASKS), SEEN_MASKS

    history = model.fit([tokens, segments], epochs=8, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # the logged value is the loss of the weights before each step: epoch 1 = start
    np.testing.assert_allclose(losses[0], expected, rtol=1e-5)
    after = hand_loss(model.predict([tokens, segments], verbose=0), tokens, segments)
    np.testing.assert_allclose(
        model.evaluate([tokens, segments], verbose=0, batch_size=16), after, rtol=1e-5
    )


def test_loss_layer_accepts_x_none_batches():
    """bert4keras generators yield `[token_ids, segment_ids], None`."""
    keras.utils.set_random_seed(0)
    model, _ = seq2seq_model()
    model.compile(keras.optimizers.Adam(1e-2))
    tokens, segments = data()

    def batches():
        while True:
            yield (tokens, segments), None

    history = model.fit(batches(), steps_per_epoch=2, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "output_axis, expected",
    [
        (None, ["int32", "int32", "float32"]),
        (2, "float32"),
        (0, "int32"),
        ([2, 0], ["float32", "int32"]),
    ],
)
def test_output_axis_selects_inputs(output_axis, expected):
    model, _ = seq2seq_model(output_axis)
    tokens, segments = data()
    outputs = model.predict([tokens, segments], verbose=0)
    inputs = [tokens, segments, None]
    if isinstance(expected, str):
        outputs, expected, axes = [outputs], [expected], [output_axis]
    else:
        axes = [0, 1, 2] if output_axis is None else output_axis
    assert [np.asarray(o).dtype.name for o in outputs] == expected
    for axis, out in zip(axes, outputs):
        if inputs[axis] is not None:
            np.testing.assert_array_equal(out, inputs[axis])
        else:
            assert out.shape == (16, LENGTH, VOCAB)


def test_output_mask_follows_output_axis():
    class Zero(Loss):
        def compute_loss(self, inputs, mask=None):
            return ops.sum(inputs[0]) * 0.0

    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(5, 4, mask_zero=True)(ids)
    y = keras.layers.Dense(4)(ids[..., None] * 1.0)
    layer = Zero(output_axis=[1, 0])
    assert layer.compute_mask([x, y], None) is None
    mask_x, mask_y = layer.compute_mask([x, y], ["mx", None])
    assert (mask_x, mask_y) == (None, "mx")
    assert Zero(output_axis=0).compute_mask([x, y], ["mx", None]) == "mx"
    assert Zero().compute_output_shape([(2, 3), (4,)]) == [(2, 3), (4,)]


def test_compute_loss_must_be_defined():
    with pytest.raises(NotImplementedError, match="compute_loss"):
        Loss()([np.ones((2, 3), "float32")])


@pytest.mark.parametrize("output_axis", [None, 1, [1, 0]])
def test_config_round_trip(output_axis):
    layer = CrossEntropy(output_axis, name="loss")
    config = layer.get_config()
    assert config["output_axis"] == output_axis
    clone = CrossEntropy.from_config(config)
    assert clone.output_axis == output_axis and clone.name == "loss"
    assert clone.get_config() == config


def test_model_with_a_loss_layer_saves_and_loads(tmp_path):
    model, _ = seq2seq_model()
    tokens, segments = data()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"CrossEntropy": CrossEntropy})
    np.testing.assert_allclose(
        loaded.predict([tokens, segments], verbose=0),
        model.predict([tokens, segments], verbose=0),
        rtol=1e-6,
    )


def test_doctests():
    assert doctest.testmod(loss_module).failed == 0
