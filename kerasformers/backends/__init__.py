"""Backend-specific code, one room per Keras backend.

Everything else in kerasformers is backend-neutral (`keras.ops`). What only one
backend needs — the torch fast path of a cached decoding step, how each backend
compiles a function, tf.data conversion — lives in `kerasformers.backends.<name>`
and is imported lazily, by the neutral code, only when that backend is active:
importing kerasformers on JAX never imports torch or TensorFlow.
"""
