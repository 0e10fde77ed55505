"""`AutoRegressiveDecoder.beam_search(topk=k, rule="transformers")` and
`generate(num_beams=k)` give the same tokens on a UniLM with random weights (std 0.3,
so that outputs vary by input), on every backend; the default bert4keras rule is the
original's (it drops ended hypotheses that are not the best, and never normalises by
length), so it may choose another sequence."""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.generation import AutoRegressiveDecoder, generate

V, END, ROWS, LENGTH, BOOST = 40, 3, 3, 16, 0.8
SOURCES = [[2, 5 + i, 11 + 2 * i, 7 + 3 * i, END] for i in range(5)]  # one length: one compile


@pytest.fixture(scope="module")
def unilm():
    transformer = build_transformer_model(
        None,
        model="bert",
        application="unilm",
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        return_keras_model=False,
    )
    rng = np.random.RandomState(0)
    for w in transformer.model.weights:
        if "gamma" not in w.path:
            w.assign(rng.normal(0, 0.1, w.shape).astype("float32"))
    bias = transformer.model.get_layer("MLM-Bias").weights[0]
    bias.assign(keras.ops.convert_to_numpy(bias) + BOOST * (np.arange(V) == END))  # ends happen
    return transformer


def decoder(unilm, maxlen=6, minlen=1):
    """bert4keras' UniLM decoder: the whole sequence through the model every step (padded
    to ROWS x LENGTH, so that JAX's eager ops see one shape; padding is masked)."""

    class Seq2Seq(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="probas")
        def predict(self, inputs, output_ids, states):
            token_ids, segment_ids = inputs
            token_ids = np.concatenate([token_ids, output_ids], 1)
            segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
            rows, length = token_ids.shape
            padded = np.zeros((2, ROWS, LENGTH), "int32")
            padded[0, :rows, :length], padded[1, :rows, :length] = token_ids, segment_ids
            probas = unilm.model([padded[0], padded[1]], training=False)
            return keras.ops.convert_to_numpy(probas)[:rows, length - 1]

    return Seq2Seq(start_id=None, end_id=END, maxlen=maxlen, minlen=minlen)


def inputs(source):
    return [np.array(source), np.zeros(len(source), "int32")]


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (2.0, True)])
def test_transformers_rule_equals_generate(unilm, length_penalty, early_stopping):
    search = decoder(unilm)
    outputs = set()
    for source in SOURCES:
        expected = generate(
            unilm,
            [source],
            num_beams=3,
            max_new_tokens=6,
            eos_token_id=END,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )[0]
        ours = search.beam_search(
            inputs(source),
            topk=3,
            rule="transformers",
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        assert list(ours) == [int(t) for t in expected], source
        outputs.add(tuple(ours))
    if length_penalty == 1.0:
        assert len(outputs) >= 2  # outputs vary with the input


def test_bert4keras_rule_and_arguments(unilm):
    search = decoder(unilm)
    differ = 0
    for source in SOURCES:
        original = search.beam_search(inputs(source), topk=3)
        assert original[-1] == END or len(original) == 6
        other = search.beam_search(inputs(source), topk=3, rule="transformers", length_penalty=0)
        differ += list(original) != list(other)
    assert differ >= 1  # the two rules are not the same search (README: "two rules")
    with pytest.raises(ValueError, match="rule must be"):
        search.beam_search(inputs(SOURCES[0]), topk=3, rule="hf")
    with pytest.raises(ValueError, match="length_penalty and early_stopping"):
        search.beam_search(inputs(SOURCES[0]), topk=3, length_penalty=0.5)
    with pytest.raises(ValueError, match="min_ends"):
        search.beam_search(inputs(SOURCES[0]), topk=3, rule="transformers", min_ends=2)
