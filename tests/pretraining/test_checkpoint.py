"""Training checkpoints: what is saved, what is refused, and that a refusal changes nothing."""

import json

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.pretraining.checkpoint import (
    TrainingCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)


def _model(hidden=16, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_transformer_model(
        None,
        model="bert",
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        with_mlm="linear",
        dropout_rate=0.1,
    )
    model.compile(keras.optimizers.AdamW(1e-2), "sparse_categorical_crossentropy")
    return model


def _batches(n=4):
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 40, (n, 8)).astype("int32")
    return [ids, np.zeros_like(ids)], ids


def _state(model):
    return [
        keras.ops.convert_to_numpy(v.value).copy()
        for v in [*model.variables, *model.optimizer.variables]
    ]


def _assert_state(model, expected):
    for a, b in zip(expected, _state(model)):
        np.testing.assert_array_equal(a, b)


def test_save_restore_round_trip_and_keep(tmp_path):
    model = _model()
    x, y = _batches()
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=3,
        verbose=0,
        callbacks=[TrainingCheckpoint(tmp_path, save_every=2, keep=2)],
    )
    # 6 steps: saved at 2, 4, 6; only the newest two kept, no temporary directories left
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006"]
    saved = _state(model)
    fresh = _model(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    assert restore_checkpoint(fresh, tmp_path) == 6
    _assert_state(fresh, saved)
    # seed-generator (dropout) states and the optimizer's step counter are part of it
    paths = [v.path for v in fresh.variables]
    assert any("seed_generator" in p for p in paths)
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 6


def test_restore_without_checkpoint_returns_zero(tmp_path):
    assert restore_checkpoint(_model(), tmp_path / "nothing") == 0


def test_checkpoint_of_another_model_is_refused_and_changes_nothing(tmp_path):
    model = _model(hidden=16)
    save_checkpoint(model, tmp_path, 3)
    other = _model(hidden=32)
    before = _state(other)
    with pytest.raises(ValueError, match="another model.*shape"):
        restore_checkpoint(other, tmp_path)
    _assert_state(other, before)


def test_other_optimizer_and_uncompiled_model_are_refused(tmp_path):
    model = _model()
    save_checkpoint(model, tmp_path, 1)
    other = _model()
    other.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="optimizer AdamW"):
        restore_checkpoint(other, tmp_path)
    bare = build_transformer_model(
        None,
        model="bert",
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        with_mlm="linear",
        dropout_rate=0.1,
    )
    with pytest.raises(ValueError, match="not compiled"):
        restore_checkpoint(bare, tmp_path)


def test_damaged_checkpoint_is_refused_and_changes_nothing(tmp_path):
    model = _model()
    path = save_checkpoint(model, tmp_path, 2)
    with np.load(path / "variables.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/0"] = arrays["model/0"][:3]
    np.savez(path / "variables.npz", **arrays)
    target = _model(seed=3)
    target.optimizer.build(target.trainable_variables)
    before = _state(target)
    with pytest.raises(ValueError, match="damaged"):
        restore_checkpoint(target, tmp_path)
    _assert_state(target, before)


def test_incomplete_checkpoint_directory_is_ignored(tmp_path):
    model = _model()
    save_checkpoint(model, tmp_path, 2)
    (tmp_path / "step-00000004").mkdir()  # a kill before meta.json: not a checkpoint
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    meta = json.loads((tmp_path / "step-00000002" / "meta.json").read_text())
    assert meta["step"] == 2 and meta["data_state"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="save_every"):
        TrainingCheckpoint("x", save_every=0)
    with pytest.raises(TypeError):
        TrainingCheckpoint("x", save_every=1, every=3)
