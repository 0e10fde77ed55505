"""FGM, gradient penalty, EMA swap and gradient accumulation against NumPy.

The exact tests use a model whose gradients have a closed form: token ids ->
Embedding-Token -> mean over positions -> Dense logits -> softmax CE. Its
loss, embedding gradient and parameter gradients are written out in float64
NumPy below; FGM and the penalty are then checked step by step.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.training import (
    AdversarialModel,
    adversarial_training,
    ema_weights,
    gradient_penalty,
)
from tests.utils import single_thread_torch  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread_torch")

V, D, C = 7, 4, 3  # vocabulary, embedding size, classes
IDS = np.array([[1, 2, 2, 5], [3, 1, 1, 1], [6, 0, 4, 2]], "int32")  # repeated tokens
LABELS = np.array([0, 2, 1], "int32")


# ------------------------------------------------------------- closed form
def np_forward(E, W, b, ids=IDS, y=LABELS):
    """Loss and its gradients (embedding matrix, kernel, bias), float64."""
    E, W, b = (np.asarray(t, "float64") for t in (E, W, b))
    n = ids.shape[1]
    h = E[ids].mean(axis=1)
    z = h @ W + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    dz = (p - np.eye(W.shape[1])[y]) / len(y)
    dh = dz @ W.T
    dE = np.zeros_like(E)
    np.add.at(dE, ids.reshape(-1), np.repeat(dh[:, None, :] / n, n, axis=1).reshape(-1, E.shape[1]))
    return loss, dE, h.T @ dz, dz.sum(axis=0)


def np_penalised_loss(E, W, b, epsilon):
    loss, dE, _, _ = np_forward(E, W, b)
    return loss + 0.5 * epsilon * np.sum(dE**2)


def numeric_grad(f, params, h=1e-6):
    """Central differences of f(*params) with respect to every entry, float64."""
    grads = []
    for i, p in enumerate(params):
        g = np.zeros_like(p, dtype="float64")
        for idx in np.ndindex(p.shape):
            up = [q.astype("float64").copy() for q in params]
            down = [q.astype("float64").copy() for q in params]
            up[i][idx] += h
            down[i][idx] -= h
            g[idx] = (f(*up) - f(*down)) / (2 * h)
        grads.append(g)
    return grads


def tiny_model(wrap, epsilon, learning_rate):
    """The closed-form model wrapped by `wrap`, compiled with SGD; returns (model, E, W, b)."""
    rng = np.random.RandomState(0)
    ids = keras.Input((IDS.shape[1],), dtype="int32")
    x = keras.layers.Embedding(V, D, name="Embedding-Token")(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    logits = keras.layers.Dense(C, name="head")(x)
    model = wrap(keras.Model(ids, logits), "Embedding-Token", epsilon)
    values = [rng.normal(size=(V, D)), rng.normal(size=(D, C)), 0.1 * rng.normal(size=C)]
    values = [v.astype("float32") for v in values]
    model.set_weights(values)
    model.compile(
        keras.optimizers.SGD(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, values


def test_fgm_perturbs_by_epsilon_normalised_gradient():
    """Logged loss = loss at E + eps g/|g|; the SGD update = minus the gradient there."""
    epsilon = 0.7
    model, (E, W, b) = tiny_model(adversarial_training, epsilon, learning_rate=1.0)
    plain, dE, _, _ = np_forward(E, W, b)
    delta = epsilon * dE / (np.linalg.norm(dE) + 1e-8)
    perturbed, dE_p, dW_p, db_p = np_forward(E + delta, W, b)

    logged = model.train_on_batch(IDS, LABELS)
    np.testing.assert_allclose(logged, perturbed, rtol=1e-5)
    assert perturbed > plain + 0.1  # the adversarial direction raises the loss
    E1, W1, b1 = model.get_weights()
    # the step is taken from the clean matrix, with the gradient at the perturbed one
    np.testing.assert_allclose(E1, E - dE_p, atol=1e-5)
    np.testing.assert_allclose(W1, W - dW_p, atol=1e-5)
    np.testing.assert_allclose(b1, b - db_p, atol=1e-5)


def test_fgm_loss_increase_is_epsilon_times_gradient_norm():
    """To first order the perturbed loss is loss + eps |g| (the steepest ascent)."""
    epsilon = 1e-3
    model, (E, W, b) = tiny_model(adversarial_training, epsilon, learning_rate=0.0)
    plain, dE, _, _ = np_forward(E, W, b)
    logged = model.train_on_batch(IDS, LABELS)
    increase = (logged - plain) / (epsilon * np.linalg.norm(dE))
    assert abs(increase - 1) < 0.02, increase


def test_gradient_penalty_loss_and_gradient():
    """Logged loss = loss + eps/2 |dL/dE|^2; the SGD step = minus its gradient."""
    epsilon = 2.0
    model, (E, W, b) = tiny_model(gradient_penalty, epsilon, learning_rate=1.0)
    plain, dE, _, _ = np_forward(E, W, b)
    expected = plain + 0.5 * epsilon * np.sum(dE**2)
    grads = numeric_grad(lambda *p: np_penalised_loss(*p, epsilon), [E, W, b])

    logged = model.train_on_batch(IDS, LABELS)
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    assert 0.5 * epsilon * np.sum(dE**2) > 0.01  # the penalty term matters here
    for new, old, grad in zip(model.get_weights(), [E, W, b], grads):
        np.testing.assert_allclose(new, old - grad, atol=2e-5)
    # and differs from the unpenalised step
    assert not np.allclose(model.get_weights()[1], W - np_forward(E, W, b)[2], atol=1e-4)


def test_evaluation_is_the_plain_loss():
    model, (E, W, b) = tiny_model(adversarial_training, 0.7, learning_rate=0.0)
    np.testing.assert_allclose(
        model.evaluate(IDS, LABELS, verbose=0), np_forward(E, W, b)[0], rtol=1e-5
    )


def test_wrong_names_are_reported():
    ids = keras.Input((4,), dtype="int32")
    model = keras.Model(ids, keras.layers.Embedding(5, 2, name="Embedding-Token")(ids))
    with pytest.raises(ValueError, match="Embedding-Nope"):
        adversarial_training(model, "Embedding-Nope")
    with pytest.raises(ValueError, match="method"):
        AdversarialModel(model.inputs, model.outputs, method="pgd")


# --------------------------------------- the original's call: in place, any order
def fitted_weights(order, wrap=adversarial_training, epochs=3):
    """Weights of the closed-form model after `fit` (Adam, fixed data and initial weights).

    order: None (plain), 'before' (wrap, then compile), 'after' (bert4keras:
    compile, then wrap, the return value ignored) or 'after_fit' (a plain
    `fit` first, then wrap and fit again).
    """
    rng = np.random.RandomState(0)
    ids = keras.Input((IDS.shape[1],), dtype="int32")
    x = keras.layers.Embedding(V, D, name="Embedding-Token")(ids)
    logits = keras.layers.Dense(C, name="head")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(ids, logits)
    model.set_weights(
        [
            rng.normal(size=(V, D)).astype("float32"),
            rng.normal(size=(D, C)).astype("float32"),
            np.zeros(C, "float32"),
        ]
    )

    def compile_():
        model.compile(
            keras.optimizers.Adam(0.05),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )

    if order == "before":
        wrap(model, "Embedding-Token", 0.5)
    compile_()
    if order == "after_fit":
        model.fit(IDS, LABELS, epochs=1, shuffle=False, verbose=0)
    if order in ("after", "after_fit"):
        wrap(model, "Embedding-Token", 0.5)  # the original's line, result unused
    history = model.fit(IDS, LABELS, batch_size=3, epochs=epochs, shuffle=False, verbose=0)
    return model, [w.copy() for w in model.get_weights()], history.history["loss"]


@pytest.mark.parametrize("wrap", [adversarial_training, gradient_penalty])
def test_in_place_before_or_after_compile_changes_fit(wrap):
    """Called before or after compile, the very same model trains with FGM / the penalty:
    its weights differ from plain training's, and both call orders agree."""
    _, plain, plain_loss = fitted_weights(None)
    model, before, before_loss = fitted_weights("before", wrap)
    assert isinstance(model, AdversarialModel)
    model, after, after_loss = fitted_weights("after", wrap)
    assert isinstance(model, AdversarialModel) and model.epsilon == 0.5
    for p, b, a in zip(plain, before, after):
        assert np.abs(p - b).max() > 1e-3
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert before_loss[0] > plain_loss[0]  # the logged loss is the perturbed / penalised one
    np.testing.assert_allclose(after_loss, before_loss, rtol=1e-5)


def test_in_place_after_an_earlier_fit_rebuilds_the_train_step():
    """A model fitted once, then made adversarial, trains adversarially from then on."""
    _, plain, _ = fitted_weights(None, epochs=4)  # 1 + 3 epochs, all plain
    _, mixed, losses = fitted_weights("after_fit")
    assert any(np.abs(p - m).max() > 1e-3 for p, m in zip(plain, mixed))


def test_in_place_keeps_the_compiled_state_and_returns_the_model():
    model, _, _ = fitted_weights(None, epochs=1)
    optimizer, loss = model.optimizer, model.loss
    assert adversarial_training(model, "Embedding-Token", 0.3) is model
    assert model.optimizer is optimizer and model.loss is loss and model.compiled
    assert gradient_penalty(model, "Embedding-Token", 0.2) is model  # switch the method
    assert (model.method, model.epsilon) == ("gradient_penalty", 0.2)


def test_non_functional_models_are_refused_with_the_fix():
    model = keras.Sequential(
        [keras.Input((4,), dtype="int32"), keras.layers.Embedding(5, 2, name="Embedding-Token")]
    )
    with pytest.raises(TypeError, match=r"keras.Model\(model.inputs, model.outputs\)"):
        adversarial_training(model, "Embedding-Token", 0.5)


# ------------------------------------------------------------ tiny BERT task
def toy_task(n=96, length=6, seed=0):
    """Class 1 sentences use tokens 3..25, class 0 tokens 26..49 ([CLS] = 2 first)."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    ids = np.where(
        y[:, None] == 1, rng.randint(3, 26, (n, length)), rng.randint(26, 50, (n, length))
    ).astype("int32")
    ids[:, 0] = 2
    return [ids, np.zeros_like(ids)], y


@pytest.mark.parametrize("wrap", [adversarial_training, gradient_penalty])
def test_tiny_bert_still_learns(wrap, tmp_path):
    """A toy separable task still reaches ~100% accuracy with the perturbed training.

    (The logged accuracy is measured on the perturbed / penalised forward pass.)
    """
    keras.utils.set_random_seed(0)
    bert = build_transformer_model(
        None,
        model="bert",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    pooled = keras.layers.GlobalAveragePooling1D()(bert.output)  # masked mean
    probs = keras.layers.Dense(2, activation="softmax")(pooled)
    model = wrap(keras.Model(bert.inputs, probs), "Embedding-Token", 0.1)
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    x, y = toy_task()
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history
    assert history["accuracy"][-1] >= 0.95, history

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, AdversarialModel)
    assert (restored.method, restored.epsilon, restored.embedding_name) == (
        model.method,
        0.1,
        "Embedding-Token",
    )
    for got, want in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------- accumulation and EMA recipes
def linear_model(seed=0):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    rng = np.random.RandomState(seed)
    model.set_weights(
        [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=2).astype("float32")]
    )
    return model


def regression_data(n, seed=1):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def test_gradient_accumulation_equals_one_big_batch():
    """k steps of batch b with gradient_accumulation_steps=k == one step of batch k*b."""
    k, b = 4, 3
    x, y = regression_data(2 * k * b)
    accumulated, big = linear_model(), linear_model()
    accumulated.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=k), "mse")
    big.compile(keras.optimizers.SGD(0.1), "mse")
    accumulated.fit(x, y, batch_size=b, shuffle=False, epochs=1, verbose=0)
    big.fit(x, y, batch_size=k * b, shuffle=False, epochs=1, verbose=0)
    assert int(accumulated.optimizer.iterations) == 2  # two real updates
    start = linear_model().get_weights()
    for acc, one, w0 in zip(accumulated.get_weights(), big.get_weights(), start):
        np.testing.assert_allclose(acc, one, atol=1e-6)
        assert not np.allclose(acc, w0)


def test_ema_weights_swap_in_the_average_and_restore_exactly():
    momentum = 0.8
    model = linear_model()
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=momentum), "mse")
    x, y = regression_data(4)
    average = None
    for _ in range(5):
        model.train_on_batch(x, y)
        weights = model.get_weights()
        # Keras starts the average at the weights after the first step
        average = (
            weights
            if average is None
            else [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
        )
    trained = model.get_weights()
    with ema_weights(model) as swapped:
        assert swapped is model
        for got, want in zip(model.get_weights(), average):
            np.testing.assert_allclose(got, want, atol=1e-6)
        assert not np.allclose(model.get_weights()[0], trained[0], atol=1e-3)
        ema_loss = model.evaluate(x, y, verbose=0)
    for got, want in zip(model.get_weights(), trained):
        np.testing.assert_array_equal(got, want)
    assert ema_loss != model.evaluate(x, y, verbose=0)


def test_ema_weights_needs_use_ema():
    model = linear_model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="use_ema"):
        with ema_weights(model):
            pass


def test_ema_weights_in_a_callback_during_fit():
    """bert4keras' Evaluator pattern: evaluate with the averages at each epoch end."""
    model = linear_model()
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
    model.compile(optimizer, "mse")
    x, y = regression_data(8)
    seen = []

    class Evaluator(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raw = self.model.get_weights()
            averages = [v for v in optimizer.variables if "average" in v.path]
            with ema_weights(self.model):
                swapped = self.model.get_weights()
                seen.append(self.model.evaluate(x, y, verbose=0))
            for got, want in zip(swapped, averages):
                np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(want))
            for got, want in zip(self.model.get_weights(), raw):
                np.testing.assert_array_equal(got, want)

    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[Evaluator()])
    assert len(seen) == 3 and history.history["loss"][-1] < history.history["loss"][0]
