"""The MLM head at the labelled positions only: same logits, same loss, same training step.

`masked_positions_model` shares every weight with the full MLM model; its logits at the
given positions are the full model's logits there, and one SGD step on gathered
batches (`label_positions`) moves the weights as one step on the full batch does
(the loss is the same sum over labelled tokens). `PretrainingData(masked_positions=...)`
yields those batches, with one width per global batch on every process.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.pretraining import positions as positions_lib
from kerasformers.pretraining.losses import MaskedLMLoss
from kerasformers.pretraining.objectives import MaskedLM
from kerasformers.pretraining.pipeline import PretrainingData
from kerasformers.pretraining.positions import label_positions, masked_positions_model
from kerasformers.pretraining.trainer import compile_pretraining, fit_pretraining
from tests.pretraining.test_objectives import MASK, SPECIAL, VOCAB
from tests.pretraining.test_pipeline import shards, take  # noqa: F401 (module fixture)
from tests.pretraining.test_trainer import tiny as trainer_tiny
from tests.utils import BACKEND, to_numpy

SEQ = 128


def test_label_positions_keeps_every_label_in_order():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((16, 40)) < 0.15, rng.integers(5, 99, (16, 40)), -100)
    positions, gathered = label_positions(labels)
    width = positions.shape[1]
    assert width % 8 == 0 and width - 8 < (labels != -100).sum(1).max() <= width
    scattered = np.full_like(labels, -100)
    for row in range(len(labels)):
        keep = gathered[row] != -100
        assert (np.diff(positions[row][keep]) > 0).all()  # in order
        scattered[row, positions[row][keep]] = gathered[row][keep]
    np.testing.assert_array_equal(scattered, labels)
    assert (positions[gathered == -100] == 0).all()
    assert positions.dtype == gathered.dtype == np.int32
    # a fixed width pads; a row with more labels is refused, never cut
    assert label_positions(labels, count=width + 3)[0].shape == (16, width + 3)
    assert label_positions(np.full((2, 5), 7), multiple=8)[0].shape == (2, 5)  # <= length
    with pytest.raises(ValueError, match="labelled tokens, more than masked_positions=2"):
        label_positions(np.array([[1, 2, 3, -100]]), count=2)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        label_positions(np.array([1, 2]))


def tiny(dropout=0.0):
    return trainer_tiny(dropout_rate=dropout, return_keras_model=False)


def batch(seed=0, rows=4, length=24):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (rows, length)).astype("int32")
    ids[:, 0], ids[1, -5:] = 2, 0  # [CLS]; padding in one row
    labels = np.where(rng.random(ids.shape) < 0.2, ids, -100).astype("int32")
    labels[1, -5:] = -100
    return ids, np.zeros_like(ids), labels


def test_logits_at_positions_equal_the_full_model():
    bert = tiny()
    gathered = masked_positions_model(bert.model)
    ids, segments, labels = batch()
    positions, _ = label_positions(labels)
    full = to_numpy(bert.model([ids, segments]))
    some = to_numpy(gathered([ids, segments, positions]))
    expected = np.take_along_axis(full, positions[..., None], axis=1)
    np.testing.assert_allclose(some, expected, atol=1e-5)
    # the same layers: no new weights, and the Transformer object works too
    assert {v.path for v in gathered.weights} == {v.path for v in bert.model.weights}
    assert masked_positions_model(bert).input_shape[-1] == (None, None)
    with pytest.raises(ValueError, match="with_mlm"):
        masked_positions_model(
            build_transformer_model(
                None,
                model="bert",
                vocab_size=VOCAB,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            )
        )


def test_one_training_step_equals_the_full_heads_step():
    ids, segments, labels = batch(seed=1)
    positions, gathered_labels = label_positions(labels)
    full, part = tiny().model, tiny().model
    part.set_weights(full.get_weights())
    part = masked_positions_model(part)
    loss = MaskedLMLoss()
    np.testing.assert_allclose(
        float(loss(gathered_labels, part([ids, segments, positions]))),
        float(loss(labels, full([ids, segments]))),
        rtol=1e-6,
    )
    full.compile(keras.optimizers.SGD(0.5), loss=MaskedLMLoss())
    part.compile(keras.optimizers.SGD(0.5), loss=MaskedLMLoss())
    for _ in range(2):
        a = full.train_on_batch([ids, segments], labels)
        b = part.train_on_batch([ids, segments, positions], gathered_labels)
        assert abs(float(a) - float(b)) <= 1e-5
    by_path = {v.path: to_numpy(v.value) for v in full.weights}
    worst = max(float(np.abs(by_path[v.path] - to_numpy(v.value)).max()) for v in part.weights)
    assert worst <= 1e-5, worst


def mlm_data(shards, masked_positions, **kwargs):  # noqa: F811
    objective = MaskedLM(VOCAB, MASK, SPECIAL, SEQ)
    return PretrainingData(
        shards, objective, batch_size=8, seed=5, masked_positions=masked_positions, **kwargs
    )


def test_pipeline_yields_positions_for_every_process(shards):  # noqa: F811
    plain = take(mlm_data(shards, False).batches(), 3)
    gathered = mlm_data(shards, True).batches()
    halves = [mlm_data(shards, True, process_index=p, process_count=2).batches() for p in (0, 1)]
    it, parts = iter(gathered), [iter(h) for h in halves]
    for token_ids, segment_ids, labels in plain:
        (t, s, p), y = next(it)
        np.testing.assert_array_equal(t, token_ids)
        np.testing.assert_array_equal(s, segment_ids)
        # on TensorFlow one width, the sequence length (Keras' TF adapter fixes shapes early)
        expected = label_positions(labels, count=SEQ if BACKEND == "tensorflow" else None)
        np.testing.assert_array_equal(p, expected[0])
        np.testing.assert_array_equal(y, expected[1])
        # each process gets its rows, at the width of the global batch
        rows = [next(part) for part in parts]
        np.testing.assert_array_equal(np.concatenate([r[0][2] for r in rows]), p)
        np.testing.assert_array_equal(np.concatenate([r[1] for r in rows]), y)
    fixed = next(iter(mlm_data(shards, 64).batches()))
    assert fixed[0][2].shape == fixed[1].shape == (8, 64)
    with pytest.raises(ValueError, match="more than masked_positions=1"):
        next(iter(mlm_data(shards, 1).batches()))
    for bad in (0, SEQ + 1, "yes", 2.5):
        with pytest.raises(ValueError, match="masked_positions must be"):
            mlm_data(shards, bad)


def test_fit_pretraining_with_positions_and_mismatches(shards, tmp_path):  # noqa: F811
    bert = tiny(dropout=0.1)
    model = masked_positions_model(bert.model)
    compile_pretraining(model, 3e-3, warmup_steps=1, total_steps=8)
    history = fit_pretraining(
        model, mlm_data(shards, True), total_steps=8, directory=tmp_path, save_every=4, verbose=0
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # the trained weights are the full model's: it predicts with them
    assert positions_lib.takes_positions(model) and not positions_lib.takes_positions(bert.model)
    with pytest.raises(ValueError, match="no positions input"):
        fit_pretraining(
            bert.model,
            mlm_data(shards, True),
            total_steps=8,
            directory=tmp_path / "a",
            save_every=4,
        )
    with pytest.raises(ValueError, match="does not yield them"):
        fit_pretraining(
            model, mlm_data(shards, False), total_steps=8, directory=tmp_path / "b", save_every=4
        )
