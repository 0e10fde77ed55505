"""compile_pretraining / fit_pretraining: the optimizer recipe, the training toolkit
(mixed precision, remat, gradient accumulation) on a pretraining run, and refusals."""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.pretraining.objectives import MaskedLM
from kerasformers.pretraining.pipeline import PretrainingData
from kerasformers.pretraining.trainer import compile_pretraining, fit_pretraining
from tests.pretraining.test_objectives import MASK, SPECIAL, VOCAB
from tests.pretraining.test_pipeline import shards  # noqa: F401 (module fixture)

SEQ = 128


def tiny(vocab=VOCAB, **kwargs):
    keras.utils.set_random_seed(0)
    return build_transformer_model(
        None,
        model="bert",
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        with_mlm="linear",
        **kwargs,
    )


def data(shards, batch_size=4):  # noqa: F811
    return PretrainingData(shards, MaskedLM(VOCAB, MASK, SPECIAL, SEQ), batch_size, seed=3)


def test_recipe_schedule_and_weight_decay_exclusions():
    model = tiny()
    optimizer = compile_pretraining(
        model, 1e-3, warmup_steps=10, total_steps=100, gradient_accumulation_steps=2
    )
    lr = optimizer._learning_rate  # the schedule itself
    # schedules count micro-batches: warm-up over 20, decay to 0 at 200
    assert [round(float(lr(s)), 7) for s in (0, 10, 20, 110, 200)] == [0.0, 5e-4, 1e-3, 5e-4, 0.0]
    excluded = {
        v.path for v in model.trainable_variables if optimizer._use_weight_decay(v) is False
    }
    assert "Embedding-Norm/gamma" in excluded and "MLM-Dense/bias" in excluded
    assert "Embedding-Token/embeddings" not in excluded
    assert model.loss.name == "masked_lm_loss"


def test_mixed_precision_remat_and_accumulation_train(shards, tmp_path):  # noqa: F811
    model = tiny(dtype="mixed_bfloat16", remat=True)
    compile_pretraining(model, 3e-3, warmup_steps=1, total_steps=8, gradient_accumulation_steps=2)
    history = fit_pretraining(
        model,
        data(shards),
        total_steps=8,
        directory=tmp_path,
        save_every=4,
        steps_per_epoch=4,
        verbose=0,
    )
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert model.get_layer("Embedding-Token").embeddings.dtype == "float32"


def test_refusals(shards, tmp_path):  # noqa: F811
    model = tiny()
    compile_pretraining(model, 1e-3, warmup_steps=1, total_steps=8)
    with pytest.raises(ValueError, match="multiples of steps_per_epoch"):
        fit_pretraining(model, data(shards), total_steps=8, directory=tmp_path, save_every=3)
    small = tiny(vocab=VOCAB // 2)
    compile_pretraining(small, 1e-3, warmup_steps=1, total_steps=8)
    with pytest.raises(ValueError, match="vocab"):
        fit_pretraining(small, data(shards), total_steps=8, directory=tmp_path, save_every=4)
    with pytest.raises(ValueError, match="warmup_steps"):
        compile_pretraining(model, 1e-3, warmup_steps=8, total_steps=8)
    with pytest.raises(TypeError):
        compile_pretraining(model, 1e-3, warmup_steps=1, total_steps=8, warmup=3)
    # a checkpoint written with other data settings is refused before anything changes
    fit_pretraining(
        model, data(shards), total_steps=4, directory=tmp_path / "run", save_every=4, verbose=0
    )
    other = tiny()
    compile_pretraining(other, 1e-3, warmup_steps=1, total_steps=8)
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in other.variables]
    with pytest.raises(ValueError, match="batch_size"):
        fit_pretraining(
            other,
            data(shards, batch_size=8),
            total_steps=8,
            directory=tmp_path / "run",
            save_every=4,
            verbose=0,
        )
    for a, v in zip(before, other.variables):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v.value))
