"""Optimizer tricks from bert4keras, the Keras 3 way.

Keras 3 already has most of them; what it lacks is here. bert4keras -> Keras 3:

* `extend_with_weight_decay` -> `keras.optimizers.AdamW(weight_decay=...)`, and
  `exclude_weight_decay(optimizer, model, ['Norm', 'bias'])` for its exclusions;
* `extend_with_piecewise_linear_lr` -> `PiecewiseLinearSchedule(lr, {1000: 1, ...})`;
* `extend_with_gradient_accumulation` -> `gradient_accumulation_steps=k`;
* `extend_with_exponential_moving_average` -> `use_ema=True, ema_momentum=...`,
  and `kerasformers.training.ema_weights` to evaluate with the averages;
* `extend_with_lookahead` -> `Lookahead(optimizer, k, alpha)`;
* `extend_with_parameter_wise_lr` -> `ParameterWiseLR(optimizer, {pattern: m})`,
  with `layerwise_lr_decay(model, decay)` for layer-wise decay;
* `Lion`, `AdaFactor` -> `keras.optimizers.Lion`, `keras.optimizers.Adafactor`.

Variables are matched by regular expressions searched in `variable.path`
(`"Transformer-3-FeedForward/i0_dense/kernel"`), as bert4keras searched
`variable.name`: a plain name like `'Norm'` is a substring match.

The two wrappers (`ParameterWiseLR`, `Lookahead`) are registered Keras
objects: a model compiled with them saves and loads with `model.save("x.keras")`
/ `keras.models.load_model`, optimizer state included.

>>> import keras
>>> from kerasformers.optimizers import Lookahead, PiecewiseLinearSchedule
>>> schedule = PiecewiseLinearSchedule(1e-3, {1000: 1, 10000: 0.1})   # warm-up, then decay
>>> optimizer = Lookahead(keras.optimizers.AdamW(schedule, weight_decay=0.01))
>>> round(float(schedule(500)), 6), round(float(schedule(20000)), 6)
(0.0005, 0.0001)
"""

import contextlib
import re

import keras
from keras import ops

from kerasformers.saving import register


def _matches(patterns, path):
    return [p for p in patterns if re.search(p, path)]


def _literal(text):
    """A regex matching `text` (like re.escape, but leaving '-' readable)."""
    return "".join("\\" + c if c in ".^$*+?{}[]\\|()" else c for c in text)


def _decay_key(variable):
    """What Keras' weight decay asks `_use_weight_decay` about: TensorFlow passes the
    tf.Variable (whose name is the full path), the other backends the Keras variable."""
    return variable.value if keras.backend.backend() == "tensorflow" else variable


def _eager_scope():
    """TensorFlow builds optimizers while tracing the train step; leave the graph
    there to read configs and create the group optimizers eagerly."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


# ---------------------------------------------------------------- schedules
def _step_key(step):
    """Schedule keys come back from JSON as strings: '1000' -> 1000."""
    step = float(step)
    return int(step) if step.is_integer() else step


def piecewise_linear(step, schedule, from_zero=True):
    """bert4keras' `piecewise_linear`: linear between the `{step: value}` points.

    Constant before the first point and after the last; with `from_zero` a
    point (0, 0) is added unless step 0 is given (a warm-up from zero).
    Equal to `np.interp(step, steps, values)` on those points.

    >>> [round(float(piecewise_linear(t, {1000: 1, 2000: 0.1})), 4) for t in (0, 500, 1500, 9999)]
    [0.0, 0.5, 0.55, 0.1]
    """
    points = sorted((_step_key(k), float(v)) for k, v in schedule.items())
    if not points:
        raise ValueError("schedule must have at least one {step: value} point")
    if from_zero and points[0][0] != 0:
        points = [(0, 0.0)] + points
    t = ops.cast(step, "float32")
    value = ops.full_like(t, points[0][1])
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        value = ops.where(t >= t0, v0 + (v1 - v0) * (t - t0) / (t1 - t0), value)
    return ops.where(t >= points[-1][0], points[-1][1], value)


@register
class PiecewiseLinearSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate * piecewise_linear(step, schedule)`: bert4keras' `lr_schedule`.

    `schedule` is bert4keras' `{step: multiplier}` dict: `{1000: 1, 10000: 0.1}`
    warms up linearly from 0 to `learning_rate` over 1000 steps, decays linearly
    to a tenth by step 10000 and stays there. Steps are optimizer iterations:
    with `gradient_accumulation_steps=k` Keras counts every micro-batch, so
    multiply the steps by k.

    >>> import keras
    >>> schedule = PiecewiseLinearSchedule(2e-5, {100: 1, 1000: 0.1})
    >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    >>> round(float(schedule(50)) / 2e-5, 3)
    0.5
    """

    def __init__(self, learning_rate, schedule, from_zero=True):
        self.learning_rate = float(learning_rate)
        self.schedule = {_step_key(k): float(v) for k, v in schedule.items()}
        self.from_zero = from_zero

    def __call__(self, step):
        return self.learning_rate * piecewise_linear(step, self.schedule, self.from_zero)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "schedule": {str(k): v for k, v in self.schedule.items()},
            "from_zero": self.from_zero,
        }


class _ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`multiplier * schedule(step)` (the learning rate of one ParameterWiseLR group)."""

    def __init__(self, schedule, multiplier):
        self.schedule = schedule
        self.multiplier = multiplier

    def __call__(self, step):
        return self.multiplier * self.schedule(step)

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "multiplier": self.multiplier,
        }


# ----------------------------------------------------------------- wrappers
class _Wrapper(keras.optimizers.Optimizer):
    """Common plumbing of an optimizer that drives `inner_optimizer`.

    Like `keras.optimizers.LossScaleOptimizer`: the inner optimizer keeps the
    learning rate, clipping, weight decay, EMA and gradient accumulation; the
    wrapper's `variables` are its own plus the inner ones (so JAX's stateless
    training and `.keras` saving see all of them).
    """

    def __init__(self, optimizer, name=None):
        if isinstance(optimizer, (str, dict)):
            optimizer = keras.optimizers.get(optimizer)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate
        self._learning_rate_changed(learning_rate)

    def _learning_rate_changed(self, learning_rate):
        """Hook for wrappers that derive rates from the inner optimizer's."""

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def _ensure_built(self, trainable_variables):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        return (
            self._trainable_variables if trainable_variables is None else list(trainable_variables)
        )

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(
            config["optimizer"], custom_objects=custom_objects
        )
        return cls(**config)


@register
class ParameterWiseLR(_Wrapper):
    """Per-variable learning-rate multipliers (bert4keras' `extend_with_parameter_wise_lr`).

    `multipliers` maps a regex searched in `variable.path` to a factor; a
    variable's learning rate is the base one times the product of the factors
    of every pattern it matches (1 if none). Variables sharing a factor are
    updated by one copy of `optimizer` whose learning rate (float or schedule)
    is scaled by it, so a variable with factor m gets exactly the update of
    `optimizer` run with `m * learning_rate`, decoupled weight decay included
    (as in PyTorch parameter groups); EMA, clipping and gradient accumulation
    of `optimizer` apply to every group (`global_clipnorm` over all gradients).
    Weight-decay exclusions set on `optimizer` or on this wrapper are kept.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    >>> optimizer = ParameterWiseLR(keras.optimizers.Adam(1e-3), {"head/bias": 0.1})
    >>> [optimizer.multiplier(v) for v in model.trainable_variables]
    [1.0, 0.1]
    """

    def __init__(self, optimizer, multipliers, name=None):
        super().__init__(optimizer, name=name)
        self.multipliers = {str(k): float(v) for k, v in dict(multipliers).items()}
        self._group_optimizers = []  # one copy of `optimizer` per distinct factor
        self._group_of = {}  # id(variable) -> index in _group_optimizers

    def multiplier(self, variable):
        """The learning-rate factor of `variable` (product over matching patterns)."""
        factor = 1.0
        for pattern in _matches(self.multipliers, variable.path):
            factor *= self.multipliers[pattern]
        return factor

    def _group_optimizer(self, factor, index):
        config = self.inner_optimizer.get_config()
        learning_rate = config["learning_rate"]
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
            if factor != 1.0:
                learning_rate = _ScaledSchedule(learning_rate, factor)
        else:
            learning_rate = learning_rate * factor
        config.update(
            learning_rate=learning_rate,
            global_clipnorm=None,
            name=f"{self.inner_optimizer.name}_group{index}",
        )
        return type(self.inner_optimizer).from_config(config)

    def _group_variables(self, index, variables=None):
        variables = self._trainable_variables if variables is None else variables
        return [v for v in variables if self._group_of.get(id(v)) == index]

    def build(self, var_list):
        factors = sorted({self.multiplier(v) for v in var_list})
        for variable in var_list:
            self._group_of[id(variable)] = factors.index(self.multiplier(variable))
        with _eager_scope():
            for index, factor in enumerate(factors):
                optimizer = self._group_optimizer(factor, index)
                variables = self._group_variables(index, var_list)
                self._copy_exclusions(optimizer, variables)
                optimizer.build(variables)
                self._group_optimizers.append(optimizer)
        super().build(var_list)

    def _copy_exclusions(self, optimizer, variables):
        """A group decays what the inner optimizer would (its var_names / var_list)."""
        if self.inner_optimizer.weight_decay is not None:
            optimizer.exclude_from_weight_decay(
                var_list=[
                    v
                    for v in variables
                    if not self.inner_optimizer._use_weight_decay(_decay_key(v))
                ]
            )

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        for index, optimizer in enumerate(self._group_optimizers):
            self._copy_exclusions(optimizer, self._group_variables(index))

    @property
    def variables(self):
        return self._variables + [v for opt in self._group_optimizers for v in opt.variables]

    def _learning_rate_changed(self, learning_rate):
        scheduled = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        for index, optimizer in enumerate(self._group_optimizers):
            factor = self.multiplier(self._group_variables(index)[0])
            optimizer.learning_rate = (
                _ScaledSchedule(learning_rate, factor) if scheduled else learning_rate * factor
            )

    @property
    def iterations(self):
        """Updates made (micro-batches / k under `gradient_accumulation_steps=k`)."""
        steps = self.inner_optimizer.gradient_accumulation_steps
        return ops.floor_divide(self._iterations, steps) if steps else self._iterations

    def apply(self, grads, trainable_variables=None):
        trainable_variables = self._ensure_built(trainable_variables)
        grads = list(grads)
        clipnorm = self.inner_optimizer.global_clipnorm
        if clipnorm:
            norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in grads if g is not None))
            scale = ops.minimum(1.0, clipnorm / ops.maximum(norm, 1e-12))
            grads = [g if g is None else g * ops.cast(scale, g.dtype) for g in grads]
        grad_of = {id(v): g for v, g in zip(trainable_variables, grads)}
        for index, optimizer in enumerate(self._group_optimizers):
            variables = self._group_variables(index, trainable_variables)
            if variables:
                optimizer.apply([grad_of[id(v)] for v in variables], variables)
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        for index, optimizer in enumerate(self._group_optimizers):
            optimizer.finalize_variable_values(self._group_variables(index))

    def get_config(self):
        config = super().get_config()
        config["multipliers"] = dict(self.multipliers)
        return config


def layerwise_lr_decay(
    model, decay, layer_pattern=r"Transformer-(\d+)-", embedding_pattern="Embedding-"
):
    """Layer-wise learning-rate decay multipliers for `ParameterWiseLR`.

    Block i of n (found by `layer_pattern` in the variable paths: bert4keras'
    `Transformer-{i}-...` names) gets `decay ** (n - i)`, the embeddings
    `decay ** (n + 1)`, everything else (pooler, task heads) 1: the top
    block learns at `decay` times the head's rate, each block below `decay`
    times slower than the one above.

    >>> import keras
    >>> names = ["Embedding-Mapping", "Transformer-0-FeedForward", "Transformer-1-FeedForward",
    ...          "head"]
    >>> model = keras.Sequential([keras.Input((4,))] + [keras.layers.Dense(4, name=n)
    ...                                                 for n in names])
    >>> layerwise_lr_decay(model, 0.5)
    {'Transformer-0-': 0.25, 'Transformer-1-': 0.5, 'Embedding-': 0.125}
    """
    blocks = {}
    for variable in model.trainable_variables:
        match = re.search(layer_pattern, variable.path)
        if match:
            blocks[match.group(0)] = int(match.group(1))
    if not blocks:
        raise ValueError(f"no variable path matches {layer_pattern!r}")
    n = max(blocks.values()) + 1
    multipliers = {
        _literal(prefix): decay ** (n - i)
        for prefix, i in sorted(blocks.items(), key=lambda item: item[1])
    }
    multipliers[embedding_pattern] = decay ** (n + 1)
    return multipliers


@register
class Lookahead(_Wrapper):
    """Lookahead (Zhang et al. 2019) around any Keras optimizer.

    The inner optimizer moves the ("fast") weights; after every
    `steps_per_slow_update` (k) of its updates the slow weights move
    `slow_step_size` (alpha) of the way towards them,
    `slow += alpha * (fast - slow)`, and the fast weights restart from there.
    The slow weights start as the weights before the first step (bert4keras
    started them at zero). Under gradient accumulation k counts real updates.

    >>> import keras
    >>> optimizer = Lookahead(keras.optimizers.Adam(1e-3), steps_per_slow_update=5,
    ...                       slow_step_size=0.5)
    >>> optimizer.learning_rate is optimizer.inner_optimizer.learning_rate
    True
    """

    def __init__(self, optimizer, steps_per_slow_update=5, slow_step_size=0.5, name=None):
        super().__init__(optimizer, name=name)
        self.steps_per_slow_update = int(steps_per_slow_update)
        self.slow_step_size = float(slow_step_size)
        self._slow_variables = []
        self._slow_index = {}  # id(variable) -> index in _slow_variables

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def build(self, var_list):
        for index, variable in enumerate(var_list):
            self._slow_index[id(variable)] = index
            self._slow_variables.append(self.add_variable_from_reference(variable, "slow"))
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        trainable_variables = self._ensure_built(trainable_variables)
        slow = [self._slow_variables[self._slow_index[id(v)]] for v in trainable_variables]
        value = ops.convert_to_tensor
        # Our own counter counts apply calls (micro-batches under accumulation).
        step = value(self._iterations)
        for variable, average in zip(trainable_variables, slow):
            average.assign(ops.where(step == 0, value(variable), value(average)))
        self.inner_optimizer.apply(grads, trainable_variables)
        accumulation = self.inner_optimizer.gradient_accumulation_steps or 1
        period = self.steps_per_slow_update * accumulation
        sync = (step + 1) % period == 0
        for variable, average in zip(trainable_variables, slow):
            fast, old = value(variable), value(average)
            moved = old + self.slow_step_size * (fast - old)
            average.assign(ops.where(sync, moved, old))
            variable.assign(ops.where(sync, moved, fast))
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        config = super().get_config()
        config.update(
            steps_per_slow_update=self.steps_per_slow_update, slow_step_size=self.slow_step_size
        )
        return config


# ------------------------------------------------------------- weight decay
def exclude_weight_decay(optimizer, model, patterns):
    """Exclude `model`'s variables whose path matches any regex in `patterns` from decay.

    bert4keras' `exclude_from_weight_decay=['Norm', 'bias']` searched the full
    variable name (`Transformer-0-FeedForward-Norm/gamma`). Keras'
    `optimizer.exclude_from_weight_decay(var_names=[...])` searches
    `variable.name`, which is the short name on JAX and PyTorch (`gamma`,
    `bias`: `'Norm'` matches nothing) but the full `.../gamma:0` on TensorFlow.
    This helper resolves the patterns on `variable.path` and passes the
    variables (`var_list=`) instead, the same on every backend. Call it before
    training (it replaces earlier exclusions); exclusions are not part of a
    saved optimizer's config, so call it again after `load_model`. Returns the
    excluded variables.

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.LayerNormalization(name="Embedding-Norm")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    >>> optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    >>> [v.path for v in exclude_weight_decay(optimizer, model, ["Norm", "bias"])]
    ['Embedding-Norm/gamma', 'Embedding-Norm/beta', 'dense/bias']
    """
    excluded = [v for v in model.trainable_variables if _matches(patterns, v.path)]
    optimizer.exclude_from_weight_decay(var_list=excluded)
    return excluded


__all__ = [
    "piecewise_linear",
    "PiecewiseLinearSchedule",
    "ParameterWiseLR",
    "layerwise_lr_decay",
    "Lookahead",
    "exclude_weight_decay",
]
