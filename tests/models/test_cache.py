"""Incremental decoding with a key/value cache equals the uncached forward pass.

For every causal model (BERT family as 'lm' and 'unilm', GPT, GPT2, GPT2_ML,
T5 / T5.1.1 / mT5 decoders): decode a padded batch token by token (and in
chunks) through `call_with_cache` and compare each step's logits with the full
model's at the same positions, max |diff| <= 1e-4. Weights are random with std
0.2, so a wrong position, mask or cache slot cannot pass.
"""

import numpy as np
import pytest

from kerasformers import build_transformer_model
from tests.utils import TOL, single_thread_torch, to_numpy  # noqa: F401
from tests.utils import randomize_keras as randomize

pytestmark = pytest.mark.usefixtures("single_thread_torch")

CONFIG = dict(
    vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
)


def build(model, application="encoder", **kwargs):
    logits = {"final_activation": "linear"} if model.startswith("gpt") else {"with_mlm": "linear"}
    transformer = build_transformer_model(
        None,
        model=model,
        application=application,
        return_keras_model=False,
        **{**CONFIG, **logits, **kwargs},
    )
    randomize(transformer.model)
    return transformer


def token_batch(length, seed=1):
    """Two rows; the second ends in padding (id 0)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, CONFIG["vocab_size"], (2, length)).astype("int32")
    ids[1, -3:] = 0
    return ids


def decode(transformer, inputs, chunks, max_length=None):
    """Feed `inputs` through call_with_cache in chunks; concatenated outputs."""
    n = inputs[0].shape[1]
    cache = transformer.init_cache(inputs[0].shape[0], max_length or n)
    outputs, start = [], 0
    for size in chunks:
        out, cache = transformer.call_with_cache(
            [x[:, start : start + size] for x in inputs], cache
        )
        outputs.append(to_numpy(out))
        start += size
    assert start == n and int(to_numpy(cache["index"])) == n
    return np.concatenate(outputs, axis=1)


def full_forward(transformer, inputs):
    return to_numpy(transformer.model(list(inputs), training=False))


CAUSAL = [
    ("bert", "lm", {}),
    ("roberta", "lm", {}),
    ("albert", "lm", {}),
    ("albert_unshared", "lm", {}),
    ("nezha", "lm", {}),
    ("roformer", "lm", {}),
    ("roformer_v2", "lm", {}),
    ("gpt", "encoder", {}),
    ("gpt2", "encoder", {}),
    ("gpt2_ml", "encoder", {}),
    # options that change positions or attention: hierarchical positions, RealFormer
    ("bert", "lm", {"hierarchical_position": True, "max_position": 8}),
    ("bert", "lm", {"residual_attention_scores": True}),
    ("nezha", "lm", {"max_relative_position": 3}),
]


@pytest.mark.parametrize(
    "model,application,kwargs",
    CAUSAL,
    ids=[f"{m}-{a}-{'-'.join(k) or 'plain'}" for m, a, k in CAUSAL],
)
@pytest.mark.parametrize("chunks", [[1] * 10, [4, 1, 2, 3]], ids=["token-by-token", "chunks"])
def test_causal_cache_equals_full_forward(model, application, kwargs, chunks):
    transformer = build(model, application, **kwargs)
    ids = token_batch(10)
    inputs = [ids] + [np.zeros_like(ids)] * (len(transformer.model.inputs) - 1)
    expected = full_forward(transformer, inputs)
    got = decode(transformer, inputs, chunks, max_length=12)
    assert np.abs(expected).std() > 0.1  # real logits, not a degenerate model
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


UNILM = ["bert", "roberta", "albert", "nezha", "roformer", "roformer_v2", "gpt"]


@pytest.mark.parametrize("model", UNILM)
def test_unilm_source_once_then_target_tokens(model):
    """The source (segment 0, padded in row 1) is encoded in one call, then the
    target (segment 1) one token at a time."""
    transformer = build(model, "unilm")
    source, target = 6, 5
    ids = token_batch(source + target)
    ids[1, source - 2 : source] = 0  # row 1: a shorter source, padded (and a padded target)
    segments = np.zeros_like(ids)
    segments[:, source:] = 1
    expected = full_forward(transformer, [ids, segments])
    got = decode(transformer, [ids, segments], [source] + [1] * target)
    real = ids != 0
    np.testing.assert_allclose(got[real], expected[real], atol=TOL, rtol=0)


T5_CASES = [
    ("t5.1.0", {}),
    ("t5.1.1", {}),
    ("mt5.1.1", {}),
    ("t5.1.1", {"cross_position_bias": True}),
]


@pytest.mark.parametrize(
    "version,kwargs", T5_CASES, ids=[v + ("-cross-bias" if k else "") for v, k in T5_CASES]
)
def test_t5_decoder_cache_equals_full_forward(version, kwargs):
    t5 = build_transformer_model(
        None, model=version, return_keras_model=False, with_lm="linear", **CONFIG, **kwargs
    )
    randomize(t5.model)
    encoder_ids = token_batch(9, seed=2)[:, :7]
    encoder_ids[1, 4:] = 0  # padded encoder input
    decoder_ids = token_batch(6, seed=3)
    decoder_ids[:, 0] = 0  # start token
    decoder_ids[1, -2:] = 0
    expected = full_forward(t5, [encoder_ids, decoder_ids])
    cache = t5.init_cache(encoder_ids, max_length=8)
    outputs = []
    for i in range(decoder_ids.shape[1]):
        out, cache = t5.call_with_cache(decoder_ids[:, i : i + 1], cache)
        outputs.append(to_numpy(out))
    got = np.concatenate(outputs, axis=1)
    assert np.abs(expected).std() > 0.1
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_t5_decoder_alone_with_context_mask():
    decoder = build_transformer_model(
        None,
        model="t5.1.1_decoder",
        return_keras_model=False,
        with_lm="linear",
        context_mask=True,
        **CONFIG,
    )
    randomize(decoder.model)
    rng = np.random.RandomState(4)
    context = rng.normal(size=(2, 5, CONFIG["hidden_size"])).astype("float32")
    context_mask = np.array([[1] * 5, [1, 1, 1, 0, 0]], "int32")
    ids = token_batch(4, seed=5)
    ids[:, 0] = 0
    expected = to_numpy(decoder.model([context, ids, context_mask]))
    cache = decoder.init_cache(context, max_length=4, context_mask=context_mask)
    out1, cache = decoder.call_with_cache(ids[:, :3], cache)
    out2, cache = decoder.call_with_cache(ids[:, 3:], cache)
    got = np.concatenate([to_numpy(out1), to_numpy(out2)], axis=1)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_reorder_cache_follows_the_rows():
    """Reordering (repeating) batch rows of a cache, as beam search does, equals
    decoding the reordered batch from the start."""
    transformer = build("gpt2")
    ids = token_batch(6)
    cache = transformer.init_cache(2, 6)
    _, cache = transformer.call_with_cache(ids[:, :4], cache)
    order = np.array([1, 1, 0])
    cache = transformer.reorder_cache(cache, order)
    got, _ = transformer.call_with_cache(ids[order, 4:], cache)
    expected = full_forward(transformer, [ids[order]])[:, 4:]
    np.testing.assert_allclose(to_numpy(got), expected, atol=TOL, rtol=0)


def test_cache_overflow_is_an_error():
    transformer = build("gpt2")
    cache = transformer.init_cache(1, 4)
    _, cache = transformer.call_with_cache(np.array([[5, 6, 7]]), cache)
    with pytest.raises(ValueError, match="3 are written and 2 more do not fit"):
        transformer.call_with_cache(np.array([[5, 6]]), cache)


@pytest.mark.parametrize("model", ["bert", "t5.1.1_encoder"])
def test_encoders_refuse_incremental_decoding(model):
    transformer = build_transformer_model(None, model=model, return_keras_model=False, **CONFIG)
    with pytest.raises(ValueError, match="not causal"):
        transformer.init_cache(1, 4)


def test_model_is_unchanged_after_cached_calls():
    """A step must leave the model's graph state alone (masks, inputs, biases)."""
    transformer = build("nezha", "unilm")
    ids = token_batch(5)
    segments = np.zeros_like(ids)
    segments[:, 3:] = 1
    before = full_forward(transformer, [ids, segments])
    decode(transformer, [ids, segments], [3, 1, 1])
    assert transformer.inputs[0] is transformer.model.inputs[0]
    np.testing.assert_array_equal(full_forward(transformer, [ids, segments]), before)


@pytest.mark.parametrize(
    "model,application", [("gpt2", "encoder"), ("bert", "lm"), ("roformer", "unilm")]
)
def test_padding_gap_and_logits(model, application):
    """A prompt followed by padding, then `position_shift` = the pad count: the next
    tokens are computed as if the padding were not there. `logits=True` returns the
    LM head before its softmax."""
    import keras

    transformer = build_transformer_model(
        None, model=model, application=application, return_keras_model=False, **CONFIG
    )
    randomize(transformer.model)
    ids = token_batch(7)[:1]
    segments = np.zeros_like(ids)
    segments[:, 3:] = 1
    with_segments = len(transformer.model.inputs) > 1
    inputs = (lambda i, s: [i, s]) if with_segments else (lambda i, s: [i])
    expected = full_forward(transformer, inputs(ids, segments))
    padded = np.concatenate([ids[:, :3], np.zeros((1, 2), "int32")], axis=1)
    cache = transformer.init_cache(1, 9)
    _, cache = transformer.call_with_cache(
        inputs(padded, np.zeros_like(padded)), cache, mask=np.array([[1, 1, 1, 0, 0]])
    )
    cache["position_shift"] = keras.ops.convert_to_tensor(np.array([2], "int32"))
    logits, cache = transformer.call_with_cache(
        inputs(ids[:, 3:], segments[:, 3:]), cache, logits=True
    )
    probs = to_numpy(keras.ops.softmax(logits, axis=-1))
    np.testing.assert_allclose(probs, expected[:, 3:], atol=TOL, rtol=0)
