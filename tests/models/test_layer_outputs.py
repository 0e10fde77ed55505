"""`layer_outputs`: every block's output of ALBERT's shared block equals transformers'
hidden states (5.x, random weights std 0.2), and ``get_layer(name).output`` is the first
call's output (Keras 3's rule, documented)."""

import keras
import numpy as np
import pytest
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.models import layer_outputs
from tests.utils import assert_close, batch, randomize_torch, to_numpy

LAYERS = 3


@pytest.fixture(scope="module")
def albert(tmp_path_factory):
    config = transformers.AlbertConfig(
        vocab_size=99,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    hf = randomize_torch(transformers.AlbertModel(config))
    folder = str(tmp_path_factory.mktemp("albert"))
    hf.save_pretrained(folder)
    ids, seg = batch(lengths=(9, 5))
    with torch.no_grad():
        states = hf(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(seg),
            attention_mask=torch.tensor(ids != 0),
            output_hidden_states=True,
        ).hidden_states
    model = build_transformer_model(checkpoint_path=folder)
    return model, (ids, seg), [s.numpy() for s in states[1:]]


def test_every_block_of_a_shared_layer(albert):
    model, (ids, seg), expected = albert
    blocks = layer_outputs(model, "Transformer-FeedForward-Norm")
    assert len(blocks) == LAYERS and blocks[-1] is model.output
    outputs = keras.Model(model.inputs, blocks)([ids, seg], training=False)
    for i, (ours, ref) in enumerate(zip(outputs, expected)):
        assert_close(to_numpy(ours), ref, ids != 0, what=f"block {i}")
    # the last blocks differ (random weights): the accessor is not returning one of them
    assert np.abs(expected[0] - expected[-1]).max() > 0.1
    # Keras 3's rule: .output of a layer called several times is the first call's output
    first = keras.Model(model.inputs, model.get_layer("Transformer-FeedForward-Norm").output)
    assert_close(to_numpy(first([ids, seg], training=False)), expected[0], ids != 0)


def test_errors_and_single_calls(albert):
    model = albert[0]
    assert layer_outputs(model, "Embedding-Norm") == [model.get_layer("Embedding-Norm").output]
    with pytest.raises(ValueError, match="Transformer-FeedForward-Norm"):
        layer_outputs(model, "Transformer-0-FeedForward-Norm")
    with pytest.raises(TypeError, match="functional"):
        layer_outputs(keras.layers.Dense(2), "x")
