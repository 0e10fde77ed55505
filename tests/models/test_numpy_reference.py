"""roformer_v2 and albert_unshared equal an independent NumPy (float64) forward pass.

No reference implementation of either exists, so the maths is written here from
the architecture description (SPEC §1.2), fed random weights (std ~0.2, so wrong
maths cannot pass) keyed by the original Google TF variable names, and compared
with our model loaded from the same dict: max |diff| <= 1e-4 at every real
position of a padded batch.

Nothing in this file uses the package's layers, tables or maths: only the
builder and the weight names of the original checkpoints.
"""

import math

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.models import ALBERT_Unshared, RoFormerV2
from tests.utils import assert_close, batch, run, single_thread_torch  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

ALBERT = "bert/encoder/transformer/group_0/inner_group_0"
_erf = np.vectorize(math.erf, otypes=[np.float64])


# ---------------------------------------------------------------- NumPy maths
def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def rms_norm(x, eps):
    """RoFormerV2's parameter-free norm: no centring, no scale, no offset."""
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def rope(x):
    """Rotary embedding on [b, n, heads, d], interleaved pairs (x0,x1), (x2,x3), ...

    Pair k at position p is rotated by p * 10000^(-2k/d).
    """
    n, d = x.shape[1], x.shape[-1]
    theta = np.arange(n)[:, None] * np.power(10000.0, -2.0 * np.arange(d // 2) / d)[None]
    cos, sin = np.cos(theta)[None, :, None], np.sin(theta)[None, :, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out


def attention(x, w, ids, heads, prefix, bias=True, rotary=False):
    """Multi-head self-attention; keys at padding (id 0) are hidden."""

    def dense(h, name):
        y = h @ w[f"{prefix}/{name}/kernel"]
        return y + w[f"{prefix}/{name}/bias"] if bias else y

    b, n, _ = x.shape
    q, k, v = (
        dense(x, f"self/{name}").reshape(b, n, heads, -1) for name in ("query", "key", "value")
    )
    if rotary:
        q, k = rope(q), rope(k)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = np.where((ids != 0)[:, None, None, :], scores, -np.inf)
    o = np.einsum("bhqk,bkhd->bqhd", softmax(scores), v).reshape(b, n, -1)
    return dense(o, "output/dense")


# ---------------------------------------------------------------- RoFormerV2
def roformer_v2_weights(cfg, seed=0, embedding_std=0.2):
    rng = np.random.RandomState(seed)
    V, E, H, I = (
        cfg["vocab_size"],
        cfg["embedding_size"],
        cfg["hidden_size"],
        cfg["intermediate_size"],
    )

    def normal(*shape, std=0.2):
        return (rng.randn(*shape) * std).astype("float32")

    w = {
        "bert/embeddings/word_embeddings": normal(V, E, std=embedding_std),
        "bert/embeddings/token_type_embeddings": normal(2, E, std=embedding_std),
    }
    if E != H:
        w["bert/encoder/embedding_hidden_mapping_in/kernel"] = normal(E, H)
        w["cls/predictions/transform/dense/kernel"] = normal(H, E)  # Output-Mapping
    for i in range(cfg["num_hidden_layers"]):
        g = f"bert/encoder/layer_{i}"
        for name in ("query", "key", "value"):
            w[f"{g}/attention/self/{name}/kernel"] = normal(H, H)
        w[f"{g}/attention/output/dense/kernel"] = normal(H, H)
        w[f"{g}/intermediate/dense/kernel"] = normal(H, I)
        w[f"{g}/output/dense/kernel"] = normal(I, H)
    return w


def roformer_v2_numpy(w, cfg, ids, seg, eps):
    """Returns (sequence output, MLM logits) in float64."""
    w = {k: v.astype("float64") for k, v in w.items()}
    act = ACTIVATIONS[cfg["hidden_act"]]
    x = w["bert/embeddings/word_embeddings"][ids] + w["bert/embeddings/token_type_embeddings"][seg]
    x = rms_norm(x, eps)
    if cfg["embedding_size"] != cfg["hidden_size"]:
        x = x @ w["bert/encoder/embedding_hidden_mapping_in/kernel"]
    for i in range(cfg["num_hidden_layers"]):
        g = f"bert/encoder/layer_{i}"
        x = rms_norm(
            x
            + attention(
                x, w, ids, cfg["num_attention_heads"], f"{g}/attention", bias=False, rotary=True
            ),
            eps,
        )
        h = act(x @ w[f"{g}/intermediate/dense/kernel"]) @ w[f"{g}/output/dense/kernel"]
        x = rms_norm(x + h, eps)
    y = x
    if cfg["embedding_size"] != cfg["hidden_size"]:
        y = y @ w["cls/predictions/transform/dense/kernel"]
    return x, y @ w["bert/embeddings/word_embeddings"].T


ROFORMER_V2_CASES = {
    "relu": dict(hidden_act="relu"),
    "factorised-gelu": dict(hidden_act="gelu", embedding_size=16),
    # embeddings so small that mean(x^2) ~ eps: the norm's epsilon must be ours
    "eps-sensitive": dict(hidden_act="relu", embedding_std=3e-4),
}


@pytest.mark.parametrize("case", sorted(ROFORMER_V2_CASES))
def test_roformer_v2_equals_numpy(case):
    extra = dict(ROFORMER_V2_CASES[case])
    embedding_std = extra.pop("embedding_std", 0.2)
    cfg = {
        **dict(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            type_vocab_size=2,
            embedding_size=32,
        ),
        **extra,
    }
    w = roformer_v2_weights(cfg, embedding_std=embedding_std)
    ids, seg = batch(vocab_size=cfg["vocab_size"], lengths=(11, 7, 4))
    mask = ids != 0
    eps = RoFormerV2.layer_norm_epsilon
    assert eps == 1e-7  # the Keras default, as bert4keras' parameter-free norm
    want_seq, want_mlm = roformer_v2_numpy(w, cfg, ids, seg, eps)

    encoder = build_transformer_model(cfg, checkpoint_path=w, model="roformer_v2")
    assert_close(run(encoder, [ids, seg]), want_seq, mask, what=f"roformer_v2 {case} sequence")
    mlm = build_transformer_model(cfg, checkpoint_path=w, model="roformer_v2", with_mlm="linear")
    assert_close(run(mlm, [ids, seg]), want_mlm, mask, what=f"roformer_v2 {case} MLM")
    # the default MLM activation is softmax over the same logits
    probs = build_transformer_model(cfg, checkpoint_path=w, model="roformer_v2", with_mlm=True)
    assert_close(
        run(probs, [ids, seg]),
        softmax(want_mlm),
        mask,
        what=f"roformer_v2 {case} MLM probabilities",
    )


# ---------------------------------------------------------------- ALBERT (shared and not)
def albert_weights(cfg, seed=0):
    rng = np.random.RandomState(seed)
    V, E, H, I, P = (
        cfg[k]
        for k in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "intermediate_size",
            "max_position_embeddings",
        )
    )

    def normal(*shape, std=0.2):
        return (rng.randn(*shape) * std).astype("float32")

    def norm(prefix, dim):
        w[f"{prefix}/gamma"] = 1.0 + normal(dim, std=0.1)
        w[f"{prefix}/beta"] = normal(dim, std=0.1)

    def dense(prefix, n_in, n_out):
        w[f"{prefix}/kernel"] = normal(n_in, n_out)
        w[f"{prefix}/bias"] = normal(n_out, std=0.1)

    w = {
        "bert/embeddings/word_embeddings": normal(V, E),
        "bert/embeddings/token_type_embeddings": normal(2, E),
        "bert/embeddings/position_embeddings": normal(P, E),
    }
    norm("bert/embeddings/LayerNorm", E)
    dense("bert/encoder/embedding_hidden_mapping_in", E, H)
    for name in ("query", "key", "value"):
        dense(f"{ALBERT}/attention_1/self/{name}", H, H)
    dense(f"{ALBERT}/attention_1/output/dense", H, H)
    norm(f"{ALBERT}/LayerNorm", H)
    dense(f"{ALBERT}/ffn_1/intermediate/dense", H, I)
    dense(f"{ALBERT}/ffn_1/intermediate/output/dense", I, H)
    norm(f"{ALBERT}/LayerNorm_1", H)
    dense("bert/pooler/dense", H, H)
    w["cls/seq_relationship/output_weights"] = normal(2, H)  # stored transposed
    w["cls/seq_relationship/output_bias"] = normal(2, std=0.1)
    dense("cls/predictions/transform/dense", H, E)
    norm("cls/predictions/transform/LayerNorm", E)
    w["cls/predictions/output_bias"] = normal(V, std=0.1)
    return w


def albert_numpy(w, cfg, ids, seg, eps, block=lambda i: ALBERT):
    """Returns (sequence output, NSP probabilities, MLM logits) in float64.

    `block(i)`: the name prefix of layer i's weights in `w` (ALBERT's one shared group by
    default; a different prefix per layer for an unshared model with its own weights).
    """
    w = {k: v.astype("float64") for k, v in w.items()}
    act = ACTIVATIONS[cfg["hidden_act"]]

    def ln(x, prefix):
        return layer_norm(x, w[f"{prefix}/gamma"], w[f"{prefix}/beta"], eps)

    def dense(x, prefix):
        return x @ w[f"{prefix}/kernel"] + w[f"{prefix}/bias"]

    n = ids.shape[1]
    x = (
        w["bert/embeddings/word_embeddings"][ids]
        + w["bert/embeddings/token_type_embeddings"][seg]
        + w["bert/embeddings/position_embeddings"][np.arange(n)][None]
    )
    x = dense(ln(x, "bert/embeddings/LayerNorm"), "bert/encoder/embedding_hidden_mapping_in")
    for i in range(cfg["num_hidden_layers"]):
        g = block(i)
        x = ln(
            x + attention(x, w, ids, cfg["num_attention_heads"], f"{g}/attention_1"),
            f"{g}/LayerNorm",
        )
        h = dense(
            act(dense(x, f"{g}/ffn_1/intermediate/dense")),
            f"{g}/ffn_1/intermediate/output/dense",
        )
        x = ln(x + h, f"{g}/LayerNorm_1")
    pool = np.tanh(dense(x[:, 0], "bert/pooler/dense"))
    nsp = softmax(
        pool @ w["cls/seq_relationship/output_weights"].T + w["cls/seq_relationship/output_bias"]
    )
    y = ln(act(dense(x, "cls/predictions/transform/dense")), "cls/predictions/transform/LayerNorm")
    mlm = y @ w["bert/embeddings/word_embeddings"].T + w["cls/predictions/output_bias"]
    return x, nsp, mlm


@pytest.fixture(params=["gelu", "gelu_new"])
def albert_case(request):
    """A 2-layer factorised ALBERT config, its random weights and a padded batch."""
    cfg = dict(
        vocab_size=60,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=32,
        type_vocab_size=2,
        hidden_act=request.param,
    )
    w = albert_weights(cfg)
    ids, seg = batch(vocab_size=cfg["vocab_size"], lengths=(12, 8, 3))
    return cfg, w, ids, seg


def test_albert_unshared_equals_numpy(albert_case):
    cfg, w, ids, seg = albert_case
    mask = ids != 0
    want_seq, want_nsp, want_mlm = albert_numpy(
        w, cfg, ids, seg, ALBERT_Unshared.layer_norm_epsilon
    )

    encoder = build_transformer_model(cfg, checkpoint_path=w, model="albert_unshared")
    names = [layer.name for layer in encoder.layers]
    assert "Transformer-1-FeedForward-Norm" in names  # one set of layers per block
    assert_close(run(encoder, [ids, seg]), want_seq, mask, what="albert_unshared sequence")

    full = build_transformer_model(
        cfg, checkpoint_path=w, model="albert_unshared", with_nsp=True, with_mlm="linear"
    )
    nsp, mlm = run(full, [ids, seg])
    assert_close(nsp, want_nsp, what="albert_unshared NSP")
    assert_close(mlm, want_mlm, mask, what="albert_unshared MLM")


def test_albert_unshared_with_its_own_weights_per_layer_equals_numpy(albert_case):
    """Loaded from ALBERT's shared group, then every block given different weights: the
    NumPy pass with those per-layer weights agrees, and it tells the layers apart (the
    same weights in the other order, or layer 0's everywhere, give other outputs)."""
    cfg, w, ids, seg = albert_case
    cfg = dict(cfg, num_hidden_layers=3)
    mask = ids != 0
    model = build_transformer_model(
        cfg, checkpoint_path=w, model="albert_unshared", with_mlm="linear", return_keras_model=False
    )
    variables = model.variables()
    rng = np.random.RandomState(7)
    own = dict(w)  # + "layer_{i}/<name inside the group>" for each block's own weights
    for path, google, _ in model.weight_table():
        if not (isinstance(google, str) and google.startswith(ALBERT + "/")):
            continue
        i = int(path.split("-")[1])
        value = w[google] + (rng.randn(*w[google].shape) * 0.2).astype("float32")
        variables[path].assign(value)
        own[f"layer_{i}" + google[len(ALBERT) :]] = value
    eps = ALBERT_Unshared.layer_norm_epsilon
    got = run(model.model, [ids, seg])
    _, _, want = albert_numpy(own, cfg, ids, seg, eps, block=lambda i: f"layer_{i}")
    assert_close(got, want, mask, what="albert_unshared (own weights per layer) MLM")
    for name, block in (
        ("reversed", lambda i: f"layer_{2 - i}"),
        ("all layer 0", lambda i: "layer_0"),
    ):
        _, _, other = albert_numpy(own, cfg, ids, seg, eps, block=block)
        gap = np.abs(other - want)[mask].max()
        assert gap > 0.1, f"the reference cannot tell the layers apart ({name}: {gap})"


def test_albert_unshared_equals_albert(albert_case):
    cfg, w, ids, seg = albert_case
    mask = ids != 0
    _, _, want_mlm = albert_numpy(w, cfg, ids, seg, ALBERT_Unshared.layer_norm_epsilon)
    outputs = {}
    for key in ("albert", "albert_unshared"):
        model = build_transformer_model(cfg, checkpoint_path=w, model=key, with_mlm="linear")
        outputs[key] = run(model, [ids, seg])
        assert_close(outputs[key], want_mlm, mask, what=f"{key} MLM vs NumPy")
    assert_close(
        outputs["albert_unshared"],
        outputs["albert"],
        mask,
        tol=1e-5,
        what="albert_unshared vs albert",
    )


def test_albert_unshared_layers_are_untied_after_loading(albert_case):
    """Each block owns its variables: changing one layer leaves the others alone."""
    cfg, w, _, _ = albert_case
    model = build_transformer_model(cfg, checkpoint_path=w, model="albert_unshared")
    shared = w[f"{ALBERT}/ffn_1/intermediate/output/dense/kernel"].copy()  # not an alias
    kernels = [
        model.get_layer(f"Transformer-{i}-FeedForward").o_dense.kernel
        for i in range(cfg["num_hidden_layers"])
    ]
    for kernel in kernels:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel), shared)
    kernels[0].assign(np.zeros(kernels[0].shape, "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernels[1]), shared)
