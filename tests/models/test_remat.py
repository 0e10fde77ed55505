"""Gradient checkpointing: `build_transformer_model(..., remat=True)`.

The same weights give the same loss gradients (1e-5) with and without it, on
every backend; the attention and feed-forward layers really go through
`keras.remat`; the option survives `get_config` / `.keras` round trips.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.layers import FeedForward, MultiHeadAttention
from tests.utils import BACKEND, batch, randomize_keras, single_thread_torch  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
)

# Each case exercises another way arguments reach the rematerialised layers: a
# string p_bias ('rotary', 't5_relative', which jax.checkpoint refuses as an
# argument), a trainable position bias passed by keyword (tf.recompute_grad
# drops keyword gradients), RealFormer's residual scores (list output, bias
# input), ALBERT's block called twice, T5's cross-attention and gated FFN.
CASES = {
    "bert": dict(model="bert", with_mlm="linear"),
    "bert-realformer": dict(model="bert", residual_attention_scores=True),
    "albert": dict(model="albert", embedding_size=8),
    "roformer-unilm": dict(model="roformer", application="unilm"),
    "t5.1.1": dict(model="t5.1.1", with_lm="linear"),
}


def build(case, **kwargs):
    return build_transformer_model(None, **SMALL, **CASES[case], **kwargs)


def model_inputs(model):
    ids, seg = batch(vocab_size=SMALL["vocab_size"], lengths=(7, 5, 2))
    names = [t.name for t in model.inputs]
    return [seg if "Segment" in n else ids for n in names]


def loss_fn(outputs):
    """A loss that reaches every output and position (gradients flow everywhere)."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return sum(keras.ops.mean(keras.ops.square(keras.ops.cast(o, "float32"))) for o in outputs)


def gradients(model, inputs):
    """{variable path: d loss / d variable} for the trainable variables, any backend."""
    variables = model.trainable_variables
    if BACKEND == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def f(trainable):
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=True)
            return loss_fn(outputs)

        grads = jax.grad(f)([v.value for v in variables])
    elif BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss_fn(model(inputs, training=True)).backward()
        grads = [v.value.grad for v in variables]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(inputs, training=True))
        grads = [
            tf.convert_to_tensor(g) if g is not None else None
            for g in tape.gradient(loss, variables)
        ]
    missing = [v.path for v, g in zip(variables, grads) if g is None]
    assert not missing, f"no gradient for {missing}"
    return {v.path: np.asarray(keras.ops.convert_to_numpy(g)) for v, g in zip(variables, grads)}


@pytest.fixture
def remat_calls(monkeypatch):
    """Count the functions handed to keras.remat."""
    calls = []
    original = keras.remat

    def counting(f):
        calls.append(f)
        return original(f)

    monkeypatch.setattr(keras, "remat", counting)
    return calls


def remat_layers(model):
    return [l for l in model.layers if isinstance(l, (MultiHeadAttention, FeedForward))]


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_equal_with_and_without_remat(case, remat_calls):
    plain = randomize_keras(build(case))
    remat = build(case, remat=True)
    remat.set_weights(plain.get_weights())
    x = model_inputs(plain)
    expected = gradients(plain, x)
    assert not remat_calls
    got = gradients(remat, x)
    assert remat_calls, "remat=True did not rematerialise anything"
    assert got.keys() == expected.keys()
    for path, g in expected.items():
        assert np.abs(g).max() > 0 or "Pooler" in path, f"{case}: zero gradient for {path}"
        np.testing.assert_allclose(
            got[path], g, rtol=1e-5, atol=1e-5, err_msg=f"{case} {path} ({BACKEND})"
        )
    out_plain, out_remat = plain(x), remat(x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out_remat[-1] if isinstance(out_remat, list) else out_remat),
        keras.ops.convert_to_numpy(out_plain[-1] if isinstance(out_plain, list) else out_plain),
        atol=1e-6,
    )


def test_every_attention_and_feed_forward_layer_is_rematerialised(remat_calls):
    model = build("t5.1.1", remat=True)
    layers = remat_layers(model)
    assert len(layers) == 2 * 2 + 2 * 3  # encoder: att + ffn, decoder: self + cross + ffn
    assert all(l.remat for l in layers)
    assert not any(getattr(l, "remat", False) for l in model.layers if l not in layers)
    model(model_inputs(model))
    assert len(remat_calls) == len(layers)


def test_remat_is_off_by_default(remat_calls):
    model = build("bert")
    assert not any(l.remat for l in remat_layers(model))
    gradients(model, model_inputs(model))
    assert not remat_calls


def test_remat_round_trips_through_config_and_keras_file(tmp_path, remat_calls):
    model = randomize_keras(build("roformer-unilm", remat=True))
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    path = str(tmp_path / "remat.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = model_inputs(model)
    expected = gradients(model, x)
    for other in (clone, loaded):
        assert [l.remat for l in remat_layers(other)] == [True] * 4
        del remat_calls[:]
        got = gradients(other, x)
        assert len(remat_calls) == 4
        for p, g in expected.items():
            np.testing.assert_allclose(got[p], g, rtol=1e-5, atol=1e-5, err_msg=p)


def test_incremental_decoding_with_remat_matches_the_full_model():
    gpt = build_transformer_model(
        None, model="gpt2", **SMALL, final_activation="linear", remat=True, return_keras_model=False
    )
    ids = np.array([[5, 6, 7, 8]], "int32")
    full = keras.ops.convert_to_numpy(gpt.model([ids]))
    cache = gpt.init_cache(batch_size=1, max_length=4)
    first, cache = gpt.call_with_cache(ids[:, :3], cache)
    last, cache = gpt.call_with_cache(ids[:, 3:], cache)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(last)[0, 0], full[0, 3], atol=1e-5)


def test_fit_with_remat_equals_fit_without():
    """model.fit trains through the rematerialised layers (boolean masks and integer ids
    among the call arguments) and takes the same steps as without remat."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (8, 6))
    ids[:3, 4:] = 0  # padding: a boolean attention mask reaches every layer
    labels = rng.integers(0, 2, 8)
    losses = []
    for remat in (False, True):
        keras.utils.clear_session(free_memory=False)
        encoder = build_transformer_model(
            None,
            model="bert",
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            with_pool=True,
            remat=remat,
        )
        randomize_keras(encoder, seed=1)
        model = keras.Model(
            encoder.inputs,
            keras.layers.Dense(2, kernel_initializer="ones", name="classifier")(encoder.output),
        )
        model.compile(
            keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        history = model.fit(
            [ids, np.zeros_like(ids)], labels, epochs=3, batch_size=8, shuffle=False, verbose=0
        )
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert losses[0][-1] < losses[0][0]
