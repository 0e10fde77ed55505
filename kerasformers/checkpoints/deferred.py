"""Build a model without paying for random weights a checkpoint will overwrite.

Inside :func:`deferred_build` Keras creates variables without a value (Keras'
own mechanism: variables made in a ``keras.StatelessScope`` keep their
initializer and wait). The loader then gives each weight the checkpoint has its
first value straight from the file (:func:`initialize_from`), and
:func:`initialize_rest` runs the real initializer of every weight still waiting
(those the checkpoint does not provide: new heads, skipped rows), so they get
their proper random values. No weight exists twice and no random numbers are
drawn for weights that are loaded.

>>> import keras, numpy as np
>>> with deferred_build():
...     layer = keras.layers.Dense(3)
...     layer.build((None, 2))
>>> is_deferred(layer.kernel), is_deferred(layer.bias)
(True, True)
>>> initialize_from(layer.kernel, np.ones((2, 3), "float32"))
>>> initialize_rest([layer.kernel, layer.bias])
>>> layer.kernel.numpy().sum(), layer.bias.numpy().sum(), is_deferred(layer.bias)
(np.float32(6.0), np.float32(0.0), False)
"""

import contextlib

import keras
from keras.src.backend.common import global_state

from kerasformers.backends import torch as torch_backend

_PENDING = "uninitialized_variables"  # Keras' list of variables waiting for a value


@contextlib.contextmanager
def deferred_build():
    """Variables created inside wait for a value (see the module docstring).

    Yields a list that holds, on exit, every variable created inside."""
    before = {id(v) for v in global_state.get_global_attribute(_PENDING) or ()}
    created = []
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield created
    finally:
        pending = global_state.get_global_attribute(_PENDING) or ()
        created.extend(v for v in pending if id(v) not in before)


def is_deferred(variable):
    """Whether `variable` was created under `deferred_build` and has no value yet."""
    return getattr(variable, "_value", 0) is None and (
        getattr(variable, "_initializer", None) is not None
    )


def backend_value(value):
    """A NumPy array as the backend takes it with the fewest copies: on torch a tensor
    sharing its memory (Keras' own conversion copies it first), on JAX one
    `device_put`; on TensorFlow as it is."""
    if torch_backend.available():
        from kerasformers.backends.torch.arrays import from_numpy

        return from_numpy(value)
    if keras.backend.backend() == "jax":
        from kerasformers.backends.jax.arrays import from_numpy

        return from_numpy(value)
    return value


def initialize_from(variable, value):
    """Give a waiting `variable` its first value, `value` (a NumPy array of its dtype)."""
    variable._initialize(variable._convert_to_tensor(backend_value(value), dtype=variable.dtype))
    variable._initializer = None
    _forget([variable])


def initialize_rest(variables):
    """Run the initializer of every variable in `variables` still waiting."""
    variables = list(variables)
    for variable in variables:
        if is_deferred(variable):
            variable._deferred_initialize()
    _forget(variables)


def forget(variables):
    """Drop `variables` from Keras' waiting list without giving them values
    (after a failed load: the model is not handed out)."""
    _forget(variables)


def _forget(variables):
    pending = global_state.get_global_attribute(_PENDING)
    if pending:
        ids = {id(v) for v in variables}
        global_state.set_global_attribute(_PENDING, [v for v in pending if id(v) not in ids])
