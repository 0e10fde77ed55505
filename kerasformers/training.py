"""Training tricks: adversarial training and gradient penalty on the embedding, EMA swap.

bert4keras patched the Keras 2 train function; here they are a `keras.Model`
subclass with its own train step, for the functional models that
`build_transformer_model` returns, on JAX, PyTorch and TensorFlow alike:

* `adversarial_training(model, 'Embedding-Token', epsilon)` (FGM): each step
  takes g, the gradient of the loss with respect to the token-embedding
  matrix, adds `epsilon * g / ||g||` to the matrix, and trains on the loss of
  the perturbed model (the update is applied to the unperturbed matrix);
* `gradient_penalty(model, 'Embedding-Token', epsilon)`: trains on
  `loss + epsilon / 2 * ||g||^2` (Su Jianlin: to first order, FGM with a small
  epsilon is a gradient penalty on the input, so this regularises the same way
  without a second forward pass). Here g is the gradient with respect to the
  embedding matrix (rows of repeated tokens summed); bert4keras' example squared
  TensorFlow's per-occurrence rows, the same when no token repeats in a batch.

The logged `loss` is the one trained on (perturbed, or with the penalty).
Both work in place, as bert4keras' did: the functional `model` becomes an
`AdversarialModel` (the same object, returned too), before or after
`compile`, so the original's `model.compile(...)` then
`adversarial_training(model, 'Embedding-Token', 0.5)` then `model.fit(...)`
trains with FGM. It saves and loads like any functional model.

Gradient accumulation and EMA are Keras built-ins; the recipe:

    optimizer = keras.optimizers.AdamW(
        PiecewiseLinearSchedule(2e-5, {4 * 1000: 1}),  # schedules count micro-batches
        gradient_accumulation_steps=4,     # one update per 4 batches, their mean gradient
        use_ema=True, ema_momentum=0.999)
    model.compile(optimizer, loss)

    class Evaluator(keras.callbacks.Callback):  # bert4keras' apply_ema_weights /
        def on_epoch_end(self, epoch, logs=None):  # reset_old_weights
            with ema_weights(self.model):
                score = evaluate(self.model)   # ... or save the averaged weights
    model.fit(..., callbacks=[Evaluator()])

`keras.callbacks.SwapEMAWeights()` does the same around `validation_data`.
Note that Keras' `fit` ends with `optimizer.finalize_variable_values`: after
`fit` the model holds the averages, not the last raw weights. On JAX, Keras
3.15 then fails to train that model again ("donate the same buffer twice":
each weight shares its average's buffer) unless the weights get their own
first: `for v in model.trainable_variables: v.assign(ops.convert_to_numpy(v))`.

With a model from `build_transformer_model` (whose token embedding layer is
'Embedding-Token'): `model = keras.Model(bert.inputs, probs)`,
`adversarial_training(model, 'Embedding-Token', 0.5)`. The same on a hand-made model:

>>> import keras, numpy as np
>>> ids = keras.Input((6,), dtype="int32")
>>> x = keras.layers.Embedding(50, 8, name="Embedding-Token")(ids)
>>> probs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling1D()(x))
>>> model = keras.Model(ids, probs)
>>> model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
>>> _ = adversarial_training(model, "Embedding-Token", epsilon=0.5)  # in place, as bert4keras
>>> tokens = np.random.RandomState(0).randint(1, 50, (8, 6))
>>> history = model.fit(tokens, tokens[:, 0] % 2, verbose=0)
>>> sorted(history.history)
['loss']
"""

import contextlib

import keras
import numpy as np
from keras import ops

from kerasformers.saving import register

_METHODS = ("fgm", "gradient_penalty")


def _value_and_grad(fn, create_graph=False):
    """`fn(x) -> (value, aux)` to `x -> ((value, aux), d value / d x)` on any backend.

    `x` is a tensor or a list of them (Keras variables' values). With
    `create_graph` the gradient can itself be differentiated (a penalty on it).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.value_and_grad(fn, has_aux=True)
    if backend == "torch":
        import torch

        def torch_value_and_grad(x):
            xs = x if isinstance(x, (list, tuple)) else [x]
            with torch.enable_grad():
                value, aux = fn(x)
                grads = torch.autograd.grad(value, xs, create_graph=create_graph, allow_unused=True)
            return (value, aux), (list(grads) if isinstance(x, (list, tuple)) else grads[0])

        return torch_value_and_grad
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_value_and_grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value, aux = fn(x)
            grads = tape.gradient(value, x)

            # A keras.layers.Embedding gives IndexedSlices; the perturbation is dense.
            def densify(g):
                return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g

            return (value, aux), (
                [densify(g) for g in grads] if isinstance(x, (list, tuple)) else densify(grads)
            )

        return tf_value_and_grad
    raise NotImplementedError(f"no gradients on the {backend!r} backend")


def _differentiable_twice():
    """PyTorch's fused attention kernels have no second derivative; the math one
    has. Held over the whole step, so rematerialised layers recompute alike."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH])
    return contextlib.nullcontext()


def _no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _find_layer(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _find_layer(layer, name)
            if found is not None:
                return found
    return None


@register
class AdversarialModel(keras.Model):
    """A functional model trained with FGM or a gradient penalty on an embedding.

    method: 'fgm' (adversarial training: train on the loss at
        `embeddings + epsilon * g / ||g||`) or 'gradient_penalty' (train on
        `loss + epsilon / 2 * ||g||^2`), g = d loss / d embedding matrix.
    embedding_name: the layer whose `embeddings` matrix is used (searched in
        nested models too); bert4keras models call it 'Embedding-Token'.
    Build it like a functional model, `AdversarialModel(inputs, outputs, ...)`,
    or with `adversarial_training` / `gradient_penalty`. Evaluation and
    prediction are unchanged.

    >>> import keras
    >>> ids = keras.Input((4,), dtype="int32")
    >>> x = keras.layers.Embedding(10, 8, name="Embedding-Token")(ids)
    >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    >>> model = AdversarialModel(ids, y, method="gradient_penalty", epsilon=1.0)
    >>> model.embeddings.path
    'Embedding-Token/embeddings'
    """

    def __init__(
        self, *args, embedding_name="Embedding-Token", epsilon=1.0, method="fgm", **kwargs
    ):
        super().__init__(*args, **kwargs)
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.embedding_name = embedding_name
        self.epsilon = float(epsilon)
        self.method = method
        self.embeddings  # fail early on a wrong name

    @property
    def embeddings(self):
        """The perturbed / penalised matrix: `embedding_name`'s `embeddings` variable."""
        layer = _find_layer(self, self.embedding_name)
        if layer is None or not hasattr(layer, "embeddings"):
            raise ValueError(f"no embedding layer named {self.embedding_name!r} in {self.name!r}")
        return layer.embeddings

    def get_config(self):
        config = super().get_config()
        config.update(embedding_name=self.embedding_name, epsilon=self.epsilon, method=self.method)
        return config

    # ---------------------------------------------------------- the objective
    def _embedding_index(self):
        embeddings = self.embeddings
        for index, variable in enumerate(self.trainable_variables):
            if variable is embeddings:
                return index
        raise ValueError(
            f"{self.embedding_name}'s embeddings are not trainable: "
            "adversarial training needs their gradient"
        )

    def _plain_loss(self, trainable, non_trainable, metrics, x, y, sample_weight):
        """Stateless forward pass and compiled loss (as Keras' JAX trainer computes it)."""
        y_pred, non_trainable, losses = self.stateless_call(
            trainable, non_trainable, x, return_losses=True, training=True
        )
        if losses:  # add_loss() terms of this forward pass (regularisers are recomputed)
            self._losses_override.clear()
            self._losses_override = losses
        loss, (_, non_trainable, metrics) = self.stateless_compute_loss(
            trainable,
            non_trainable,
            metrics,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=True,
        )
        if losses:
            self._losses_override.clear()
        return loss, (y_pred, non_trainable, metrics)

    def training_loss(self, trainable, non_trainable, metrics, x, y, sample_weight=None):
        """The loss this model trains on, from variable values (stateless).

        Returns (loss, (y_pred, non_trainable, metrics)) like the plain loss;
        differentiate it with respect to `trainable`.
        """
        index = self._embedding_index()

        def loss_at(table):
            values = list(trainable)
            values[index] = table
            return self._plain_loss(values, non_trainable, metrics, x, y, sample_weight)

        table = trainable[index]
        if self.method == "fgm":
            _, grad = _value_and_grad(loss_at)(table)
            grad = ops.stop_gradient(grad)
            delta = self.epsilon * grad / (ops.sqrt(ops.sum(ops.square(grad))) + 1e-8)
            return loss_at(table + ops.cast(delta, table.dtype))
        (loss, aux), grad = _value_and_grad(loss_at, create_graph=True)(table)
        penalty = 0.5 * self.epsilon * ops.sum(ops.square(ops.cast(grad, "float32")))
        return loss + ops.cast(penalty, loss.dtype), aux

    # ----------------------------------------------------------- train steps
    def compute_loss_and_updates(
        self,
        trainable_variables,
        non_trainable_variables,
        metrics_variables,
        x,
        y,
        sample_weight,
        training=False,
        optimizer_variables=None,
    ):
        """JAX: Keras' stateless train step differentiates this; swap in our loss."""
        if not training:
            return super().compute_loss_and_updates(
                trainable_variables,
                non_trainable_variables,
                metrics_variables,
                x,
                y,
                sample_weight,
                training=training,
                optimizer_variables=optimizer_variables,
            )
        loss, (y_pred, non_trainable, metrics) = self.training_loss(
            trainable_variables, non_trainable_variables, metrics_variables, x, y, sample_weight
        )
        unscaled = loss
        if self.optimizer is not None:
            mapping = list(zip(self.optimizer.variables, optimizer_variables))
            with keras.StatelessScope(state_mapping=mapping):
                loss = self.optimizer.scale_loss(loss)
        return loss, (unscaled, y_pred, non_trainable, metrics)

    def train_step(self, *args):
        """PyTorch and TensorFlow: differentiate `training_loss`, then update as Keras does."""
        if keras.backend.backend() == "jax":
            return super().train_step(*args)
        (data,) = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        non_trainable = [v.value for v in self.non_trainable_variables]
        metrics = [v.value for v in self.metrics_variables]

        def objective(trainable):
            loss, aux = self.training_loss(trainable, non_trainable, metrics, x, y, sample_weight)
            return self.optimizer.scale_loss(loss), (loss, aux)

        twice = self.method == "gradient_penalty"
        with _differentiable_twice() if twice else contextlib.nullcontext():
            (_, (loss, (y_pred, non_trainable, metrics))), grads = _value_and_grad(objective)(
                [v.value for v in variables]
            )
        with _no_grad():
            for variable, value in zip(self.non_trainable_variables, non_trainable):
                variable.assign(value)
            for variable, value in zip(self.metrics_variables, metrics):
                variable.assign(value)
            self.optimizer.apply(grads, variables)
        y_pred = keras.tree.map_structure(ops.stop_gradient, y_pred)
        loss = ops.stop_gradient(loss)
        if self._loss_tracker is not None:  # what Keras' own train steps update
            first = next(t for t in keras.tree.flatten(x) if t is not None)
            self._loss_tracker.update_state(loss, sample_weight=ops.shape(first)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _in_place(model, embedding_name, epsilon, method):
    """Turn the functional `model` itself into an `AdversarialModel` (bert4keras
    patched the compiled model in place, and its scripts ignore the return value).

    Compiled state (optimizer, loss, metrics) is kept; the train function Keras
    built for the plain step is dropped, so the next `fit` builds the new one.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    from keras.src.models.functional import Functional
    from keras.src.models.model import inject_functional_model_class

    if not isinstance(model, AdversarialModel):
        if type(model) is not Functional:
            raise TypeError(
                f"{method} works in place on functional models (keras.Model(inputs, outputs), "
                f"as build_transformer_model returns), not on a {type(model).__name__}: "
                f"write `model = keras.Model(model.inputs, model.outputs)` first, then call "
                f"it and compile that model"
            )
        if not issubclass(AdversarialModel, Functional):  # Keras does this on first use
            inject_functional_model_class(AdversarialModel)
        model.__class__ = AdversarialModel
    model.embedding_name = embedding_name
    model.epsilon = float(epsilon)
    model.method = method
    model._embedding_index()  # fail now on a wrong name or a frozen embedding
    model.train_function = None
    return model


def adversarial_training(model, embedding_name="Embedding-Token", epsilon=1.0):
    """bert4keras' `adversarial_training`: FGM on the `embedding_name` matrix.

    Works in place, like the original: `model` becomes an `AdversarialModel`
    (same object, layers and weights) and is returned. Call it before or after
    `compile`; the next `fit` trains with FGM either way (a model that has
    already been fitted builds its train step again). Su's examples use
    epsilon 0.5 - 1 with BERT. Functional models only (a TypeError otherwise).

    >>> import keras
    >>> ids = keras.Input((4,), dtype="int32")
    >>> x = keras.layers.Embedding(10, 8, name="Embedding-Token")(ids)
    >>> model = keras.Model(ids, keras.layers.Dense(2)(x))
    >>> model.compile("adam", "mse")
    >>> adversarial_training(model, "Embedding-Token", 0.5) is model   # the original's call
    True
    >>> isinstance(model, AdversarialModel), model.method, model.epsilon
    (True, 'fgm', 0.5)
    """
    return _in_place(model, embedding_name, epsilon, "fgm")


def gradient_penalty(model, embedding_name="Embedding-Token", epsilon=1.0):
    """Train `model` on `loss + epsilon / 2 * ||d loss / d embeddings||^2`.

    In place like `adversarial_training` (method 'gradient_penalty'); before
    or after `compile`. Costs a double backward pass instead of FGM's second
    forward one.

    >>> import keras
    >>> ids = keras.Input((4,), dtype="int32")
    >>> x = keras.layers.Embedding(10, 8, name="Embedding-Token")(ids)
    >>> model = keras.Model(ids, keras.layers.Dense(2)(x))
    >>> gradient_penalty(model, epsilon=1.0).method
    'gradient_penalty'
    """
    return _in_place(model, embedding_name, epsilon, "gradient_penalty")


# ------------------------------------------------------------------------ EMA
@contextlib.contextmanager
def ema_weights(model, optimizer=None):
    """Swap the optimizer's moving averages into `model` for the `with` block.

    The optimizer must have been created with `use_ema=True` (also inside
    `ParameterWiseLR` / `Lookahead`). On exit the training weights are restored
    bit for bit, so training can go on (bert4keras' `apply_ema_weights()` /
    `reset_old_weights()`): use it in a callback during `fit` or between
    `train_on_batch` calls (after `fit` returns, Keras has already copied the
    averages into the model). Keras starts the average at the weights after the
    first step, so there is no bias correction to apply.

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9), "mse")
    >>> for _ in range(3):
    ...     _ = model.train_on_batch(np.ones((4, 2)), np.ones((4, 1)))
    >>> raw = model.get_weights()
    >>> with ema_weights(model):
    ...     averaged = model.get_weights()
    >>> bool(np.allclose(averaged[0], raw[0]))
    False
    >>> all(np.array_equal(a, b) for a, b in zip(raw, model.get_weights()))
    True
    """
    optimizer = optimizer or model.optimizer
    inner = optimizer
    while not getattr(inner, "use_ema", False) and hasattr(inner, "inner_optimizer"):
        inner = inner.inner_optimizer
    if not getattr(inner, "use_ema", False):
        raise ValueError("ema_weights needs an optimizer created with use_ema=True")
    variables = model.trainable_variables
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    optimizer.finalize_variable_values(variables)
    if keras.backend.backend() == "jax":
        # finalize_variable_values makes each weight share its average's buffer, and
        # JAX's fit / evaluate donate the weights' buffers: give the weights their own.
        for variable in variables:
            variable.assign(np.array(keras.ops.convert_to_numpy(variable)))
    try:
        yield model
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


__all__ = ["AdversarialModel", "adversarial_training", "gradient_penalty", "ema_weights"]
