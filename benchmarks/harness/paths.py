"""The inference paths tried for a Keras model on each backend, and the proposed-fix variants
(a monkeypatch active around every call)."""

import contextlib

from .spec import FIX_TAG


def identity(x):
    return x


# ------------------------------------------------------------------------ paths
def keras_paths(backend, model, x_np):
    """The inference paths tried for a Keras model on `backend`, inputs a list of arrays:
    jax ``jax.jit(model.stateless_call)``; torch eager under ``inference_mode``; TensorFlow
    ``tf.function`` with and without XLA; ``model.predict_on_batch`` everywhere."""
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    paths = []
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = [jnp.asarray(a) for a in x_np]
        # own copies: predict_on_batch donates the model's variable buffers on every call
        tv = [jnp.array(v.value, copy=True) for v in model.trainable_variables]
        ntv = [jnp.array(v.value, copy=True) for v in model.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            return model.stateless_call(tv, ntv, x, training=False)[0]

        paths.append(
            (
                "jax.jit(model.stateless_call)",
                lambda: forward(tv, ntv, x),
                lambda o: o.block_until_ready(),
            )
        )
    elif backend == "torch":
        import torch

        x = [keras.ops.convert_to_tensor(a) for a in x_np]

        def eager():
            with torch.inference_mode():
                return model(x, training=False)

        paths.append(("model(x, training=False) + inference_mode", eager, identity))
    elif backend == "tensorflow":
        import tensorflow as tf

        x = [tf.constant(a) for a in x_np]
        graph = tf.function(lambda x: model(x, training=False), jit_compile=False)
        xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
        paths.append(("tf.function(model(x, training=False))", lambda: graph(x), identity))
        paths.append(("tf.function(..., jit_compile=True)", lambda: xla(x), identity))
    paths.append(("model.predict_on_batch", lambda: model.predict_on_batch(x_np), identity))
    return paths


def patched_paths(backend, model, x_np, patch, label):
    """The backend's main path with `patch` (a context manager factory: the proposed fix,
    monkeypatched in) active around every call; names start with FIX_TAG and end in `label`,
    and such rows never count as the backend's number."""
    import keras

    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = [jnp.asarray(a) for a in x_np]
        tv = [jnp.array(v.value, copy=True) for v in model.trainable_variables]
        ntv = [jnp.array(v.value, copy=True) for v in model.non_trainable_variables]
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])

        def fn():
            with patch():  # only matters while tracing
                return forward(tv, ntv, x)

        return [(f"{FIX_TAG}jax.jit + {label}", fn, lambda o: o.block_until_ready())]
    if backend == "torch":
        import torch

        x = [keras.ops.convert_to_tensor(a) for a in x_np]

        def fn():
            with patch(), torch.inference_mode():
                return model(x, training=False)

        return [(f"{FIX_TAG}model(x) + inference_mode + {label}", fn, identity)]
    import tensorflow as tf

    x = [tf.constant(a) for a in x_np]
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)

    def fn():
        with patch():  # only matters while tracing
            return xla(x)

    return [(f"{FIX_TAG}tf.function(jit_compile=True) + {label}", fn, identity)]


def method_patch(cls, attr, replacement):
    """Context manager factory: ``cls.attr = replacement`` while active."""

    @contextlib.contextmanager
    def patch():
        original = getattr(cls, attr)
        setattr(cls, attr, replacement)
        try:
            yield
        finally:
            setattr(cls, attr, original)

    return patch
