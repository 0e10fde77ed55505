"""Conditional LayerNorm through the builder (bert4keras' `layer_norm_cond`).

`build_transformer_model(..., layer_norm_cond=c, additional_input_layers=c_in)`
makes every LayerNorm of the model `LayerNormalization(conditional=True)` on
`[x, c]` and appends `c_in` to the model's inputs, as bert4keras 0.11.5 did
(`task_conditional_language_model.py`: a class-label Embedding as condition).
Checked: a NumPy reference, equality with the unconditional model at init
(zero-initialised `beta_dense`/`gamma_dense`), the condition mattering once
those weights are set, the weight names, `fit` on the backend, `.keras` files
and clear refusals.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.layers import LayerNormalization
from tests.utils import randomize_keras, single_thread_torch, to_numpy  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
)
NUM_CLASSES, COND = 3, 8

#: every model key with LayerNorms (RoFormerV2's norm has no parameters: refused)
MODELS = [
    "bert",
    "roberta",
    "albert",
    "albert_unshared",
    "nezha",
    "roformer",
    "electra",
    "gpt",
    "gpt2",
    "gpt2_ml",
    "t5.1.1",
    "t5.1.0_encoder",
    "mt5.1.1_decoder",
]


def condition():
    """bert4keras' conditional LM: a class label -> Embedding -> (batch, COND)."""
    c_in = keras.Input(shape=(1,), name="Input-Label")
    c = keras.layers.Embedding(NUM_CLASSES, COND, name="Label-Embedding")(c_in)
    c = keras.layers.Reshape((COND,), name="Label-Reshape")(c)
    return c_in, c


def build(model="bert", cond=True, **kwargs):
    if cond:
        c_in, c = condition()
        kwargs.update(layer_norm_cond=c, additional_input_layers=c_in)
    return build_transformer_model(None, model=model, **{**SMALL, **kwargs})


def inputs_for(model, seed=0, labels=(0, 1, 2)):
    """Random inputs for every input of `model`; the label input gets `labels`."""
    rng = np.random.RandomState(seed)
    out = []
    for t in model.inputs:
        shape = (len(labels),) + tuple(d or 5 for d in t.shape[1:])
        if t.name == "Input-Label":
            out.append(np.asarray(labels, "int32").reshape(shape))
        elif "Context" in t.name:
            out.append(rng.normal(size=shape).astype("float32"))
        elif "Segment" in t.name:
            out.append(rng.randint(0, 2, shape).astype("int32"))
        else:
            out.append(rng.randint(3, SMALL["vocab_size"], shape).astype("int32"))
    return out


def norm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, LayerNormalization)]


def numpy_conditional_norm(x, cond, w, zero_mean, hidden_act):
    """bert4keras' conditional LayerNorm in NumPy (float64)."""
    x = x.astype("float64")
    if zero_mean:
        x = x - x.mean(-1, keepdims=True)
    x = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
    c = cond @ w["hidden_dense/kernel"]
    c = np.maximum(c, 0) if hidden_act == "relu" else c
    c = c[:, None, :]  # align to (batch, 1, units) as bert4keras' `align`
    y = x * (w["gamma"] + c @ w["gamma_dense/kernel"])
    if zero_mean:
        y = y + w["beta"] + c @ w["beta_dense/kernel"]
    return y


@pytest.mark.parametrize("zero_mean", [True, False], ids=["layer_norm", "rms_norm_t5"])
def test_numpy_reference(zero_mean):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    cond = rng.normal(size=(2, 4)).astype("float32")
    layer = LayerNormalization(
        conditional=True,
        zero_mean=zero_mean,
        offset=zero_mean,
        hidden_units=3,
        hidden_activation="relu",
        epsilon=1e-6,
    )
    layer.build([x.shape, cond.shape])
    weights = {}
    for v in layer.weights:
        key = "/".join(v.path.split("/")[1:])
        weights[key] = rng.normal(size=v.shape).astype("float32")
        v.assign(weights[key])
    expected = numpy_conditional_norm(x, cond, weights, zero_mean, "relu")
    np.testing.assert_allclose(to_numpy(layer([x, cond])), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_key", MODELS)
def test_starts_as_the_unconditional_model_then_depends_on_the_condition(model_key):
    plain = randomize_keras(build(model_key, cond=False))  # std 0.2: wrong wiring shows
    model = build(model_key, layer_norm_cond_hidden_size=4, layer_norm_cond_hidden_act="relu")
    assert [t.name for t in model.inputs] == [t.name for t in plain.inputs] + ["Input-Label"]
    norms = norm_layers(model)
    assert norms and all(layer.conditional for layer in norms)
    assert {layer.name for layer in norms} == {layer.name for layer in norm_layers(plain)}

    ours = {w.path: w for w in model.weights}
    for w in plain.weights:  # same paths: the plain model's weights are a subset
        ours[w.path].assign(np.array(keras.ops.convert_to_numpy(w)))
    x = inputs_for(model)
    expected = to_numpy(plain.predict(x[:-1] if len(x) > 2 else x[0], verbose=0))
    got = to_numpy(model.predict(x, verbose=0))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    rng = np.random.RandomState(1)
    plain_paths = {w.path for w in plain.weights}
    for w in model.weights:  # the condition path: label embedding, hidden/beta/gamma dense
        if w.path not in plain_paths:
            w.assign(0.5 * rng.normal(size=w.shape).astype("float32"))
    x_same = inputs_for(model, labels=(0, 0, 0))
    x_other = inputs_for(model, labels=(0, 1, 2))
    out_same = to_numpy(model.predict(x_same, verbose=0))
    out_other = to_numpy(model.predict(x_other, verbose=0))
    np.testing.assert_allclose(out_same[0], out_other[0], rtol=1e-5, atol=1e-6)
    assert np.abs(out_same[1:] - out_other[1:]).max() > 1e-3


def test_weight_names_as_bert4keras():
    model = build("bert", with_mlm=True, layer_norm_cond_hidden_size=4)
    paths = {w.path for w in model.weights}
    for norm in (
        "Embedding-Norm",
        "Transformer-0-MultiHeadSelfAttention-Norm",
        "Transformer-1-FeedForward-Norm",
        "MLM-Norm",
    ):
        for weight in ("gamma", "beta", "gamma_dense/kernel", "beta_dense/kernel"):
            assert f"{norm}/{weight}" in paths
        assert f"{norm}/hidden_dense/kernel" in paths
    # T5's norms are scale-only (RMS): gamma_dense only, as bert4keras' T5 (offset=False)
    t5 = build("t5.1.1")
    t5_paths = {w.path for w in t5.weights}
    assert "Encoder-Transformer-0-MultiHeadSelfAttention-Norm/gamma_dense/kernel" in t5_paths
    assert "Decoder-Output-Norm/gamma_dense/kernel" in t5_paths
    assert not any("beta_dense" in p or "hidden_dense" in p for p in t5_paths)


def test_conditional_language_model_trains_in_fit():
    """task_conditional_language_model.py: BERT as an LM conditioned on a class label."""
    keras.utils.set_random_seed(0)
    model = build("bert", application="lm", layer_norm_cond_hidden_size=4)
    ids, seg, labels = inputs_for(model)
    y = np.roll(ids, -1, axis=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    history = model.fit([ids, seg, labels], y, batch_size=3, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    gamma_dense = model.get_layer("Transformer-0-FeedForward-Norm").gamma_dense.kernel
    assert np.abs(to_numpy(gamma_dense)).max() > 0  # the condition path was trained


def test_keras_file_round_trip(tmp_path):
    model = build("gpt2", layer_norm_cond_hidden_size=4)
    rng = np.random.RandomState(2)
    for w in model.weights:
        if "_dense/kernel" in w.path:
            w.assign(0.3 * rng.normal(size=w.shape).astype("float32"))
    x = inputs_for(model)
    path = str(tmp_path / "conditional.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [t.name for t in loaded.inputs] == ["Input-Token", "Input-Label"]
    assert all(layer.conditional for layer in norm_layers(loaded))
    np.testing.assert_allclose(
        to_numpy(loaded.predict(x, verbose=0)), to_numpy(model.predict(x, verbose=0)), atol=1e-6
    )


def test_refusals():
    with pytest.raises(ValueError, match="roformer|RoFormerV2.*no scale or offset"):
        build("roformer_v2")
    with pytest.raises(TypeError, match="layer_norm_cond must be a Keras tensor"):
        build_transformer_model(None, layer_norm_cond=np.zeros((1, 4)), **SMALL)
    with pytest.raises(ValueError, match="layer_norm_cond_hidden_size needs layer_norm_cond"):
        build_transformer_model(None, layer_norm_cond_hidden_size=4, **SMALL)
    with pytest.raises(TypeError, match="additional_input_layers must be Keras inputs"):
        build_transformer_model(None, additional_input_layers="x", **SMALL)
    with pytest.raises(ValueError, match="must be a positive integer"):
        build(layer_norm_cond_hidden_size=0)
    with pytest.raises(TypeError, match="'attention_caches' \\(bert4keras\\) is not supported"):
        build_transformer_model(None, attention_caches={}, **SMALL)
    gpt = build("gpt2", return_keras_model=False)
    with pytest.raises(ValueError, match="conditional LayerNorm.*AutoRegressiveDecoder"):
        gpt.init_cache(batch_size=1, max_length=4)
    t5 = build("t5.1.1", return_keras_model=False)
    with pytest.raises(ValueError, match="conditional LayerNorm"):
        t5.init_cache(np.array([[3, 4]]), max_length=4)
