"""PositionEmbedding and SinusoidalPositionEmbedding against NumPy formulas and bert4keras.

The bert4keras outputs come from scripts/make_gau_fixtures.py
(tests/fixtures/bert4keras_layers/*.npz); the NumPy formulas are checked
against them too.
"""

import json
import os

import keras
import numpy as np
import pytest

from kerasformers.layers import Embedding, PositionEmbedding, SinusoidalPositionEmbedding
from tests.utils import to_numpy

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "bert4keras_layers")
TOL = 1e-4


def load(name):
    """{case: (config, output, weights)} and the shared inputs of one fixture file."""
    with np.load(os.path.join(FIXTURES, name + ".npz"), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {}
    for key in arrays:
        if key.endswith("/config"):
            case = key[: -len("/config")]
            weights = {
                k[len(case) + 9 :]: v for k, v in arrays.items() if k.startswith(case + "/weights/")
            }
            cases[case] = (json.loads(str(arrays[key])), arrays[case + "/output"], weights)
    return cases, arrays["x"], arrays["position_ids"]


POSITION_CASES, X, POSITION_IDS = load("position_embedding")
SINUSOIDAL_CASES, SX, SPOSITION_IDS = load("sinusoidal_position_embedding")


def numpy_merge(x, pos, merge_mode):
    if merge_mode == "add":
        return x + pos
    if merge_mode == "mul":
        return x * (pos + 1.0)
    if merge_mode == "zero":
        return pos
    return np.concatenate([x, np.broadcast_to(pos, x.shape[:2] + pos.shape[-1:])], -1)


def numpy_position(x, table, positions, merge_mode, hierarchical=None):
    table = table.astype("float64")
    if hierarchical:
        alpha = 0.4 if hierarchical is True else hierarchical
        u = (table - alpha * table[0]) / (1 - alpha)
        n = len(table)
        pos = alpha * u[positions // n] + (1 - alpha) * u[positions % n]
    else:
        pos = table[positions]
    return numpy_merge(x, pos, merge_mode)


def numpy_sinusoidal(positions, dim):
    """[sin(p w_0), cos(p w_0), sin(p w_1), ...] with w_i = 10000^(-2i/dim)."""
    angles = positions[..., None].astype("float64") * 10000.0 ** (-2 * np.arange(dim // 2) / dim)
    return np.stack([np.sin(angles), np.cos(angles)], -1).reshape(positions.shape + (dim,))


def default_positions(x):
    return np.arange(x.shape[1])[None]


def test_fixtures_present():
    assert len(POSITION_CASES) == 7 and len(SINUSOIDAL_CASES) == 6


@pytest.mark.parametrize("case", sorted(POSITION_CASES))
def test_position_embedding_equals_bert4keras_and_numpy(case):
    config, want, weights = POSITION_CASES[case]
    layer = PositionEmbedding(**config)
    custom = config.get("custom_position_ids")
    inputs = [X, POSITION_IDS] if custom else X
    layer.build(X.shape)
    layer.embeddings.assign(weights["embeddings"])
    ours = to_numpy(layer(inputs))
    positions = POSITION_IDS if custom else default_positions(X)
    ref = numpy_position(
        X, weights["embeddings"], positions, config["merge_mode"], config.get("hierarchical")
    )
    assert ours.shape == want.shape == ref.shape
    assert np.abs(ref - want).max() <= TOL, "NumPy formula disagrees with bert4keras"
    assert np.abs(ours - want).max() <= TOL
    shape = (None,) + X.shape[1:]
    shape = layer.compute_output_shape([shape, (None, X.shape[1])] if custom else shape)
    assert shape[1:] == want.shape[1:]


@pytest.mark.parametrize("case", sorted(SINUSOIDAL_CASES))
def test_sinusoidal_equals_bert4keras_and_numpy(case):
    config, want, _ = SINUSOIDAL_CASES[case]
    custom = config.get("custom_position_ids")
    layer = SinusoidalPositionEmbedding(**config)
    ours = to_numpy(layer([SX, SPOSITION_IDS] if custom else SX))
    positions = SPOSITION_IDS if custom else default_positions(SX)
    ref = numpy_merge(SX, numpy_sinusoidal(positions, config["output_dim"]), config["merge_mode"])
    assert ours.shape == want.shape == ref.shape
    assert np.abs(ref - want).max() <= TOL, "NumPy formula disagrees with bert4keras"
    assert np.abs(ours - want).max() <= TOL


def test_hierarchical_first_positions_equal_the_table():
    """Positions < n of the hierarchical table are the learned ones (that is its point)."""
    table = np.random.RandomState(0).normal(size=(5, 4)).astype("float32")
    layer = PositionEmbedding(5, 4, merge_mode="zero", hierarchical=True)
    layer.build((None, 25, 4))
    layer.embeddings.assign(table)
    ids = np.arange(25)[None]
    out = to_numpy(layer(np.zeros((1, 25, 4), "float32")))[0]
    np.testing.assert_allclose(out[:5], table, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        out, numpy_position(None, table, ids, "zero", True)[0], rtol=0, atol=1e-5
    )
    assert np.abs(out[5:10] - table).max() > 0.1  # and later blocks differ from the table


@pytest.mark.parametrize("cls", [PositionEmbedding, SinusoidalPositionEmbedding])
def test_offset_equals_shifted_custom_position_ids(cls):
    args = (20, 4) if cls is PositionEmbedding else (4,)
    layer = cls(*args, merge_mode="add")
    custom = cls(*args, merge_mode="add", custom_position_ids=True)
    x = np.random.RandomState(1).normal(size=(2, 3, 4)).astype("float32")
    layer.build(x.shape)
    custom.build([x.shape, (2, 3)])
    if cls is PositionEmbedding:
        table = np.random.RandomState(2).normal(size=(20, 4)).astype("float32")
        layer.embeddings.assign(table)
        custom.embeddings.assign(table)
    ids = np.arange(5, 8)[None].repeat(2, 0)
    np.testing.assert_allclose(
        to_numpy(layer(x, offset=5)), to_numpy(custom([x, ids])), rtol=0, atol=1e-6
    )


def test_padding_mask_flows_through_the_merge_modes():
    tokens = keras.Input((None,), dtype="int32")
    positions = keras.Input((None,), dtype="int32")
    h = Embedding(10, 4, mask_zero=True)(tokens)
    outputs = {
        "add": PositionEmbedding(8, 4)(h),
        "concat": PositionEmbedding(8, 2, merge_mode="concat")(h),
        "custom": PositionEmbedding(8, 4, custom_position_ids=True)([h, positions]),
        "sin_mul": SinusoidalPositionEmbedding(4, merge_mode="mul")(h),
        "sin_concat": SinusoidalPositionEmbedding(6, merge_mode="concat")(h),
    }
    for name, out in outputs.items():
        assert out._keras_mask is not None, name
    rotary = SinusoidalPositionEmbedding(4, merge_mode="zero")(h)
    assert getattr(rotary, "_keras_mask", None) is None  # a table, not a sequence
    assert tuple(outputs["concat"].shape) == (None, None, 6)
    assert tuple(outputs["sin_concat"].shape) == (None, None, 10)
    ids = np.array([[1, 2, 3], [4, 0, 0]], "int32")
    model = keras.Model([tokens, positions], outputs["sin_concat"])
    out = to_numpy(model([ids, ids]))
    assert out.shape == (2, 3, 10)
    np.testing.assert_allclose(
        out[:, :, 4:],
        np.broadcast_to(numpy_sinusoidal(np.arange(3)[None], 6), (2, 3, 6)),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (
            PositionEmbedding,
            dict(
                input_dim=6,
                output_dim=4,
                merge_mode="concat",
                hierarchical=0.3,
                custom_position_ids=True,
                embeddings_initializer="glorot_uniform",
            ),
        ),
        (
            SinusoidalPositionEmbedding,
            dict(output_dim=4, merge_mode="zero", custom_position_ids=True),
        ),
    ],
)
def test_get_config_round_trip(cls, kwargs):
    layer = cls(**kwargs, name="pos")
    x, ids = keras.Input((None, 4)), keras.Input((None,), dtype="int32")
    model = keras.Model([x, ids], layer([x, ids]))
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    config = layer.get_config()
    assert clone.get_layer("pos").get_config() == config
    for key, value in kwargs.items():
        if key != "embeddings_initializer":
            assert config[key] == value
    data = [np.ones((2, 3, 4), "float32"), np.array([[0, 7, 30], [2, 1, 0]], "int32")]
    np.testing.assert_array_equal(to_numpy(clone(data)), to_numpy(model(data)))
