"""UniLM seq2seq mask semantics on every model that takes segment ids, by perturbation.

Row layout: source = segment 0 (positions 0-4), target = segment 1 (5-9).
* changing a target token never changes any source position's output, nor an
  earlier target position's output, but does change its own and later ones;
* changing a source token changes every source position (the source is
  bidirectional) and every target position.
"""

import numpy as np
import pytest

from kerasformers import build_transformer_model
from tests.utils import randomize_keras, single_thread_torch, to_numpy  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

MODELS = ["bert", "roberta", "albert", "albert_unshared", "nezha", "roformer", "roformer_v2", "gpt"]
V, N, SOURCE = 40, 10, 5


@pytest.mark.parametrize("model", MODELS)
def test_unilm_mask_by_perturbation(model):
    head = {"final_activation": "linear"} if model == "gpt" else {"with_mlm": "linear"}
    transformer = build_transformer_model(
        None,
        model=model,
        application="unilm",
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        return_keras_model=False,
        **head,
    )
    randomize_keras(transformer.model)
    base = np.random.RandomState(0).randint(3, V, N).astype("int32")
    rows = [base]
    for t in range(N):  # row t + 1: token t replaced by another real token
        row = base.copy()
        row[t] = 3 + (row[t] - 2) % (V - 3)
        rows.append(row)
    ids = np.stack(rows)
    segments = np.tile((np.arange(N) >= SOURCE).astype("int32"), (len(rows), 1))
    out = to_numpy(transformer.model([ids, segments], training=False))
    for t in range(N):
        delta = np.abs(out[t + 1] - out[0]).max(-1)  # per position
        # (unchanged: float noise only, ~1e-6 on TensorFlow's batched kernels; changed:
        # logits of std ~1 move by far more than 1e-3)
        if t < SOURCE:  # a source token: seen by the whole source and the whole target
            assert delta.min() > 1e-3, (t, delta)
        else:  # a target token: invisible to the source and to earlier target positions
            assert delta[:t].max() <= 2e-5, (t, delta)
            assert delta[t:].min() > 1e-3, (t, delta)
