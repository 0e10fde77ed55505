"""TensorFlow-only pieces of `kerasformers.ops`."""

import tensorflow as tf


def dense_gradient(x):
    """`x` whose gradient is a dense tensor (never `tf.IndexedSlices`): see
    `kerasformers.ops.embedding_lookup` for why embeddings need it."""

    @tf.custom_gradient
    def identity(value):
        return tf.identity(value), lambda dy: tf.convert_to_tensor(dy)

    return identity(tf.convert_to_tensor(x))
