"""T5 (1.0, 1.1) and mT5 equal transformers' on small random models.

Reference: T5ForConditionalGeneration (feed_forward_proj='relu', tied LM head,
decoder output scaled by d_model**-0.5), T5ForConditionalGeneration
('gated-gelu', untied `lm_head`) and MT5ForConditionalGeneration (untied), all
weights std 0.2 -> save_pretrained -> our loader -> max |diff| <= 1e-4 on
logits, encoder states and decoder states, with padding in the encoder input.
Plus: the decoder alone equals the joint model, the Mesh TF names of SPEC
round-trip exactly, keep_tokens, and the bucket ids of the relative bias.
"""

import numpy as np
import pytest
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.checkpoints.sources import open_checkpoint
from kerasformers.layers import Embedding, RelativePositionEmbeddingT5
from tests.utils import assert_close, randomize_torch, to_numpy

V, H, L, HEADS, DKV, FF = 99, 32, 2, 4, 8, 37
SMALL = dict(
    vocab_size=V, d_model=H, d_ff=FF, num_layers=L, num_heads=HEADS, d_kv=DKV, dropout_rate=0.0
)

# our model key: (config class, model class, config overrides, untie the LM head)
CASES = {
    "t5.1.0": ("T5Config", "T5ForConditionalGeneration", dict(feed_forward_proj="relu"), False),
    "t5.1.1": (
        "T5Config",
        "T5ForConditionalGeneration",
        dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        True,
    ),
    "mt5.1.1": ("MT5Config", "MT5ForConditionalGeneration", dict(tie_word_embeddings=False), True),
}


def make_hf(key, untie=None, **overrides):
    config_cls, model_cls, extra, default_untie = CASES[key]
    config = getattr(transformers, config_cls)(**{**SMALL, **extra, **overrides})
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config)
    if default_untie if untie is None else untie:
        # transformers 5 ties lm_head to shared in a fresh model; real t5.1.1/mT5
        # checkpoints have their own lm_head, so give the reference one.
        hf.lm_head.weight = torch.nn.Parameter(hf.shared.weight.detach().clone())
        hf.all_tied_weights_keys.pop("lm_head.weight", None)
    return randomize_torch(hf, seed=1)


def encoder_batch(seed=0):
    """Encoder ids with trailing padding (rows of length 9, 6, 3)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, V, (3, 9)).astype("int32")
    ids[1, 6:] = 0
    ids[2, 3:] = 0
    return ids


def decoder_batch(seed=1):
    """Decoder ids: start token 0 then real tokens; row 2 ends in padding."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, V, (3, 7)).astype("int32")
    ids[:, 0] = 0
    ids[2, 5:] = 0
    return ids


class Reference:
    def __init__(self, key, folder):
        self.key = key
        self.hf = make_hf(key)
        self.hf.save_pretrained(folder)
        self.folder = folder
        self.ids, self.dec = encoder_batch(), decoder_batch()
        self.mask = self.ids != 0
        with torch.no_grad():
            out = self.hf(
                input_ids=torch.tensor(self.ids, dtype=torch.long),
                attention_mask=torch.tensor(self.mask),
                decoder_input_ids=torch.tensor(self.dec, dtype=torch.long),
            )
            states = self.hf.decoder(
                input_ids=torch.tensor(self.dec, dtype=torch.long),
                encoder_hidden_states=out.encoder_last_hidden_state,
                encoder_attention_mask=torch.tensor(self.mask),
            )
        self.logits = out.logits.numpy()
        self.encoded = out.encoder_last_hidden_state.numpy()
        self.decoded = states.last_hidden_state.numpy()


_CACHE = {}


def reference(key, tmp_path_factory):
    if key not in _CACHE:
        _CACHE[key] = Reference(key, str(tmp_path_factory.mktemp(key)))
    return _CACHE[key]


@pytest.fixture(params=sorted(CASES))
def ref(request, tmp_path_factory):
    return reference(request.param, tmp_path_factory)


def ours(ref, **kwargs):
    return build_transformer_model(checkpoint_path=ref.folder, return_keras_model=False, **kwargs)


_OURS = {}


def loaded(ref):
    """Our T5 loaded from the reference (logits, context-mask input), built once per case."""
    if ref.key not in _OURS:
        _OURS[ref.key] = ours(ref, with_lm="linear", context_mask=True)
    return _OURS[ref.key]


# ------------------------------------------------------------------ parity
def test_config_mapping(ref):
    t5 = loaded(ref)
    assert t5.version == ref.key
    assert t5.tie_word_embeddings is (ref.key == "t5.1.0")
    assert (
        t5.hidden_size,
        t5.intermediate_size,
        t5.num_hidden_layers,
        t5.num_attention_heads,
        t5.attention_head_size,
    ) == (H, FF, L, HEADS, DKV)
    assert t5.layer_norm_eps == 1e-6
    names = {layer.name for layer in t5.model.layers}
    assert ("Decoder-Output-Scale" in names) is (ref.key == "t5.1.0")
    assert ("Decoder-Output-LM" in names) is (ref.key != "t5.1.0")


def test_logits_with_encoder_padding(ref):
    logits = to_numpy(loaded(ref).model([ref.ids, ref.dec]))
    assert_close(logits, ref.logits, what=f"{ref.key} logits")


def test_encoder_output(ref):
    t5 = loaded(ref)
    assert_close(to_numpy(t5.encoder(ref.ids)), ref.encoded, ref.mask, what=f"{ref.key} encoder")
    encoder = build_transformer_model(checkpoint_path=ref.folder, model=f"{ref.key}_encoder")
    assert [t.name for t in encoder.inputs] == ["Encoder-Input-Token"]
    assert_close(
        to_numpy(encoder(ref.ids)), ref.encoded, ref.mask, what=f"{ref.key} standalone encoder"
    )


def test_decoder_alone_equals_joint_model(ref):
    t5 = loaded(ref)
    joint = to_numpy(t5.model([ref.ids, ref.dec]))
    context = to_numpy(t5.encoder(ref.ids))
    assert [t.name for t in t5.decoder.inputs] == [
        "Input-Context",
        "Decoder-Input-Token",
        "Input-Context-Mask",
    ]
    alone = to_numpy(t5.decoder([context, ref.dec, ref.mask.astype("int32")]))
    assert_close(alone, joint, what=f"{ref.key} decoder alone (context mask)")
    # the original two inputs: right for an unpadded context
    decoder = build_transformer_model(
        checkpoint_path=ref.folder, model=f"{ref.key}_decoder", with_lm="linear"
    )
    assert [t.name for t in decoder.inputs] == ["Input-Context", "Decoder-Input-Token"]
    alone = to_numpy(decoder([context[:1], ref.dec[:1]]))
    assert_close(alone, joint[:1], what=f"{ref.key} standalone decoder")
    assert_close(alone, ref.logits[:1], what=f"{ref.key} standalone decoder vs reference")


def test_decoder_states(ref):
    decoder = build_transformer_model(
        checkpoint_path=ref.folder, model=f"{ref.key}_decoder", with_lm=False, context_mask=True
    )
    out = to_numpy(decoder([ref.encoded, ref.dec, ref.mask.astype("int32")]))
    assert_close(out, ref.decoded, what=f"{ref.key} decoder states (unscaled)")


def test_cross_position_bias_option(ref):
    """bert4keras' default (bias on cross-attention) is an option; it is not the reference."""
    default = loaded(ref)
    biased = ours(ref, with_lm="linear", context_mask=True, cross_position_bias=True)
    assert default.cross_position_bias is False
    assert len(biased.model.weights) == len(default.model.weights)
    out = to_numpy(biased.model([ref.ids, ref.dec]))
    assert np.abs(out - ref.logits).max() > 1e-2


# ------------------------------------------------------------ checkpoints
def spec_google_names(key):
    """The Mesh TF variable names of SPEC §1.2 (T5 family) for an L-layer model."""
    norm = "rms_norm" if key == "mt5.1.1" else "layer_norm"
    wi = ["wi_0", "wi_1"] if key != "t5.1.0" else ["wi"]
    names = {"shared/embedding"}
    for stack, subs in (
        ("encoder", ["SelfAttention"]),
        ("decoder", ["SelfAttention", "EncDecAttention"]),
    ):
        names.add(f"{stack}/block_000/layer_000/SelfAttention/relative_attention_bias")
        names.add(
            f"{stack}/rms_norm/scale" if key == "mt5.1.1" else f"{stack}/final_layer_norm/scale"
        )
        for i in range(L):
            for j, sub in enumerate(subs):
                prefix = f"{stack}/block_{i:03d}/layer_{j:03d}"
                names |= {f"{prefix}/{sub}/{w}" for w in "qkvo"}
                names.add(f"{prefix}/{norm}/scale")
            prefix = f"{stack}/block_{i:03d}/layer_{len(subs):03d}"
            names |= {f"{prefix}/DenseReluDense/{w}/kernel" for w in wi + ["wo"]}
            names.add(f"{prefix}/{norm}/scale")
    if key != "t5.1.0":
        names.add("decoder/logits/kernel")
    return names


def weights(transformer):
    return {v.path: np.asarray(v.numpy()) for v in transformer.model.weights}


def test_google_checkpoint_round_trip(ref, tmp_path):
    t5 = loaded(ref)
    prefix = str(tmp_path / "model.ckpt")
    t5.save_weights_as_checkpoint(prefix, naming="google")
    source = open_checkpoint(prefix)
    assert set(source.keys()) == spec_google_names(ref.key)
    bias = source.get("encoder/block_000/layer_000/SelfAttention/relative_attention_bias")
    assert bias.shape == (HEADS, 32)  # Mesh TF: [heads, buckets]
    emb = t5.layers["Embedding-Token"].embeddings
    np.testing.assert_array_equal(source.get("shared/embedding"), np.asarray(emb.numpy()))
    if ref.key != "t5.1.0":
        assert source.get("decoder/logits/kernel").shape == (H, V)
    fresh = build_transformer_model(ref.folder, model=ref.key, return_keras_model=False)
    report = fresh.load_weights_from_checkpoint(prefix)
    assert report.ok and not report.unused
    a, b = weights(t5), weights(fresh)
    assert a.keys() == b.keys() and len(report.loaded) == len(a)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_hf_export_round_trip(ref, tmp_path):
    t5 = loaded(ref)
    folder = str(tmp_path / "hf")
    t5.save_weights_as_checkpoint(folder, naming="hf")
    cls = type(ref.hf)
    hf = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = hf(
            input_ids=torch.tensor(ref.ids, dtype=torch.long),
            attention_mask=torch.tensor(ref.mask),
            decoder_input_ids=torch.tensor(ref.dec, dtype=torch.long),
        ).logits.numpy()
    assert_close(logits, ref.logits, tol=1e-5, what=f"{ref.key} exported to transformers")


def test_keep_tokens(ref, tmp_path):
    """keep_tokens slices the shared embedding and the columns of an untied LM head."""
    keep = [0, 1] + list(range(V - 1, 1, -1))[:40]
    old = np.asarray(keep)
    ids = np.where(ref.ids > 0, ref.ids % 41 + 1, 0).astype("int32")
    dec = np.where(ref.dec > 0, ref.dec % 41 + 1, 0).astype("int32")
    dec[:, 0] = 0
    with torch.no_grad():
        expected = ref.hf(
            input_ids=torch.tensor(old[ids], dtype=torch.long),
            attention_mask=torch.tensor(ids != 0),
            decoder_input_ids=torch.tensor(old[dec], dtype=torch.long),
        ).logits
    expected = expected.numpy()[..., old]
    t5 = ours(ref, keep_tokens=keep, with_lm="linear")
    assert_close(to_numpy(t5.model([ids, dec])), expected, what=f"{ref.key} keep_tokens (hf)")
    prefix = str(tmp_path / "model.ckpt")
    loaded(ref).save_weights_as_checkpoint(prefix, naming="google")
    t5 = build_transformer_model(
        ref.folder, prefix, model=ref.key, keep_tokens=keep, with_lm="linear"
    )
    assert_close(to_numpy(t5([ids, dec])), expected, what=f"{ref.key} keep_tokens (google)")


def test_tied_lm_head_saved_by_transformers5(tmp_path):
    """A fresh transformers-5 mT5 ties lm_head to shared and saves no lm_head.weight.

    Also heads * d_kv (4 * 6) != d_model, as in the real mT5 (6 * 64 != 512).
    """
    hf = make_hf("mt5.1.1", untie=False, d_kv=6)
    hf.save_pretrained(str(tmp_path))
    ids, dec = encoder_batch(), decoder_batch()
    with torch.no_grad():
        expected = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(ids != 0),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long),
        ).logits.numpy()
    model = build_transformer_model(checkpoint_path=str(tmp_path), with_lm="linear")
    assert_close(to_numpy(model([ids, dec])), expected, what="mT5 with tied lm_head")


def test_keras_save_and_load(tmp_path_factory, tmp_path):
    """The joint model (new layers and options included) survives model.save / load_model."""
    import keras

    ref = reference("t5.1.1", tmp_path_factory)
    model = loaded(ref).model
    model.save(str(tmp_path / "t5.keras"))
    again = keras.saving.load_model(str(tmp_path / "t5.keras"))
    assert_close(
        to_numpy(again([ref.ids, ref.dec])),
        to_numpy(model([ref.ids, ref.dec])),
        tol=0,
        what="saved and loaded",
    )


# ------------------------------------------------------------------ pieces
def test_bucket_ids_match_transformers():
    """Every distance in +-300, both directions, incl. the float boundaries 16/32/64/128."""
    import keras
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-300, 301)
    for buckets, max_distance in [(32, 128), (16, 20), (64, 256)]:
        for bidirectional in (True, False):
            expected = T5Attention._relative_position_bucket(
                torch.tensor(rel),
                bidirectional=bidirectional,
                num_buckets=buckets,
                max_distance=max_distance,
            ).numpy()
            layer = RelativePositionEmbeddingT5(
                buckets, HEADS, max_distance=max_distance, bidirectional=bidirectional
            )
            got = keras.ops.convert_to_numpy(
                layer.compute_position_ids(keras.ops.convert_to_tensor(rel.astype("int32")))
            )
            np.testing.assert_array_equal(
                got, expected, err_msg=f"{buckets} {max_distance} {bidirectional}"
            )


def test_relative_position_layer_output():
    layer = RelativePositionEmbeddingT5(32, HEADS, bidirectional=False)
    q, k = np.zeros((1, 7, 2), "float32"), np.zeros((1, 9, 2), "float32")
    out = to_numpy(layer([q, k]))
    assert out.shape == (7, 9, HEADS)
    assert [w.path for w in layer.weights] == [f"{layer.name}/embeddings"]
    assert tuple(layer.embeddings.shape) == (32, HEADS)
    config = layer.get_config()
    assert RelativePositionEmbeddingT5.from_config(config).get_config() == config


def test_first_token_always_valid_in_mask(tmp_path_factory):
    """Start token 0 stays a real position; the LM output's Keras mask (used by
    Keras losses) covers the start position and the non-pad decoder tokens."""
    import keras

    ids = np.array([[0, 5, 6, 0, 0]])
    mask = Embedding(10, 4, mask_zero=True, first_token_valid=True).compute_mask(ids)
    assert np.asarray(to_numpy(mask)).astype(int).tolist() == [[1, 1, 1, 0, 0]]
    ref = reference("t5.1.0", tmp_path_factory)
    model = loaded(ref).model
    mask_model = keras.Model(model.inputs, model.outputs[0]._keras_mask)
    got = np.asarray(to_numpy(mask_model([ref.ids, ref.dec]))).astype(bool)
    expected = ref.dec != 0
    expected[:, 0] = True
    np.testing.assert_array_equal(got, expected)


def test_decoder_self_attention_is_causal(ref):
    """Changing a later decoder token never changes an earlier position's output."""
    model = loaded(ref).model
    base = to_numpy(model([ref.ids, ref.dec]))
    dec = ref.dec.copy()
    dec[:, 4] = (dec[:, 4] + 7) % V
    changed = to_numpy(model([ref.ids, dec]))
    assert_close(changed[:, :4], base[:, :4], tol=0, what="causal")
    assert np.abs(changed[:, 4:] - base[:, 4:]).max() > 1e-3


def test_lm_and_unilm_refused():
    for application in ("lm", "unilm"):
        with pytest.raises(ValueError, match="not available"):
            build_transformer_model(
                None,
                model="t5",
                application=application,
                vocab_size=V,
                hidden_size=H,
                num_hidden_layers=1,
                num_attention_heads=HEADS,
                intermediate_size=FF,
            )


def test_model_keys_and_versions():
    from kerasformers.models import MODELS, T5, T5_Decoder, T5_Encoder

    small = dict(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=FF,
        return_keras_model=False,
    )
    for version in ("t5", "t5.1.0", "t5.1.1", "mt5.1.1"):
        for suffix, cls in (("", T5), ("_encoder", T5_Encoder), ("_decoder", T5_Decoder)):
            assert MODELS[version + suffix] is cls
    expected = {"t5": "t5.1.0", "t5.1.0": "t5.1.0", "t5.1.1": "t5.1.1", "mt5.1.1": "mt5.1.1"}
    ids, dec = encoder_batch(), decoder_batch()  # the reference shapes (JAX compiles once)
    for key, version in expected.items():
        t5 = build_transformer_model(None, model=key, **small)
        assert t5.version == version and t5.encoder is not None and t5.decoder is not None
        assert t5.gated is (version != "t5.1.0")
        probs = to_numpy(t5.model([ids, dec]))  # with_lm=True: softmax probabilities
        assert probs.shape == (3, 7, V) and probs.min() >= 0
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    t5 = build_transformer_model(None, model="t5.1.1", hidden_act=["gelu", "linear"], **small)
    assert t5.hidden_act == ["gelu_tanh", "linear"]  # Mesh TF / gelu_new


def test_public_seq2seq_surface():
    """is_seq2seq, the encoder/decoder objects and the cross-attention projection."""
    from kerasformers.models import BERT, T5, T5_Decoder, T5_Encoder

    assert T5.is_seq2seq and not T5_Encoder.is_seq2seq and not T5_Decoder.is_seq2seq
    assert not BERT.is_seq2seq
    t5 = build_transformer_model(
        None,
        model="t5.1.1",
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=HEADS,
        intermediate_size=FF,
        return_keras_model=False,
    )
    assert isinstance(t5.encoder_transformer, T5_Encoder)
    assert isinstance(t5.decoder_transformer, T5_Decoder)
    assert t5.encoder is t5.encoder_transformer.model
    assert t5.decoder is t5.decoder_transformer.model
    ids = encoder_batch()
    cache = t5.init_cache(ids, max_length=4)
    context = t5.encoder(ids)
    kv = t5.decoder_transformer.cross_attention_key_values(context)
    assert len(kv) == len(cache["cross"]) == L
    for (k, v), (ck, cv) in zip(kv, cache["cross"]):
        assert_close(to_numpy(k), to_numpy(ck), tol=0, what="cross keys")
        assert_close(to_numpy(v), to_numpy(cv), tol=0, what="cross values")
    layer = t5.layers["Decoder-Transformer-0-MultiHeadCrossAttention"]
    expected_k = to_numpy(layer.k_dense(context)).reshape(3, 9, HEADS, DKV)
    assert_close(to_numpy(kv[0][0]), expected_k, tol=0, what="k projection")


@pytest.mark.parametrize("key", ["t5.1.1", "mt5.1.1", "t5.1.0"])
def test_scale_decoder_outputs_option(key):
    """scale_decoder_outputs=True (bert4keras: every version) multiplies the
    decoder states by hidden_size**-0.5 before the LM head; the default scales
    only before a tied head (t5.1.0), as transformers."""
    small = dict(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
    )
    tied = key == "t5.1.0"

    def build(**kwargs):
        return build_transformer_model(None, model=key, return_keras_model=False, **small, **kwargs)

    default, scaled, states = build(), build(scale_decoder_outputs=True), build(with_lm=False)
    scaled_states = build(with_lm=False, scale_decoder_outputs=True)
    unscaled = build(scale_decoder_outputs=False)
    rng = np.random.RandomState(0)
    values = {
        w.path: 0.2 * rng.normal(size=w.shape).astype("float32") for w in default.model.weights
    }
    for t in (default, scaled, states, scaled_states, unscaled):
        for w in t.model.weights:
            w.assign(values[w.path])
    names = [layer.name for layer in default.decoder.layers]
    assert ("Decoder-Output-Scale" in names) == tied
    assert "Decoder-Output-Scale" in [layer.name for layer in scaled.decoder.layers]
    assert "Decoder-Output-Scale" not in [layer.name for layer in unscaled.decoder.layers]
    assert default.decoder_transformer.scale_decoder_outputs is tied

    enc = np.array([[5, 6, 7, 8], [9, 10, 1, 0]], "int32")
    dec = np.array([[0, 11, 12], [0, 13, 0]], "int32")
    h = to_numpy(states.model.predict([enc, dec], verbose=0)).astype("float64")
    hs = to_numpy(scaled_states.model.predict([enc, dec], verbose=0))
    assert_close(hs, h * 16**-0.5, tol=1e-5)

    if tied:
        kernel = values["Embedding-Token/embeddings"].T
    else:
        kernel = values["Decoder-Output-LM/kernel"]

    def softmax(z):
        z = z - z.max(-1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(-1, keepdims=True)

    expected = {True: softmax(h * 16**-0.5 @ kernel), False: softmax(h @ kernel)}
    for t, scale in ((default, tied), (scaled, True), (unscaled, False)):
        got = to_numpy(t.model.predict([enc, dec], verbose=0))
        assert_close(got, expected[scale], tol=1e-5)
    with pytest.raises(ValueError, match="no transformers config"):
        (unscaled if tied else scaled).hf_config()
    assert default.hf_config()["tie_word_embeddings"] is tied
