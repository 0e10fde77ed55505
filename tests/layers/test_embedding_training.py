"""Training embeddings with Adam gives the same update on every backend.

Keras 3's optimizers on TensorFlow square an `IndexedSlices` gradient row by
row, so a token repeated in a batch got Adam's second moment sum(g_i^2) instead
of (sum g_i)^2 and trained with a wrong step. `embedding_lookup` gives a dense
gradient; here two Adam steps through each embedding layer are checked against
Adam computed in NumPy from the dense gradient.
"""

import keras
import numpy as np
import pytest

from kerasformers.layers import Embedding, PositionEmbedding, RelativePositionEmbeddingT5


def numpy_adam(table, grads, lr=0.1, b1=0.9, b2=0.999, eps=1e-7):
    m = np.zeros_like(table)
    v = np.zeros_like(table)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        table = table - alpha * m / (np.sqrt(v) + eps)
    return table


def train_two_steps(layer, inputs, target):
    """Two Adam steps on mean((layer(inputs) - target)^2); returns the new table."""
    x = keras.Input(shape=inputs.shape[1:], dtype="int32")
    model = keras.Model(x, layer(x))
    model.compile(keras.optimizers.Adam(0.1), "mse")
    tables = []
    for _ in range(2):
        tables.append(keras.ops.convert_to_numpy(layer.weights[0]).copy())
        model.train_on_batch(inputs, target)
    return tables, keras.ops.convert_to_numpy(layer.weights[0])


def dense_grad(table, ids, outputs, target):
    """d mean((table[ids] - target)^2) / d table, rows of repeated ids summed."""
    g_out = 2 * (outputs - target) / outputs.size
    grad = np.zeros_like(table)
    np.add.at(grad, ids.reshape(-1), g_out.reshape(-1, table.shape[1]))
    return grad


def test_token_embedding_with_repeated_ids():
    rng = np.random.RandomState(0)
    ids = np.array([[1, 1, 1, 2, 3, 1], [2, 2, 1, 0, 0, 0]], "int32")
    target = rng.normal(size=ids.shape + (3,)).astype("float32")
    layer = Embedding(5, 3, embeddings_initializer="random_normal")
    tables, trained = train_two_steps(layer, ids, target)
    grads = [dense_grad(t, ids, t[ids], target) for t in tables]
    np.testing.assert_allclose(trained, numpy_adam(tables[0], grads), atol=1e-5)


def test_t5_relative_bias_trains_like_a_dense_table():
    """T5's bucketed bias gathers the same bucket many times per sequence."""

    class Bias(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.relative = RelativePositionEmbeddingT5(
                8, 2, max_distance=16, embeddings_initializer="random_normal"
            )

        def call(self, x):
            return keras.ops.expand_dims(self.relative([x, x]), 0)

    rng = np.random.RandomState(1)
    x = np.zeros((1, 6), "int32")
    target = rng.normal(size=(1, 6, 6, 2)).astype("float32")
    layer = Bias()
    tables, trained = train_two_steps(layer, x, target)
    idx = np.arange(6)
    buckets = keras.ops.convert_to_numpy(
        layer.relative.compute_position_ids(idx[None, :] - idx[:, None])
    )
    grads = [dense_grad(t, buckets[None], t[buckets][None], target) for t in tables]
    np.testing.assert_allclose(trained, numpy_adam(tables[0], grads), atol=1e-5)


@pytest.mark.parametrize("hierarchical", [None, True])
def test_position_embedding(hierarchical):
    rng = np.random.RandomState(2)
    x = np.zeros((3, 5), "int32")

    class Positions(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.position = PositionEmbedding(
                4 if hierarchical else 6,
                2,
                merge_mode="zero",
                hierarchical=hierarchical,
                embeddings_initializer="random_normal",
            )

        def call(self, ids):
            return self.position(keras.ops.zeros(keras.ops.shape(ids) + (2,)))

    target = rng.normal(size=(3, 5, 2)).astype("float32")
    layer = Positions()
    tables, trained = train_two_steps(layer, x, target)
    positions = np.tile(np.arange(5), (3, 1))
    grads = [position_grad(t, positions, target, hierarchical) for t in tables]
    np.testing.assert_allclose(trained, numpy_adam(tables[0], grads), atol=1e-5)


def position_grad(table, positions, target, hierarchical):
    """Dense gradient of the mse through (hierarchical) position embeddings."""
    if not hierarchical:
        return dense_grad(table, positions, table[positions], target)
    alpha, n = 0.4, table.shape[0]
    scaled = (table - alpha * table[:1]) / (1 - alpha)
    outputs = alpha * scaled[positions // n] + (1 - alpha) * scaled[positions % n]
    g_out = (2 * (outputs - target) / outputs.size).reshape(-1, table.shape[1])
    g_scaled = np.zeros_like(table)
    np.add.at(g_scaled, (positions // n).reshape(-1), alpha * g_out)
    np.add.at(g_scaled, (positions % n).reshape(-1), (1 - alpha) * g_out)
    grad = g_scaled / (1 - alpha)
    grad[0] -= alpha / (1 - alpha) * g_scaled.sum(0)
    return grad
