"""NEZHA equals transformers 4.57.6 (which still had it) via committed fixtures.

tests/fixtures/nezha was made by scripts/make_nezha_fixtures.py in a venv with
transformers==4.57.6: a random NezhaForPreTraining (weights std 0.2) and its
float32 outputs on a padded batch and on one unpadded row.
"""

import os

import numpy as np

from kerasformers import build_transformer_model
from tests.utils import assert_close, run

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nezha")


def expected():
    return dict(np.load(os.path.join(FIXTURE, "expected.npz")))


def test_nezha_sequence_output_and_heads():
    e = expected()
    mask = e["token_ids"] != 0
    inputs = [e["token_ids"], e["segment_ids"]]
    encoder = build_transformer_model(checkpoint_path=FIXTURE)  # model key from config.json
    assert_close(run(encoder, inputs), e["sequence_output"], mask, what="nezha sequence")
    full = build_transformer_model(checkpoint_path=FIXTURE, with_mlm="linear", with_nsp=True)
    nsp, mlm = run(full, inputs)
    assert_close(mlm, e["mlm_logits"], mask, what="nezha MLM logits")
    nsp_ref = np.exp(e["nsp_logits"]) / np.exp(e["nsp_logits"]).sum(-1, keepdims=True)
    assert_close(nsp, nsp_ref, what="nezha NSP")
    pooled = build_transformer_model(checkpoint_path=FIXTURE, with_pool=True)
    assert_close(run(pooled, inputs), e["pooled_output"], what="nezha pooler")


def test_nezha_unpadded_row():
    e = expected()
    model = build_transformer_model(checkpoint_path=FIXTURE, with_mlm="linear")
    out = run(model, [e["token_ids_unpadded"], e["segment_ids_unpadded"]])
    assert_close(out, e["mlm_logits_unpadded"], what="nezha unpadded MLM")


def test_nezha_relative_positions_are_clipped():
    """Beyond +-64 the relative embedding must repeat the clipped value."""
    import keras

    from kerasformers.layers import RelativePositionEmbedding

    layer = RelativePositionEmbedding(2 * 64 + 1, 8, sinusoidal=True)
    x = np.zeros((1, 150, 4), "float32")
    table = keras.ops.convert_to_numpy(layer([x, x]))
    assert table.shape == (150, 150, 8)
    np.testing.assert_array_equal(table[0, 64], table[0, 149])  # +64 and +149 clip to +64
    np.testing.assert_array_equal(table[149, 85], table[149, 0])  # -64 and -149 clip to -64
    assert not np.allclose(table[0, 63], table[0, 64])
