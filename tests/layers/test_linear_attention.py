"""Linear attention, Performer and the entropy-invariant scale against NumPy formulas;
the recurrent-state decoding against the full causal forward (#17)."""

import numpy as np
import pytest
from keras import ops

from kerasformers import build_transformer_model
from kerasformers.generation import generate
from kerasformers.generation.runner import Runner
from kerasformers.layers import MultiHeadAttention
from kerasformers.layers import linear_attention as la

RNG = np.random.RandomState(0)
B, N, H, D = 2, 10, 2, 4


def _np_features(x, kind, projection=None, is_query=False):
    if kind == "elu":
        return np.where(x > 0, x + 1, np.exp(x))
    if kind == "relu":
        return np.maximum(x, 0)
    wx = np.einsum("bnhd,md->bnhm", x, projection)  # FAVOR+, Choromanski et al. eq. (7)
    return np.exp(wx - 0.5 * (x**2).sum(-1, keepdims=True)) / np.sqrt(len(projection))


def _visible(mode, real, segments=None):
    """[b, q, k] boolean visibility, as AttentionMask builds it."""
    n = real.shape[1]
    if mode == "padding":
        return np.broadcast_to(real[:, None, :], (len(real), n, n))
    if mode == "lm":
        return real[:, None, :] & np.tri(n, dtype=bool)[None]
    cs = np.cumsum(segments, 1)
    return real[:, None, :] & (cs[:, None, :] <= cs[:, :, None])


def _np_linear(q, k, v, kind, visible, projection=None):
    """o_i = sum_j sim(q_i, k_j) v_j / sum_j sim(q_i, k_j) over the visible keys."""
    if kind == "softmax":  # softmax over features for q, over the visible keys for k
        qf = np.exp(q) / np.exp(q).sum(-1, keepdims=True)
        e = np.exp(k)[:, None] * visible[:, :, :, None, None]  # [b, i, j, h, d]
        ksm = e / np.maximum(e.sum(2, keepdims=True), 1e-30)
        return np.einsum("bihd,bijhd,bjhe->bihe", qf, ksm, v)
    qf, kf = _np_features(q, kind, projection, True), _np_features(k, kind, projection)
    sim = np.einsum("bihm,bjhm->bhij", qf, kf) * visible[:, None]
    den = sim.sum(-1).transpose(0, 2, 1)[..., None]  # [b, i, h, 1]
    o = np.einsum("bhij,bjhe->bihe", sim, v) / np.maximum(den, 1e-30)
    return np.where(den > 0, o, 0.0)


def _key_sets(mode, real, segments):
    from kerasformers.layers.core import key_sets

    return key_sets(ops.convert_to_tensor(real), mode, segments)


@pytest.mark.parametrize(
    "kind, mode",
    [(k, m) for k in ("elu", "softmax", "performer") for m in ("padding", "lm", "unilm")]
    + [("relu", "lm")],
)
def test_kernel_matches_numpy_and_state_continues(kind, mode):
    """Every feature map under every mask equals the NumPy formula (chunks of 4 over
    10 positions: a partial last chunk); then the same keys fed as 6 + 4 positions
    through the recurrent state give the same outputs."""
    q, k, v = (RNG.normal(size=(B, N, H, D)).astype("float32") for _ in range(3))
    real = np.ones((B, N), bool)
    real[1, 7:] = False
    segments = np.array([[0] * 4 + [1] * 6] * B)
    projection = la.orthogonal_projection(16, D, seed=1) if kind == "performer" else None
    sets = ops.convert_to_numpy(_key_sets(mode, real, segments))
    o, _ = la.linear_attention(
        q, k, v, kind, sets[:, 0], sets[:, 1], projection=projection, chunk=4
    )
    ref = _np_linear(q, k, v, kind, _visible(mode, real, segments), projection)
    rows = real if mode != "padding" else np.ones_like(real)
    np.testing.assert_allclose(ops.convert_to_numpy(o)[rows], ref[rows], atol=1e-4, rtol=1e-4)
    if mode == "padding":
        return
    m = 16 if kind == "performer" else D
    state = la.empty_state(B, H, m, D, kind)
    first, state = la.linear_attention(
        q[:, :6], k[:, :6], v[:, :6], kind, sets[:, 0, :6], sets[:, 1, :6], state, projection
    )
    second, _ = la.linear_attention(
        q[:, 6:], k[:, 6:], v[:, 6:], kind, sets[:, 0, 6:], sets[:, 1, 6:], state, projection
    )
    steps = np.concatenate([ops.convert_to_numpy(first), ops.convert_to_numpy(second)], 1)
    np.testing.assert_allclose(steps[real], ops.convert_to_numpy(o)[real], atol=1e-4, rtol=1e-4)


def test_rotary_linear_form_matches_numpy():
    """RoFormer's linear form: RoPE on the numerator's features, the denominator
    unrotated (Su et al. 2021, eq. 19), causal."""
    from kerasformers.ops import apply_rotary_position_embeddings, sinusoidal_embeddings

    q, k, v = (RNG.normal(size=(1, N, H, D)).astype("float32") for _ in range(3))
    pos = sinusoidal_embeddings(ops.arange(N)[None], D)

    def rot(x):
        return apply_rotary_position_embeddings(pos, x)

    o, _ = la.linear_attention(q, k, v, "elu", None, np.ones((1, N), bool), rotary=rot, chunk=4)
    qf, kf = _np_features(q, "elu"), _np_features(k, "elu")
    qr, kr = ops.convert_to_numpy(rot(qf)), ops.convert_to_numpy(rot(kf))
    tri = np.tri(N)[None, None]
    num = np.einsum("bhij,bjhe->bihe", np.einsum("bihm,bjhm->bhij", qr, kr) * tri, v)
    den = (np.einsum("bihm,bjhm->bhij", qf, kf) * tri).sum(-1).transpose(0, 2, 1)
    np.testing.assert_allclose(ops.convert_to_numpy(o), num / den[..., None], atol=1e-4)


def test_performer_converges_to_softmax_attention():
    """FAVOR+ estimates softmax attention, better with more features. Measured here
    (n=64, d=16, 2 heads, q and k ~ N(0, 0.5^2)), max |error| of the output vs exact
    softmax attention, mean over 3 projections: 16 features 0.36, 64: 0.18,
    256: 0.089, 1024: 0.045, 4096: 0.022 (the 1/sqrt(m) of a Monte-Carlo estimate)."""
    n, d = 64, 16
    rng = np.random.RandomState(3)
    q, k = (0.5 * rng.normal(size=(1, n, 2, d)).astype("float32") for _ in range(2))
    v = rng.normal(size=(1, n, 2, d)).astype("float32")
    s = np.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    exact = np.einsum("bhij,bjhe->bihe", p / p.sum(-1, keepdims=True), v)
    errors = []
    for m in (16, 64, 256, 1024, 4096):
        err = []
        for seed in range(3):
            w = la.orthogonal_projection(m, d, seed)
            o, _ = la.linear_attention(q * d**-0.25, k * d**-0.25, v, "performer", projection=w)
            err.append(np.abs(ops.convert_to_numpy(o) - exact).max())
        errors.append(float(np.mean(err)))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 and errors[0] > 4 * errors[-1], errors


def test_entropy_invariant_scale_matches_numpy():
    """scores * log(n_i) / log(n_train) / sqrt(d), n_i the keys query i sees."""
    att = MultiHeadAttention(
        heads=H, head_size=D, attention_scale="entropy_invariant", training_length=16
    )
    x = RNG.normal(size=(B, N, H * D)).astype("float32")
    real = np.ones((B, N), bool)
    real[1, 6:] = False
    mask = _visible("lm", real)[:, None]
    out = ops.convert_to_numpy(att(x, attention_mask=mask))
    w = {
        p.split("/")[-2] + "/" + p.split("/")[-1]: ops.convert_to_numpy(v)
        for p, v in ((v.path, v) for v in att.weights)
    }

    def proj(name):
        return (x @ w[f"{name}/kernel"] + w[f"{name}/bias"]).reshape(B, N, H, D)

    qw, kw, vw = proj("q_dense"), proj("k_dense"), proj("v_dense")
    n_i = mask.sum(-1, keepdims=True)  # [b, 1, q, 1]
    s = np.einsum("bihd,bjhd->bhij", qw, kw) * np.log(np.maximum(n_i, 1)) / np.log(16) / np.sqrt(D)
    s = np.where(mask, s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    o = np.einsum("bhij,bjhe->bihe", p, vw).reshape(B, N, H * D)
    ref = o @ w["o_dense/kernel"] + w["o_dense/bias"]
    np.testing.assert_allclose(out[real], ref[real], atol=1e-4, rtol=1e-4)


def _tiny(model="gpt2", layers=2, **kwargs):
    if model == "gpt2":
        kwargs.setdefault("final_activation", "linear")
    return build_transformer_model(
        None,
        model=model,
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        return_keras_model=False,
        **kwargs,
    )


CACHED = {
    "linear-softmax": dict(attention_type="linear", feature_map="softmax"),
    "performer": dict(attention_type="performer", num_random_features=12),
    "entropy-invariant": dict(attention_scale="entropy_invariant", training_length=4),
}


@pytest.mark.parametrize("name", sorted(CACHED))
def test_recurrent_steps_equal_full_causal_forward(name):
    """GPT2 (lm): a 5-token prompt then 2 single tokens through init_cache /
    call_with_cache equal the full forward (logits, <= 1e-4); a linear model's
    cache holds a state whose size does not depend on max_length."""
    t = _tiny(**CACHED[name])
    ids = np.random.RandomState(1).randint(1, 40, (2, 7))
    full = ops.convert_to_numpy(t.model(ids))
    cache = t.init_cache(2, 16)
    outs = []
    for a, b in ((0, 5), (5, 6), (6, 7)):
        o, cache = t.call_with_cache(ids[:, a:b], cache)
        outs.append(ops.convert_to_numpy(o))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-4, rtol=1e-4)
    if name != "entropy-invariant":
        sizes = [tuple(s.shape) for s in cache["self"][0]]
        assert sizes == [tuple(s.shape) for s in t.init_cache(2, 512)["self"][0]]


def test_unilm_recurrent_state_and_generate():
    """RoFormer as UniLM with Performer attention: the source in one call, then target
    tokens one by one, equal the full forward."""
    t = _tiny("roformer", application="unilm", attention_type="performer", with_mlm="linear")
    ids = np.random.RandomState(2).randint(1, 40, (1, 6))
    seg = np.array([[0] * 4 + [1] * 2])
    full = ops.convert_to_numpy(t.model([ids, seg]))
    cache = t.init_cache(1, 16)
    outs = []
    o, cache = t.call_with_cache([ids[:, :4], seg[:, :4]], cache)
    outs.append(ops.convert_to_numpy(o))
    for i in range(4, 6):
        o, cache = t.call_with_cache([ids[:, i : i + 1], seg[:, i : i + 1]], cache)
        outs.append(ops.convert_to_numpy(o))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-4, rtol=1e-4)


def test_gpt2_linear_generate_equals_full_model_greedy():
    """`generate` (greedy, on the recurrent state): every new token is the argmax
    of the full model's logits over the sequence before it."""
    t = _tiny(layers=1, attention_type="linear", feature_map="relu")
    prompt = [5, 9, 3]
    new = generate(t, [prompt], max_new_tokens=5, loop="host")
    new = [int(i) for i in np.asarray(new[0]).reshape(-1)]
    tokens = prompt + new[-5:]
    logits = ops.convert_to_numpy(t.model(np.array([tokens])))[0]
    assert [int(i) for i in logits[2:-1].argmax(-1)] == tokens[3:]


def test_the_cache_bound_counts_the_recurrent_state(monkeypatch):
    """Runner.max_cache_elements bounds linear attention's state, not a key/value cache
    of the length: 1 layer x 2 heads x 8 features x (8 + 2) = 160 elements per row."""
    linear = Runner(_tiny(layers=1, attention_type="linear", feature_map="relu"))
    softmax = Runner(_tiny(layers=1))
    monkeypatch.setattr(Runner, "max_cache_elements", 400)
    linear.check([3, 3], max_new_tokens=200)  # 320 elements, whatever the length
    with pytest.raises(ValueError, match=r"rows x .* positions"):
        softmax.check([3, 3], max_new_tokens=200)
    with pytest.raises(ValueError, match=r"3 rows need a recurrent state of 480 elements"):
        linear.check([3, 3, 3], max_new_tokens=1)


def test_encoder_padding_is_respected():
    """BERT with linear attention: a padded row's real positions equal the same
    sequence unpadded (padding keys never reach the sums)."""
    t = _tiny("bert", attention_type="linear", feature_map="softmax")
    ids = np.array([[7, 8, 9, 10, 11, 12]])
    padded = np.array([[7, 8, 9, 10, 11, 12, 0, 0, 0]])
    a = ops.convert_to_numpy(t.model([ids, np.zeros_like(ids)]))
    b = ops.convert_to_numpy(t.model([padded, np.zeros_like(padded)]))
    np.testing.assert_allclose(b[:, :6], a, atol=1e-5)


def test_redrawn_projection_changes_in_training_only():
    att = MultiHeadAttention(heads=1, head_size=4, attention_type="performer", redraw_features=True)
    x = RNG.normal(size=(1, 5, 4)).astype("float32")
    infer = [ops.convert_to_numpy(att(x)) for _ in range(2)]
    train = [ops.convert_to_numpy(att(x, training=True)) for _ in range(2)]
    np.testing.assert_allclose(infer[0], infer[1])
    assert np.abs(train[0] - train[1]).max() > 1e-6


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(model="nezha", attention_type="linear"), "relative position bias"),
        (dict(model="t5.1.1", attention_scale="entropy_invariant"), "not MultiHeadAttention"),
        (dict(attention_type="linear", feature_map="tanh"), "feature_map"),
        (dict(attention_type="fast"), "attention_type must be"),
        (dict(attention_type="linear", residual_attention_scores=True), "never forms"),
        (dict(attention_type="linear", num_random_features=8), "performer"),
        (dict(training_length=64), "entropy_invariant"),
        (dict(attention_scale="entropy_invariant", training_length=1), ">= 2"),
    ],
)
def test_bad_options_are_refused(kwargs, error):
    kwargs = {"model": "bert", **kwargs}
    with pytest.raises(ValueError, match=error):
        build_transformer_model(
            None,
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            **kwargs,
        )


def test_a_query_key_mask_is_refused_by_linear_attention():
    att = MultiHeadAttention(heads=1, head_size=4, attention_type="linear")
    x = np.ones((1, 3, 4), "float32")
    with pytest.raises(ValueError, match="key sets"):
        att(x, attention_mask=np.ones((1, 1, 3, 3), bool))
