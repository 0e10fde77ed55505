"""GAU-α (`model='gau_alpha'`) against bert4keras 0.11.5's GatedAttentionUnit
composition (tests/fixtures/gau_alpha, made by make_fixture.py there): encoder,
lm and unilm outputs from the released checkpoint's weight names; both namings
saved and loaded back; cached decoding equals the full forward."""

import json
import os

import numpy as np
import pytest
from keras import ops

from kerasformers import build_transformer_model

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "gau_alpha")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(FIXTURE, "gau_alpha.npz"), allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    weights = {k[len("weights/") :]: v for k, v in data.items() if k.startswith("weights/")}
    return json.loads(str(data["config"])), weights, data


def _build(config, checkpoint, application, with_mlm):
    return build_transformer_model(
        None,
        checkpoint,
        model="gau_alpha",
        application=application,
        with_mlm=with_mlm,
        return_keras_model=False,
        **config,
    )


@pytest.fixture(scope="module")
def lm(reference):
    config, weights, _ = reference
    return _build(config, weights, "lm", True)


def _real(data):
    return data["token_ids"] != 0


def test_lm_matches_bert4keras(reference, lm):
    _, _, data = reference
    out = ops.convert_to_numpy(lm.model([data["token_ids"], data["segment_ids"]]))
    real = _real(data)
    np.testing.assert_allclose(out[real], data["lm"][real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("application, with_mlm", [("encoder", False), ("unilm", True)])
def test_encoder_and_unilm_match_bert4keras(reference, application, with_mlm):
    config, weights, data = reference
    t = _build(config, weights, application, with_mlm)
    out = ops.convert_to_numpy(t.model([data["token_ids"], data["segment_ids"]]))
    real = _real(data)
    np.testing.assert_allclose(out[real], data[application][real], atol=1e-4, rtol=1e-4)


def test_save_and_load_both_namings(reference, lm, tmp_path):
    """naming='google' writes the released names; naming='hf' the PyTorch port's
    `gau_alpha.` names; each loads back into an equal model."""
    config, weights, data = reference
    google = lm.export_weights("google")
    assert set(google) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(google[name], weights[name])
    hf = lm.export_weights("hf")
    assert "gau_alpha.encoder.layer.1.gau.i_dense.weight" in hf
    lm.save_weights_as_checkpoint(str(tmp_path / "hf"), naming="hf")
    lm.save_weights_as_checkpoint(str(tmp_path / "model.ckpt"), naming="google")
    inputs = [data["token_ids"], data["segment_ids"]]
    expected = ops.convert_to_numpy(lm.model(inputs))
    for path in (tmp_path / "hf", tmp_path / "model.ckpt"):
        again = _build(config, str(path), "lm", True)
        np.testing.assert_allclose(ops.convert_to_numpy(again.model(inputs)), expected, atol=1e-6)


def test_cached_decoding_equals_full_forward(reference, lm):
    """A 4-token prompt, then single tokens: the key/value cache of each GAU block."""
    _, _, data = reference
    ids, seg = data["token_ids"][:1, :7], np.zeros((1, 7), "int32")
    full = ops.convert_to_numpy(lm.model([ids, seg]))
    cache = lm.init_cache(1, 8)
    outs = []
    for a, b in ((0, 4), (4, 5), (5, 6), (6, 7)):
        o, cache = lm.call_with_cache([ids[:, a:b], seg[:, a:b]], cache)
        outs.append(ops.convert_to_numpy(o))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-4, rtol=1e-4)


def test_options_refused():
    with pytest.raises(ValueError, match="embedding_size"):
        build_transformer_model(
            None,
            model="gau_alpha",
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=24,
            embedding_size=8,
        )
    with pytest.raises(ValueError, match="attention_type"):
        build_transformer_model(
            None,
            model="gau_alpha",
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=24,
            attention_type="linear",
        )
