"""How generation compiles a function of tensors on JAX: `jax.jit` over the model's
variables, read through a Keras `StatelessScope` (one trace per input shapes)."""

import jax
import keras


def compile_fn(fn, variables):
    """`fn(*tensors)` jitted; the variables' current values are passed on every call
    (so later weight updates are seen without a retrace)."""
    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    jitted = jax.jit(pure)
    return lambda *args: jitted([v.value for v in variables], *args)
