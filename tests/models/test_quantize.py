"""`model.quantize("int8")` on built models: an encoder with its MLM head, a GPT2
LM, T5.1.1 (untied LM head) and T5.1.0 (LM head tied to the embedding).

Keras quantizes every plain Dense (the q/k/v/o projections inside
MultiHeadAttention and the FeedForward branches included: they are leaf
layers) and, through kerasformers' Embedding, the token and segment tables,
whose tied "dense" mode then serves the LM head in int8. Position tables,
norms and T5's relative bias stay in float.

Measured on random inputs with BERT-style weights (normal, std 0.02; norms 1,
biases 0; identical on jax, torch and tensorflow): the int8 logits differ from
float32 by at most 1.0-1.6% of the largest |logit| with these configs (hidden
32, 2 layers, vocab 100; 1.6-2.9% at hidden 128, 4 layers, vocab 1000), and
keep the float32 top-1 token at 100% of positions here (92-98% at the larger
size: std-0.02 weights leave many near ties). The test bounds: 4% and 90%.
"""

import warnings

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers import layers as L
from kerasformers.layers import Embedding
from tests.utils import BACKEND, no_gc, quantize, single_thread_torch, to_numpy  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
)
CASES = {
    "bert-mlm": dict(model="bert", with_mlm="linear"),
    "gpt2": dict(model="gpt2", final_activation="linear"),
    "t5.1.1": dict(model="t5.1.1", with_lm="linear"),
    "t5": dict(model="t5", with_lm="linear"),
}
REL_TOL, TOP1 = 0.04, 0.9


def build(case, **kwargs):
    return build_transformer_model(None, **SMALL, **CASES[case], **kwargs)


def bert_style(model, seed=0):
    """Weights as BERT initialises them: normal(0, 0.02), norms 1, biases 0 (the
    same on every backend)."""
    rng = np.random.RandomState(seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        if name == "gamma":
            w.assign(np.ones(w.shape, "float32"))
        elif name in ("beta", "bias"):
            w.assign(np.zeros(w.shape, "float32"))
        else:
            w.assign((0.02 * rng.normal(size=w.shape)).astype("float32"))
    return model


def model_inputs(model, batch=4, length=16, seed=1):
    ids = np.random.RandomState(seed).randint(1, SMALL["vocab_size"], (batch, length))
    ids = ids.astype("int32")
    return [np.zeros_like(ids) if "Segment" in t.name else ids for t in model.inputs]


@pytest.mark.parametrize("case", sorted(CASES))
def test_int8_stays_close_to_float32(case):
    model = bert_style(build(case))
    x = model_inputs(model)
    expected = to_numpy(model(x))
    quantize(model)
    got = to_numpy(model(x))
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    top1 = (got.argmax(-1) == expected.argmax(-1)).mean()
    assert 0 < rel <= REL_TOL, f"{case}: max |diff| {rel:.2%} of the logit scale ({BACKEND})"
    assert top1 >= TOP1, f"{case}: top-1 agreement {top1:.1%} ({BACKEND})"


@pytest.mark.parametrize("case", ["bert-mlm", "t5"])
def test_every_dense_and_token_table_is_quantized(case):
    model = quantize(build(case))
    layers = list(model._flatten_layers(include_self=False))
    dense = [l for l in layers if type(l) is keras.layers.Dense]
    tables = [l for l in layers if isinstance(l, Embedding)]
    assert dense and tables
    for layer in dense + tables:
        assert layer.quantization_mode == "int8", layer.path
    int8 = {v.path for v in model.weights if v.dtype == "int8"}
    assert f"{tables[0].name}/embeddings" in int8
    assert (
        "Transformer-0-MultiHeadSelfAttention/q_dense/kernel" in int8
        or "Encoder-Transformer-0-MultiHeadSelfAttention/q_dense/kernel" in int8
    )
    leaves = [l for l in layers if len(list(l._flatten_layers())) == 1]
    in_float = [v for l in leaves if l.quantization_mode is None for v in l.weights]
    assert in_float and all(v.dtype == "float32" for v in in_float)  # norms, positions


def test_quantized_model_saves_and_loads(tmp_path):
    model = quantize(bert_style(build("gpt2")))
    path = str(tmp_path / "gpt2-int8.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = model_inputs(model)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    assert loaded.get_layer("Embedding-Token").quantization_mode == "int8"


# layers that hold Dense sublayers: quantize() reaches the sublayers only, so
# each layer's config must say which of them are int8 for a reload to work
COMPOSITE = {
    "MultiHeadAttention": lambda x, c: L.MultiHeadAttention(2, 8)([x, x, x]),
    "FeedForward": lambda x, c: L.FeedForward(24, activation=["gelu", "linear"])(x),
    "GlobalPointer": lambda x, c: L.GlobalPointer(2, 8)(x),
    "EfficientGlobalPointer": lambda x, c: L.EfficientGlobalPointer(2, 8)(x),
    "GatedAttentionUnit": lambda x, c: L.GatedAttentionUnit(units=24, key_size=8)(x),
    "LayerNormalization-conditional": lambda x, c: L.LayerNormalization(
        conditional=True, hidden_units=4
    )([x, c]),
}


@pytest.mark.parametrize("case", sorted(COMPOSITE))
def test_layers_with_dense_sublayers_save_and_load_quantized(case, tmp_path):
    x, c = keras.Input((6, 16)), keras.Input((8,))
    model = keras.Model([x, c], COMPOSITE[case](x, c))
    rng = np.random.RandomState(0)
    for w in model.weights:
        w.assign((0.3 * rng.normal(size=w.shape)).astype("float32"))
    quantize(model)
    assert any(v.dtype == "int8" for v in model.weights)
    data = [
        rng.normal(size=(2, 6, 16)).astype("float32"),
        rng.normal(size=(2, 8)).astype("float32"),
    ]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(data)), to_numpy(model(data)))


@pytest.mark.parametrize("case", ["gpt2", "t5.1.1"])
def test_cached_logits_of_a_quantized_model_match_the_model(case):
    """call_with_cache(logits=True) skips the LM head's softmax; for T5.1.1's
    untied int8 `Decoder-Output-LM` that needs the layer's own int8 maths."""
    kwargs = {k: v for k, v in CASES[case].items() if k not in ("with_lm", "final_activation")}
    obj = build_transformer_model(None, **SMALL, **kwargs, return_keras_model=False)
    bert_style(obj.model)
    quantize(obj.model)
    if case == "gpt2":
        ids = np.array([[5, 6, 7, 8]], "int32")
        probs = to_numpy(obj.model([ids]))
        cache = obj.init_cache(batch_size=1, max_length=4)
    else:
        encoder, ids = np.array([[7, 8, 9, 1]], "int32"), np.array([[0, 5, 6, 7]], "int32")
        probs = to_numpy(obj.model([encoder, ids]))
        cache = obj.init_cache(encoder, max_length=4)
    logits, _ = obj.call_with_cache(ids, cache, logits=True)
    logits = to_numpy(logits)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax, probs, atol=1e-5)


def test_other_modes_keep_the_token_table_in_float_with_a_clear_warning():
    model = bert_style(build("gpt2"))
    x = model_inputs(model)
    expected = to_numpy(model(x))
    with warnings.catch_warnings(record=True) as caught, no_gc():
        warnings.simplefilter("always")
        model.quantize("int4")
    messages = [str(w.message) for w in caught]
    assert any("supports quantize('int8') only, not 'int4'" in m for m in messages), messages
    assert model.get_layer("Embedding-Token").quantization_mode is None
    assert (
        model.get_layer("Transformer-0-MultiHeadSelfAttention").q_dense.quantization_mode == "int4"
    )
    got = to_numpy(model(x))
    assert np.isfinite(got).all() and (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.5
