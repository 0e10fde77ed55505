"""How generation compiles a function of tensors on TensorFlow: an XLA `tf.function`."""

import tensorflow as tf


def compile_fn(fn, variables):
    """`fn(*tensors)` as an XLA-compiled `tf.function` (`variables` are read by the trace).

    Static shapes: one trace each. No autograph: the code branches on Python values
    only, and converting it cost ~3 s of a GPT2-small first call."""
    return tf.function(fn, jit_compile=True, autograph=False)
