"""Reference outputs of bert4keras 0.11.5 layers, for tests that run without it.

bert4keras needs TensorFlow with tf.keras 2 (tf-keras), so this runs in its own
environment (CI never runs it; the tests only read the .npz files):

    python3 -m venv /work/b4k
    /work/b4k/bin/pip install -q tensorflow-cpu tf-keras
    /work/b4k/bin/pip install -q --no-deps bert4keras==0.11.5
    TF_KERAS=1 TF_USE_LEGACY_KERAS=1 /work/b4k/bin/python scripts/make_gau_fixtures.py

It writes small random cases (float32, inputs with padding) as plain np.savez
files (no pickles; strings are unicode arrays):

* tests/fixtures/gau/<case>.npz -- GatedAttentionUnit: `config` (JSON of the
  layer arguments), inputs (`x`, or `q`, `k`, `v`), `mask` (key padding mask),
  optional `attention_mask` / `attention_bias`, `rope` (1 = RoPE from
  SinusoidalPositionEmbedding(key_size, 'zero')), `output`, and every weight
  under `weights/<sublayer>/<name>` (e.g. `weights/i_dense/kernel`).
* tests/fixtures/bert4keras_layers/<layer>.npz -- PositionEmbedding,
  SinusoidalPositionEmbedding and (conditional) LayerNormalization cases: one
  `<case>/config`, `<case>/output`, `<case>/weights/...` group per case plus
  the shared inputs.

In cross-attention cases bert4keras hides keys with the mask of its first
input (the query); the script passes the key mask there, which is what
kerasformers does with the key/value mask.

Deterministic: re-running reproduces the same files.
"""

import json
import os

os.environ.setdefault("TF_KERAS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bert4keras import layers as b4k  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAU_DIR = os.path.join(ROOT, "tests", "fixtures", "gau")
LAYERS_DIR = os.path.join(ROOT, "tests", "fixtures", "bert4keras_layers")
SEED = 20240611
HIDDEN, UNITS, KEY = 8, 12, 6
LENGTHS = [7, 4, 1]  # trailing padding; the padded positions hold random vectors too


def padding_mask(lengths, n):
    return np.arange(n)[None, :] < np.array(lengths)[:, None]


def weight_name(w):
    return w.name.split("/")[-1].split(":")[0]


def randomize(rng, weights):
    """Weights far from their init (gamma near 1, the rest N(0, 0.3))."""
    for w in weights:
        if weight_name(w) == "gamma":
            value = 1.0 + 0.2 * rng.normal(size=w.shape)
        else:
            value = 0.3 * rng.normal(size=w.shape)
        w.assign(value.astype("float32"))


def named_weights(layer, sublayers=()):
    """{'<sublayer>/<name>' or '<name>': array} for the layer's own and sublayers' weights."""
    out = {}
    for attr in sublayers:
        sub = getattr(layer, attr, None)
        for w in [] if sub is None else sub.weights:
            out[f"{attr}/{weight_name(w)}"] = w.numpy()
    for attr in ("beta", "gamma", "embeddings"):
        if hasattr(layer, attr):
            out[attr] = getattr(layer, attr).numpy()
    return out


GAU_SUBLAYERS = (
    "i_dense",
    "q_scaleoffset",
    "k_scaleoffset",
    "uq_dense",
    "k_dense",
    "v_dense",
    "o_dense",
)

# name: (layer arguments, options)
GAU_CASES = {
    "self_squared_relu": (dict(), dict()),
    "self_softmax_plus_rope_no_bias": (
        dict(use_bias=False, normalization="softmax_plus"),
        dict(rope=True),
    ),
    "self_causal_rope_gelu_unscaled": (
        dict(activation="gelu", attention_scale=False),
        dict(rope=True, causal=True),
    ),
    "self_softmax_float_bias": (dict(normalization="softmax"), dict(float_bias=True)),
    "self_unmasked_causal": (dict(), dict(padding=False, causal=True)),
    "cross_softmax_plus": (
        dict(self_attention=False, normalization="softmax_plus"),
        dict(query_length=4),
    ),
    "cross_squared_relu_rope": (dict(self_attention=False), dict(rope=True)),
}


def gau_case(rng, kwargs, options):
    kwargs = dict(dict(units=UNITS, key_size=KEY), **kwargs)
    n = max(LENGTHS)
    arrays = {}
    mask = padding_mask(LENGTHS, n) if options.get("padding", True) else None
    if kwargs.get("self_attention", True):
        arrays["x"] = rng.normal(size=(3, n, HIDDEN)).astype("float32")
        inputs, q_len = [arrays["x"]], n
    else:
        q_len = options.get("query_length", n)
        for name, length in (("q", q_len), ("k", n), ("v", n)):
            arrays[name] = rng.normal(size=(3, length, HIDDEN)).astype("float32")
        inputs = [arrays["q"], arrays["k"], arrays["v"]]
    call = {}
    if options.get("causal"):
        arrays["attention_mask"] = np.tril(np.ones((q_len, n), bool))[None]
    elif options.get("float_bias"):
        arrays["attention_bias"] = rng.normal(size=(3, q_len, n)).astype("float32")
    bias = arrays.get("attention_mask", arrays.get("attention_bias"))
    if bias is not None:
        inputs.append(tf.constant(bias))
        call["a_bias"] = True
    if options.get("rope"):
        sinusoidal = b4k.SinusoidalPositionEmbedding(KEY, merge_mode="zero")(
            arrays["x" if "x" in arrays else "k"]
        )
        inputs.append(sinusoidal)
        call["p_bias"] = "rotary"
    masks = [None if mask is None else tf.constant(mask)] + [None] * (len(inputs) - 1)
    layer = b4k.GatedAttentionUnit(**kwargs)
    layer(
        inputs if len(inputs) > 1 else inputs[0],
        mask=masks if len(inputs) > 1 else masks[0],
        **call,
    )
    randomize(rng, layer.weights)
    output = layer(
        inputs if len(inputs) > 1 else inputs[0],
        mask=masks if len(inputs) > 1 else masks[0],
        **call,
    )
    arrays.update(
        config=np.array(json.dumps(kwargs)),
        rope=np.array(int(bool(options.get("rope")))),
        output=output.numpy(),
    )
    if mask is not None:
        arrays["mask"] = mask
    arrays.update({f"weights/{k}": v for k, v in named_weights(layer, GAU_SUBLAYERS).items()})
    return arrays


def position_embedding_cases(rng):
    x = rng.normal(size=(2, 12, 4)).astype("float32")
    ids = rng.randint(0, 25, size=(2, 12)).astype("int32")
    arrays = {"x": x, "position_ids": ids}
    cases = {
        "add": dict(merge_mode="add"),
        "mul": dict(merge_mode="mul"),
        "zero": dict(merge_mode="zero"),
        "concat": dict(merge_mode="concat", output_dim=3),
        "hierarchical_add": dict(merge_mode="add", hierarchical=True, input_dim=5),
        "hierarchical_custom_ids": dict(
            merge_mode="add", hierarchical=0.3, input_dim=5, custom_position_ids=True
        ),
        "custom_ids_concat": dict(
            merge_mode="concat", output_dim=3, input_dim=25, custom_position_ids=True
        ),
    }
    for name, kwargs in cases.items():
        kwargs = dict(dict(input_dim=12, output_dim=4), **kwargs)
        layer = b4k.PositionEmbedding(**kwargs)
        inputs = [x, ids] if kwargs.get("custom_position_ids") else x
        layer(inputs)
        randomize(rng, layer.weights)
        arrays[f"{name}/config"] = np.array(json.dumps(kwargs))
        arrays[f"{name}/output"] = layer(inputs).numpy()
        arrays.update({f"{name}/weights/{k}": v for k, v in named_weights(layer).items()})
    return arrays


def sinusoidal_cases(rng):
    x = rng.normal(size=(2, 9, 6)).astype("float32")
    ids = rng.randint(0, 300, size=(2, 9)).astype("int32")
    arrays = {"x": x, "position_ids": ids}
    cases = {
        "add": dict(merge_mode="add"),
        "mul": dict(merge_mode="mul"),
        "zero": dict(merge_mode="zero", output_dim=8),
        "concat": dict(merge_mode="concat", output_dim=4),
        "custom_ids_add": dict(merge_mode="add", custom_position_ids=True),
        "custom_ids_zero": dict(merge_mode="zero", custom_position_ids=True, output_dim=10),
    }
    for name, kwargs in cases.items():
        kwargs = dict(dict(output_dim=6), **kwargs)
        layer = b4k.SinusoidalPositionEmbedding(**kwargs)
        inputs = [x, ids] if kwargs.get("custom_position_ids") else x
        arrays[f"{name}/config"] = np.array(json.dumps(kwargs))
        arrays[f"{name}/output"] = layer(inputs).numpy()
    return arrays


def layer_norm_cases(rng):
    x = (3.0 * rng.normal(size=(3, 5, 6)) + 1.0).astype("float32")
    cond = rng.normal(size=(3, 4)).astype("float32")
    arrays = {"x": x, "cond": cond}
    cases = {
        "standard": dict(),
        "rms": dict(zero_mean=False, offset=False, epsilon=1e-6),
        "parameter_free": dict(scale=False, offset=False),
        "conditional": dict(conditional=True),
        "conditional_hidden": dict(
            conditional=True, hidden_units=5, hidden_activation="relu", epsilon=1e-12
        ),
        "conditional_scale_only": dict(conditional=True, offset=False, hidden_units=3),
    }
    sublayers = ("hidden_dense", "beta_dense", "gamma_dense")
    for name, kwargs in cases.items():
        layer = b4k.LayerNormalization(**kwargs)
        inputs = [x, cond] if kwargs.get("conditional") else x
        layer(inputs)
        randomize(rng, layer.weights)
        arrays[f"{name}/config"] = np.array(json.dumps(kwargs))
        arrays[f"{name}/output"] = layer(inputs).numpy()
        arrays.update(
            {f"{name}/weights/{k}": v for k, v in named_weights(layer, sublayers).items()}
        )
    return arrays


def save(directory, name, arrays):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + ".npz")
    np.savez_compressed(path, **arrays)
    with np.load(path, allow_pickle=False) as f:  # loadable without pickles
        assert sorted(f.files) == sorted(arrays)
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def main():
    tf.keras.utils.set_random_seed(SEED)
    rng = np.random.RandomState(SEED)
    for name, (kwargs, options) in GAU_CASES.items():
        save(GAU_DIR, name, gau_case(rng, kwargs, options))
    save(LAYERS_DIR, "position_embedding", position_embedding_cases(rng))
    save(LAYERS_DIR, "sinusoidal_position_embedding", sinusoidal_cases(rng))
    save(LAYERS_DIR, "layer_normalization", layer_norm_cases(rng))


if __name__ == "__main__":
    main()
