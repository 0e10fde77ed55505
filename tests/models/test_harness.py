"""The shared model harness, run for every architecture (and the lm/unilm applications).

config round trip, variable sequence length, `.keras` save/load with equal
outputs, a `mixed_bfloat16` run with finite outputs under padding, and
padding invariance at real positions.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from tests.utils import assert_close, batch, run

SMALL = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position=32)

ARCHS = {
    "bert": dict(with_pool=True, with_mlm=True),
    "roberta": dict(with_mlm=True),
    "albert": dict(embedding_size=16, with_mlm=True),
    "albert_unshared": dict(embedding_size=16),
    "nezha": dict(with_mlm=True),
    "electra": dict(with_discriminator=True),
    "roformer": dict(with_mlm=True),
    "roformer_v2": dict(with_mlm=True),
    "bert-lm": dict(),
    "bert-unilm": dict(),
    "roformer-unilm": dict(),
}


def build(arch, **kwargs):
    model, _, application = arch.partition("-")
    return build_transformer_model(None, model=model, application=application or "encoder",
                                   **SMALL, **ARCHS[arch], **kwargs)


def inputs(lengths=(9, 6, 3)):
    return list(batch(vocab_size=SMALL["vocab_size"], lengths=lengths))


def last(out):
    return out[-1] if isinstance(out, list) else out


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_config_round_trip(arch):
    model = build(arch)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = inputs()
    mask = x[0] != 0
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    assert_close(last(run(clone, x)), last(run(model, x)), mask, tol=1e-6, what=arch)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_variable_sequence_length(arch):
    model = build(arch)
    for lengths in [(3,), (5, 2), (17, 17, 4)]:
        out = last(run(model, inputs(lengths)))
        assert out.shape[:2] == (len(lengths), max(lengths))
        assert np.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_keras_save_load(arch, tmp_path):
    model = build(arch)
    path = str(tmp_path / f"{arch}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = inputs()
    assert_close(last(run(loaded, x)), last(run(model, x)), x[0] != 0, tol=1e-6, what=arch)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_mixed_bfloat16_finite_under_padding(arch):
    model = build(arch, dtype="mixed_bfloat16")
    assert any(v.dtype == "float32" for v in model.weights)
    out = last(run(model, inputs()))
    assert np.isfinite(out).all(), f"{arch}: non-finite outputs under mixed_bfloat16"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_padding_does_not_change_real_positions(arch):
    model = build(arch)
    ids, seg = inputs((9, 6, 3))
    padded = last(run(model, [ids, seg]))
    for row, n in enumerate((9, 6, 3)):
        alone = last(run(model, [ids[row:row + 1, :n], seg[row:row + 1, :n]]))
        assert_close(padded[row:row + 1, :n], alone, tol=1e-5, what=f"{arch} row {row}")
