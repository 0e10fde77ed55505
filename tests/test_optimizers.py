"""Optimizer tricks against NumPy and against Keras' own optimizers.

Each one is also run through `model.fit` and through `.keras` save / load.
"""

import json

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.optimizers import (
    Lookahead,
    ParameterWiseLR,
    PiecewiseLinearSchedule,
    exclude_weight_decay,
    layerwise_lr_decay,
    piecewise_linear,
)
from kerasformers.training import ema_weights
from tests.utils import single_thread_torch  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def numpy(values):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in values]


def two_layer_model(seed=0):
    """x (3) -> Dense 'hidden' (4) -> LayerNorm 'hidden-Norm' -> Dense 'head' (2)."""
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="hidden")(inputs)
    x = keras.layers.LayerNormalization(name="hidden-Norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    rng = np.random.RandomState(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    return model


def regression_data(n=8, seed=1):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def fake_grads(variables, steps, seed=2):
    rng = np.random.RandomState(seed)
    return [
        [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in variables]
        for _ in range(steps)
    ]


# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize(
    "schedule, from_zero",
    [
        ({1000: 1, 10000: 0.1}, True),
        ({0: 0.2, 10: 1.0, 30: 0.5, 50: 0.0}, True),
        ({5: 1.0, 15: 0.25}, False),
        ({7: 0.3}, True),
    ],
)
def test_piecewise_linear_is_numpy_interp(schedule, from_zero):
    points = sorted(schedule.items())
    if from_zero and points[0][0] != 0:
        points = [(0, 0.0)] + points
    steps = np.array(
        [
            0,
            1,
            3,
            5,
            7,
            9,
            10,
            12,
            29,
            30,
            31,
            49,
            50,
            51,
            500,
            999,
            1000,
            1001,
            5500,
            9999,
            10000,
            20000,
        ]
    )
    got = keras.ops.convert_to_numpy(piecewise_linear(steps, schedule, from_zero))
    want = np.interp(steps, [p[0] for p in points], [p[1] for p in points])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_piecewise_linear_schedule_config_round_trip():
    schedule = PiecewiseLinearSchedule(2e-5, {1000: 1, 10000: 0.1})
    config = json.loads(json.dumps(keras.optimizers.schedules.serialize(schedule)))
    restored = keras.optimizers.schedules.deserialize(config)
    assert isinstance(restored, PiecewiseLinearSchedule)
    assert restored.get_config() == schedule.get_config()
    assert restored.schedule == {1000: 1.0, 10000: 0.1}
    steps = np.array([0, 250, 1000, 5500, 10000, 50000])
    want = 2e-5 * np.interp(steps, [0, 1000, 10000], [0, 1, 0.1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(steps)), want, rtol=1e-6)


def test_piecewise_linear_schedule_drives_sgd_in_fit():
    """w_t = w_{t-1} - lr_t * g_t with lr_t read at iteration t - 1 (0 at the first step)."""
    x, y = regression_data()
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inputs))
    kernel = np.random.RandomState(0).normal(size=(3, 2)).astype("float32")
    model.set_weights([kernel])
    schedule = {2: 1.0, 4: 0.5}
    model.compile(keras.optimizers.SGD(PiecewiseLinearSchedule(0.1, schedule)), "mse")
    model.fit(x, y, batch_size=len(x), epochs=6, shuffle=False, verbose=0)
    w = kernel.astype("float64")
    for t in range(6):
        grad = 2 * x.T @ (x @ w - y) / y.size
        w = w - 0.1 * np.interp(t, [0, 2, 4], [0, 1, 0.5]) * grad
    np.testing.assert_allclose(model.get_weights()[0], w, atol=1e-6)


# ------------------------------------------------------------ parameter-wise
MULTIPLIERS = {"hidden": 0.1, "bias": 0.5}  # hidden/bias gets 0.05


def test_multipliers_are_products_of_matching_patterns():
    model = two_layer_model()
    optimizer = ParameterWiseLR(keras.optimizers.SGD(0.1), MULTIPLIERS)
    factors = {v.path: optimizer.multiplier(v) for v in model.trainable_variables}
    assert factors == {
        "hidden/kernel": 0.1,
        "hidden/bias": 0.05,
        "hidden-Norm/gamma": 0.1,
        "hidden-Norm/beta": 0.1,
        "head/kernel": 1.0,
        "head/bias": 0.5,
    }


def test_sgd_updates_are_scaled_by_the_multiplier():
    model = two_layer_model()
    variables = model.trainable_variables
    optimizer = ParameterWiseLR(keras.optimizers.SGD(0.1), MULTIPLIERS)
    for grads in fake_grads(variables, 2):
        before = numpy(variables)
        optimizer.apply(grads, variables)
        for v, old, new, g in zip(variables, before, numpy(variables), numpy(grads)):
            np.testing.assert_allclose(
                new, old - 0.1 * optimizer.multiplier(v) * g, rtol=1e-6, atol=1e-7
            )
    assert int(optimizer.iterations) == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: keras.optimizers.Adam(lr),
        lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.3),
        lambda lr: keras.optimizers.Lion(lr),
    ],
)
def test_each_group_equals_the_optimizer_run_with_a_scaled_learning_rate(make):
    """A variable with factor m moves exactly as `make(m * lr)` would move it alone."""
    model = two_layer_model()
    variables = model.trainable_variables
    initial = numpy(variables)
    steps = fake_grads(variables, 3)
    optimizer = ParameterWiseLR(make(1e-2), MULTIPLIERS)
    for grads in steps:
        optimizer.apply(grads, variables)
    for i, variable in enumerate(variables):
        reference = keras.Variable(initial[i])
        alone = make(1e-2 * optimizer.multiplier(variable))
        for grads in steps:
            alone.apply([grads[i]], [reference])
        np.testing.assert_allclose(
            numpy(variables)[i], numpy([reference])[0], rtol=1e-6, atol=1e-7, err_msg=variable.path
        )
        assert not np.allclose(numpy(variables)[i], initial[i])


def test_scaled_schedule_and_global_clipnorm():
    model = two_layer_model()
    variables = model.trainable_variables
    initial = numpy(variables)
    schedule = PiecewiseLinearSchedule(0.1, {2: 1.0})
    optimizer = ParameterWiseLR(keras.optimizers.SGD(schedule, global_clipnorm=1.0), MULTIPLIERS)
    steps = fake_grads(variables, 3)
    for grads in steps:
        optimizer.apply(grads, variables)
    want = [w.astype("float64") for w in initial]
    for t, grads in enumerate(map(numpy, steps)):
        norm = np.sqrt(sum(np.sum(g.astype("float64") ** 2) for g in grads))
        for i, (v, g) in enumerate(zip(variables, grads)):
            lr = 0.1 * np.interp(t, [0, 2], [0, 1]) * optimizer.multiplier(v)
            want[i] = want[i] - lr * g * min(1.0, 1.0 / norm)
    for got, expected in zip(numpy(variables), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_inside_parameter_wise_lr():
    model = two_layer_model()
    variables = model.trainable_variables
    initial = numpy(variables)
    optimizer = ParameterWiseLR(
        keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), MULTIPLIERS
    )
    steps = fake_grads(variables, 2)
    optimizer.apply(steps[0], variables)
    for got, want in zip(numpy(variables), initial):  # accumulated, not applied
        np.testing.assert_array_equal(got, want)
    optimizer.apply(steps[1], variables)
    assert int(optimizer.iterations) == 1
    for v, got, w0, g1, g2 in zip(variables, numpy(variables), initial, *map(numpy, steps)):
        np.testing.assert_allclose(
            got, w0 - 0.1 * optimizer.multiplier(v) * (g1 + g2) / 2, rtol=1e-6, atol=1e-7
        )


def test_learning_rate_setter_reaches_every_group():
    model = two_layer_model()
    optimizer = ParameterWiseLR(keras.optimizers.SGD(0.1), MULTIPLIERS)
    optimizer.build(model.trainable_variables)
    optimizer.learning_rate = 0.01
    assert np.isclose(float(optimizer.learning_rate), 0.01)
    variables = model.trainable_variables
    before = numpy(variables)
    grads = fake_grads(variables, 1)[0]
    optimizer.apply(grads, variables)
    for v, old, new, g in zip(variables, before, numpy(variables), numpy(grads)):
        np.testing.assert_allclose(
            new, old - 0.01 * optimizer.multiplier(v) * g, rtol=1e-6, atol=1e-7
        )


def test_parameter_wise_lr_in_fit_save_and_resume(tmp_path):
    """fit; save; load; one more step from both gives the same weights (state restored)."""
    x, y = regression_data()
    model = two_layer_model()
    frozen = {"hidden/kernel": 0.0}
    model.compile(ParameterWiseLR(keras.optimizers.Adam(1e-2), frozen), "mse")
    start = numpy(model.trainable_variables)
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    after = dict(zip([v.path for v in model.trainable_variables], numpy(model.trainable_variables)))
    np.testing.assert_array_equal(after["hidden/kernel"], start[0])  # factor 0: frozen
    assert not np.allclose(after["head/kernel"], start[4])

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, ParameterWiseLR)
    assert restored.optimizer.multipliers == frozen
    for got, want in zip(numpy(restored.optimizer.variables), numpy(model.optimizer.variables)):
        np.testing.assert_array_equal(got, want)
    model.train_on_batch(x, y)
    restored.train_on_batch(x, y)
    for got, want in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-7)


def test_parameter_wise_lr_keeps_an_ema_per_group():
    x, y = regression_data()
    model = two_layer_model()
    momentum = 0.5
    model.compile(
        ParameterWiseLR(
            keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=momentum), MULTIPLIERS
        ),
        "mse",
    )
    average = None
    for _ in range(3):
        model.train_on_batch(x, y)
        weights = model.get_weights()
        average = (
            weights
            if average is None
            else [momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
        )
    with ema_weights(model):
        for got, want in zip(model.get_weights(), average):
            np.testing.assert_allclose(got, want, atol=1e-6)
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_layerwise_lr_decay_on_bert():
    bert = build_transformer_model(
        None,
        model="bert",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        with_pool=True,
    )
    multipliers = layerwise_lr_decay(bert, 0.5)
    optimizer = ParameterWiseLR(keras.optimizers.AdamW(1e-3), multipliers)
    factors = {v.path: optimizer.multiplier(v) for v in bert.trainable_variables}
    assert factors["Embedding-Token/embeddings"] == 0.5**4
    assert factors["Embedding-Norm/gamma"] == 0.5**4
    assert factors["Transformer-0-MultiHeadSelfAttention/q_dense/kernel"] == 0.5**3
    assert factors["Transformer-1-FeedForward-Norm/gamma"] == 0.5**2
    assert factors["Transformer-2-FeedForward/o_dense/bias"] == 0.5
    assert factors["Pooler-Dense/kernel"] == 1.0
    with pytest.raises(ValueError, match="Block"):
        layerwise_lr_decay(bert, 0.5, layer_pattern=r"Block-(\d+)-")


# ------------------------------------------------------------------ lookahead
def numpy_lookahead_sgd(w, b, x, y, steps, lr, k, alpha, accumulate=1):
    """Lookahead(SGD) on mean((x w + b - y)^2), from the paper, float64."""
    w, b = w.astype("float64"), b.astype("float64")
    slow = [w.copy(), b.copy()]
    batch = len(x) // accumulate
    for t in range(steps):
        gw, gb = 0, 0
        for j in range(accumulate):
            xs, ys = x[j * batch : (j + 1) * batch], y[j * batch : (j + 1) * batch]
            residual = 2 * (xs @ w + b - ys) / ys.size
            gw, gb = gw + xs.T @ residual / accumulate, gb + residual.sum(0) / accumulate
        w, b = w - lr * gw, b - lr * gb
        if (t + 1) % k == 0:
            slow = [s + alpha * (f - s) for s, f in zip(slow, (w, b))]
            w, b = slow[0].copy(), slow[1].copy()
    return w, b


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lookahead_matches_numpy(accumulate):
    x, y = regression_data(8)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    rng = np.random.RandomState(0)
    w0, b0 = rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=2).astype("float32")
    model.set_weights([w0, b0])
    inner = keras.optimizers.SGD(
        0.1, gradient_accumulation_steps=accumulate if accumulate > 1 else None
    )
    model.compile(Lookahead(inner, steps_per_slow_update=3, slow_step_size=0.5), "mse")
    model.fit(x, y, batch_size=len(x) // accumulate, epochs=7, shuffle=False, verbose=0)
    w, b = numpy_lookahead_sgd(w0, b0, x, y, steps=7, lr=0.1, k=3, alpha=0.5, accumulate=accumulate)
    np.testing.assert_allclose(model.get_weights()[0], w, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], b, atol=1e-6)
    # and it is not plain SGD
    plain_w, _ = numpy_lookahead_sgd(
        w0, b0, x, y, steps=7, lr=0.1, k=100, alpha=0.5, accumulate=accumulate
    )
    assert not np.allclose(w, plain_w, atol=1e-3)
    assert int(model.optimizer.iterations) == 7


def test_lookahead_save_and_resume(tmp_path):
    x, y = regression_data()
    model = two_layer_model()
    model.compile(Lookahead(keras.optimizers.Adam(1e-2), 2, 0.8), "mse")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 4 steps
    model.train_on_batch(x, y)  # mid-period: fast and slow weights differ
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, Lookahead)
    assert (restored.optimizer.steps_per_slow_update, restored.optimizer.slow_step_size) == (2, 0.8)
    assert isinstance(restored.optimizer.inner_optimizer, keras.optimizers.Adam)
    for _ in range(2):  # crosses a slow update
        model.train_on_batch(x, y)
        restored.train_on_batch(x, y)
    for got, want in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-7)


# --------------------------------------------------------------- weight decay
def zero_loss(y_true, y_pred):
    """Zero gradients: Adam(W) then moves the weights by weight decay alone."""
    return 0.0 * keras.ops.mean(y_pred)


def test_keras_var_names_depend_on_the_backend():
    """Why exclude_weight_decay exists: Keras' var_names=['Norm'] searches variable.name,
    the short 'gamma' on JAX / PyTorch (nothing excluded) but 'hidden-Norm/gamma:0'
    on TensorFlow."""
    model = two_layer_model()
    optimizer = keras.optimizers.AdamW(0.1, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["Norm", "bias"])
    model.compile(optimizer, zero_loss)
    before = numpy(model.trainable_variables)
    model.train_on_batch(*regression_data())
    paths = [v.path for v in model.trainable_variables]
    decayed = {
        p
        for p, old, new in zip(paths, before, numpy(model.trainable_variables))
        if not np.array_equal(old, new)
    }
    if keras.backend.backend() == "tensorflow":
        assert decayed == {"hidden/kernel", "head/kernel"}
    else:
        assert decayed == {"hidden/kernel", "hidden-Norm/gamma", "hidden-Norm/beta", "head/kernel"}


@pytest.mark.parametrize("wrap", [None, "parameter_wise", "lookahead"])
def test_exclude_weight_decay_on_paths_in_fit(wrap):
    model = two_layer_model()
    lr, wd, steps = 0.1, 0.5, 3
    optimizer = keras.optimizers.AdamW(lr, weight_decay=wd)
    if wrap == "parameter_wise":
        optimizer = ParameterWiseLR(optimizer, {"head": 0.5})
    elif wrap == "lookahead":
        optimizer = Lookahead(optimizer, steps_per_slow_update=100)
    excluded = exclude_weight_decay(optimizer, model, ["Norm", "bias"])
    assert [v.path for v in excluded] == [
        "hidden/bias",
        "hidden-Norm/gamma",
        "hidden-Norm/beta",
        "head/bias",
    ]
    model.compile(optimizer, zero_loss)
    before = numpy(model.trainable_variables)
    x, y = regression_data()
    model.fit(x, y, batch_size=len(x), epochs=steps, verbose=0)
    for v, old, new in zip(model.trainable_variables, before, numpy(model.trainable_variables)):
        if v.path in {"hidden/kernel", "head/kernel"}:
            factor = 0.5 if (wrap == "parameter_wise" and v.path == "head/kernel") else 1.0
            np.testing.assert_allclose(new, old * (1 - lr * factor * wd) ** steps, rtol=1e-5)
        else:
            np.testing.assert_array_equal(new, old)


def test_exclusions_are_reapplied_after_loading(tmp_path):
    """Exclusions are not saved: after load_model, exclude_weight_decay again."""
    model = two_layer_model()
    optimizer = ParameterWiseLR(keras.optimizers.AdamW(0.1, weight_decay=0.5), {"head": 0.5})
    exclude_weight_decay(optimizer, model, ["Norm", "bias"])
    model.compile(optimizer, zero_loss)
    x, y = regression_data()
    model.train_on_batch(x, y)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, custom_objects={"zero_loss": zero_loss})
    exclude_weight_decay(restored.optimizer, restored, ["Norm", "bias"])
    before = numpy(restored.trainable_variables)
    restored.train_on_batch(x, y)
    for v, old, new in zip(
        restored.trainable_variables, before, numpy(restored.trainable_variables)
    ):
        if v.path.endswith("kernel"):
            factor = 0.5 if v.path == "head/kernel" else 1.0
            np.testing.assert_allclose(new, old * (1 - 0.1 * factor * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(new, old)
