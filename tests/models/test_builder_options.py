"""Every `build_transformer_model` option of issue 2, each with a check that can fail.

Tiny models (hidden 16, 1-2 layers) loaded from random dict checkpoints in the
original Google names (std ~0.2, so wrong wiring shows), compared with NumPy or
with a second model built from the same weights.
"""

import json
import math

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.models import BERT
from tests.utils import assert_close, batch, run, single_thread_torch, to_numpy  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=30,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position=16,
)
V, H = SMALL["vocab_size"], SMALL["hidden_size"]
_erf = np.vectorize(math.erf, otypes=[np.float64])


def build(model="bert", checkpoint=None, **kwargs):
    return build_transformer_model(
        None, checkpoint_path=checkpoint, model=model, **{**SMALL, **kwargs}
    )


def random_checkpoint(model="bert", seed=0, **kwargs):
    """Random weights (std 0.2) in the original Google names, for every head of `model`."""
    heads = (
        dict(with_discriminator=True)
        if model == "electra"
        else dict(with_mlm=True)
        if model == "roformer_v2"
        else dict(with_nsp=True, with_mlm=True)
    )
    transformer = build(model, return_keras_model=False, **{**heads, **kwargs})
    rng = np.random.RandomState(seed)
    out = {}
    for key, value in sorted(transformer.export_weights("google").items()):
        noise = rng.randn(*value.shape)
        if key.endswith("gamma"):
            value = 1.0 + 0.1 * noise
        else:
            value = noise * (0.2 if value.ndim > 1 else 0.1)
        out[key] = value.astype("float32")
    return out


def inputs(lengths=(9, 6, 3), seed=0):
    ids, seg = batch(vocab_size=V, lengths=lengths, seed=seed)
    return ids, seg, ids != 0


def names(model):
    return [layer.name for layer in model.layers]


def numpy_gelu(x, tanh=False):
    if tanh:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------- outputs and heads
@pytest.fixture(scope="module")
def ckpt():
    return random_checkpoint()


def test_output_rules(ckpt):
    ids, seg, mask = inputs()
    b, n = ids.shape
    seq = run(build(checkpoint=ckpt), [ids, seg])
    assert seq.shape == (b, n, H)  # no head: the sequence output

    linear = ckpt["bert/pooler/dense/kernel"], ckpt["bert/pooler/dense/bias"]
    pre_pool = seq[:, 0].astype("float64") @ linear[0] + linear[1]
    pool = run(build(checkpoint=ckpt, with_pool=True), [ids, seg])
    assert pool.shape == (b, H)  # one head: that head only
    assert_close(pool, np.tanh(pre_pool), what="pool (tanh)")
    pool_linear = run(build(checkpoint=ckpt, with_pool="linear"), [ids, seg])
    assert_close(pool_linear, pre_pool, what="with_pool='linear'")
    assert np.abs(pool_linear).max() > 1.0  # really not squashed

    nsp_kernel = ckpt["cls/seq_relationship/output_weights"]
    nsp_want = softmax(np.tanh(pre_pool) @ nsp_kernel.T + ckpt["cls/seq_relationship/output_bias"])
    nsp_model = build(checkpoint=ckpt, with_nsp=True)
    assert "Pooler-Dense" in names(nsp_model)  # with_nsp implies with_pool
    assert_close(run(nsp_model, [ids, seg]), nsp_want, what="NSP")

    logits = run(build(checkpoint=ckpt, with_mlm="linear"), [ids, seg])
    assert logits.shape == (b, n, V)
    probs = run(build(checkpoint=ckpt, with_mlm=True), [ids, seg])
    np.testing.assert_allclose(probs[mask].sum(-1), 1.0, atol=1e-5)
    assert_close(probs, softmax(logits.astype("float64")), mask, what="with_mlm=True softmax")
    assert probs.min() >= 0

    both = build(checkpoint=ckpt, with_pool=True, with_mlm="linear")
    assert len(both.outputs) == 2
    pool2, mlm2 = run(both, [ids, seg])  # [pool, mlm]
    assert_close(pool2, pool, what="[pool, mlm][0]")
    assert_close(mlm2, logits, mask, what="[pool, mlm][1]")
    nsp3, mlm3 = run(build(checkpoint=ckpt, with_nsp=True, with_mlm="linear"), [ids, seg])
    assert_close(nsp3, nsp_want, what="[nsp, mlm][0]")
    assert_close(mlm3, logits, mask, what="[nsp, mlm][1]")


def test_public_layer_names():
    model = build(embedding_size=8, dropout_rate=0.1, with_nsp=True, with_mlm=True)
    expected = [
        "Input-Token",
        "Input-Segment",
        "Embedding-Token",
        "Embedding-Segment",
        "Embedding-Token-Segment",
        "Embedding-Position",
        "Embedding-Norm",
        "Embedding-Dropout",
        "Embedding-Mapping",
        "Pooler",
        "Pooler-Dense",
        "NSP-Proba",
        "MLM-Dense",
        "MLM-Norm",
        "MLM-Bias",
        "MLM-Activation",
    ]
    for i in range(SMALL["num_hidden_layers"]):
        for block in ("MultiHeadSelfAttention", "FeedForward"):
            base = f"Transformer-{i}-{block}"
            expected += [base, f"{base}-Dropout", f"{base}-Add", f"{base}-Norm"]
    missing = sorted(set(expected) - set(names(model)))
    assert not missing, f"layers missing: {missing}"
    assert [t.name for t in model.inputs] == ["Input-Token", "Input-Segment"]


def test_last_feed_forward_norm_is_the_sequence_output(ckpt):
    """Users take `Transformer-{n-1}-FeedForward-Norm` as the encoder output."""
    ids, seg, mask = inputs()
    full = build(checkpoint=ckpt, with_mlm=True)
    last = full.get_layer(f"Transformer-{SMALL['num_hidden_layers'] - 1}-FeedForward-Norm")
    encoder = keras.Model(full.inputs, last.output)
    assert_close(
        run(encoder, [ids, seg]),
        run(build(checkpoint=ckpt), [ids, seg]),
        mask,
        what="FeedForward-Norm output",
    )


def test_albert_layer_names_are_unindexed_and_shared():
    model = build("albert", embedding_size=8, num_hidden_layers=2)
    layer_names = names(model)
    for name in (
        "Transformer-MultiHeadSelfAttention",
        "Transformer-MultiHeadSelfAttention-Norm",
        "Transformer-FeedForward",
        "Transformer-FeedForward-Norm",
        "Embedding-Mapping",
    ):
        assert name in layer_names
    assert not [n for n in layer_names if n.startswith("Transformer-0")]
    one_layer = build("albert", embedding_size=8, num_hidden_layers=1)
    assert len(model.weights) == len(one_layer.weights)  # 2 blocks, one set of weights
    unshared = build("albert_unshared", embedding_size=8, num_hidden_layers=2)
    assert "Transformer-1-FeedForward-Norm" in names(unshared)
    assert len(unshared.weights) > len(model.weights)


@pytest.mark.parametrize(
    "key, kwargs",
    [("bert", {}), ("bert", dict(segment_vocab_size=0)), ("albert", {}), ("roformer_v2", {})],
)
def test_sequence_output_carries_the_padding_mask(key, kwargs):
    """Keras implicit masking reaches the output, as in bert4keras (masked pooling, losses)."""
    model = build(key, num_hidden_layers=1, **kwargs)
    pooled = keras.Model(model.inputs, keras.layers.GlobalAveragePooling1D()(model.output))
    ids, seg, mask = inputs()
    feed = [ids] if kwargs.get("segment_vocab_size") == 0 else [ids, seg]
    seq = run(model, feed).astype("float64")
    want = (seq * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert_close(run(pooled, feed), want, what=f"{key} masked mean pooling")


# --------------------------------------------------------------- embeddings
def test_segment_vocab_size_zero(ckpt):
    ids, seg, mask = inputs()
    model = build(checkpoint=ckpt, segment_vocab_size=0)
    assert [t.name for t in model.inputs] == ["Input-Token"]
    assert "Embedding-Segment" not in names(model)
    # = a two-segment model whose segment-0 row is zero, fed segment 0 everywhere
    zeroed = dict(ckpt)
    zeroed["bert/embeddings/token_type_embeddings"] = np.zeros_like(
        ckpt["bert/embeddings/token_type_embeddings"]
    )
    with_segments = build(checkpoint=zeroed)
    assert_close(
        run(model, [ids]),
        run(with_segments, [ids, np.zeros_like(seg)]),
        mask,
        what="segment_vocab_size=0",
    )


def test_keep_tokens(ckpt):
    keep = [0, 1, 2, 17, 5, 29, 11, 3]
    model = build(checkpoint=ckpt, keep_tokens=keep, with_mlm="linear")
    assert model.output_shape[-1] == len(keep)
    table = keras.ops.convert_to_numpy(model.get_layer("Embedding-Token").embeddings)
    np.testing.assert_array_equal(table, ckpt["bert/embeddings/word_embeddings"][keep])
    bias = keras.ops.convert_to_numpy(model.get_layer("MLM-Bias").beta)
    np.testing.assert_array_equal(bias, ckpt["cls/predictions/output_bias"][keep])
    # the pruned model is the full model restricted to the kept rows
    ids, seg, mask = inputs()
    new_ids = np.where(mask, ids % (len(keep) - 1) + 1, 0).astype("int32")
    old_ids = np.asarray(keep, "int32")[new_ids]
    full = run(build(checkpoint=ckpt, with_mlm="linear"), [old_ids, seg])
    assert_close(run(model, [new_ids, seg]), full[..., keep], mask, what="keep_tokens logits")


def test_compound_tokens(ckpt):
    compound = [[3, 4], ([5, 6, 7], [1.0, 2.0, 1.0])]
    model = build(checkpoint=ckpt, compound_tokens=compound, with_mlm="linear")
    assert model.output_shape[-1] == V + 2
    emb = ckpt["bert/embeddings/word_embeddings"].astype("float64")
    table = keras.ops.convert_to_numpy(model.get_layer("Embedding-Token").embeddings)
    np.testing.assert_array_equal(table[:V], ckpt["bert/embeddings/word_embeddings"])
    np.testing.assert_allclose(table[V], (emb[3] + emb[4]) / 2, atol=1e-6)
    np.testing.assert_allclose(table[V + 1], (emb[5] + 2 * emb[6] + emb[7]) / 4, atol=1e-6)
    bias = ckpt["cls/predictions/output_bias"].astype("float64")
    got = keras.ops.convert_to_numpy(model.get_layer("MLM-Bias").beta)
    np.testing.assert_allclose(
        got[V:], [(bias[3] + bias[4]) / 2, (bias[5] + 2 * bias[6] + bias[7]) / 4], atol=1e-6
    )
    # with keep_tokens, compound ids index the kept vocabulary (bert4keras' order)
    both = build(checkpoint=ckpt, keep_tokens=[0, 1, 9, 12], compound_tokens=[[2, 3]])
    table = keras.ops.convert_to_numpy(both.get_layer("Embedding-Token").embeddings)
    assert table.shape[0] == 5
    np.testing.assert_allclose(table[4], (emb[9] + emb[12]) / 2, atol=1e-6)


def test_embedding_size_adds_embedding_mapping():
    factorised = build(embedding_size=8, with_mlm=True)
    assert "Embedding-Mapping" in names(factorised)
    assert tuple(factorised.get_layer("Embedding-Mapping").kernel.shape) == (8, H)
    assert tuple(factorised.get_layer("Embedding-Token").embeddings.shape) == (V, 8)
    assert tuple(factorised.get_layer("Embedding-Position").embeddings.shape) == (16, 8)
    assert tuple(factorised.get_layer("MLM-Dense").kernel.shape) == (H, 8)
    assert factorised.output_shape == (None, None, V)
    assert "Embedding-Mapping" not in names(build())


def test_attention_head_and_key_size():
    heads, head_size, key_size = 2, 12, 4
    model = build(num_hidden_layers=1, attention_head_size=head_size, attention_key_size=key_size)
    att = model.get_layer("Transformer-0-MultiHeadSelfAttention")
    shapes = {
        n: tuple(getattr(att, n).kernel.shape) for n in ("q_dense", "k_dense", "v_dense", "o_dense")
    }
    assert shapes == {
        "q_dense": (H, heads * key_size),
        "k_dense": (H, heads * key_size),
        "v_dense": (H, heads * head_size),
        "o_dense": (heads * head_size, H),
    }
    # the maths: scores scaled by 1/sqrt(key_size), values of head_size
    rng = np.random.RandomState(0)
    for sub in (att.q_dense, att.k_dense, att.v_dense, att.o_dense):
        sub.kernel.assign(rng.randn(*sub.kernel.shape).astype("float32") * 0.3)
        sub.bias.assign(rng.randn(*sub.bias.shape).astype("float32") * 0.1)
    x = rng.randn(3, 9, H).astype("float32")
    w = {
        n: (
            keras.ops.convert_to_numpy(getattr(att, n).kernel).astype("float64"),
            keras.ops.convert_to_numpy(getattr(att, n).bias).astype("float64"),
        )
        for n in shapes
    }
    q, k, v = (
        (x @ w[n][0] + w[n][1]).reshape(3, 9, heads, -1) for n in ("q_dense", "k_dense", "v_dense")
    )
    probs = softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(key_size))
    o = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(3, 9, -1)
    assert_close(
        to_numpy(att([x, x, x])),
        o @ w["o_dense"][0] + w["o_dense"][1],
        what="attention with key_size != head_size",
    )
    ids, seg, _ = inputs()
    assert run(model, [ids, seg]).shape == ids.shape + (H,)
    rotary = build(
        "roformer", num_hidden_layers=1, attention_head_size=head_size, attention_key_size=key_size
    )
    assert np.isfinite(run(rotary, [ids, seg])).all()


def test_max_position():
    model = build()  # SMALL sets max_position=16 (the default is 512)
    assert tuple(model.get_layer("Embedding-Position").embeddings.shape) == (16, H)


# --------------------------------------------------------------- positions
def test_custom_position_ids_bert(ckpt):
    ids, seg, mask = inputs()
    model = build(checkpoint=ckpt, custom_position_ids=True)
    assert [t.name for t in model.inputs] == ["Input-Token", "Input-Segment", "Input-Position"]
    b, n = ids.shape
    positions = np.tile(np.arange(n, dtype="int32"), (b, 1))
    plain = build(checkpoint=ckpt)
    assert_close(
        run(model, [ids, seg, positions]),
        run(plain, [ids, seg]),
        mask,
        what="custom positions = arange",
    )
    # positions + 3 = the plain model whose position table is shifted by 3 rows
    shifted = dict(ckpt)
    shifted["bert/embeddings/position_embeddings"] = np.roll(
        ckpt["bert/embeddings/position_embeddings"], -3, axis=0
    )
    assert_close(
        run(model, [ids, seg, positions + 3]),
        run(build(checkpoint=shifted), [ids, seg]),
        mask,
        what="custom positions + 3",
    )
    diff = np.abs(run(model, [ids, seg, positions + 3]) - run(plain, [ids, seg]))[mask]
    assert diff.max() > 1e-2


def test_custom_position_ids_roformer():
    ckpt = random_checkpoint("roformer")
    ids, seg, mask = inputs()
    b, n = ids.shape
    positions = np.tile(np.arange(n, dtype="int32"), (b, 1))
    model = build("roformer", checkpoint=ckpt, custom_position_ids=True)
    assert "Input-Position" in [t.name for t in model.inputs]
    plain = run(build("roformer", checkpoint=ckpt), [ids, seg])
    assert_close(run(model, [ids, seg, positions]), plain, mask, what="roformer arange")
    # RoPE only sees relative positions: a common shift changes nothing ...
    assert_close(
        run(model, [ids, seg, positions + 5]), plain, mask, tol=2e-4, what="roformer positions + 5"
    )
    # ... but changing the distances does
    stretched = run(model, [ids, seg, positions * 2])
    assert np.abs(stretched - plain)[mask].max() > 1e-2


def hierarchical_table(table, length, alpha):
    n = table.shape[0]
    table = table.astype("float64")
    u = (table - alpha * table[:1]) / (1 - alpha)
    p = np.arange(length)
    return alpha * u[p // n] + (1 - alpha) * u[p % n]


def test_hierarchical_position(ckpt):
    table = ckpt["bert/embeddings/position_embeddings"]
    small = {**ckpt, "bert/embeddings/position_embeddings": table[:8]}
    ids, seg, mask = inputs(lengths=(20, 14, 9))
    for alpha, option in ((0.4, True), (0.2, 0.2)):
        # = a plain model with 20 learned positions holding the hierarchical table
        model = build(checkpoint=small, max_position=8, hierarchical_position=option)
        unrolled = {
            **ckpt,
            "bert/embeddings/position_embeddings": hierarchical_table(table[:8], 20, alpha).astype(
                "float32"
            ),
        }
        want = run(build(checkpoint=unrolled, max_position=20), [ids, seg])
        assert_close(run(model, [ids, seg]), want, mask, what=f"hierarchical alpha={alpha}")
    # causal, so the first 8 positions only see the first 8 tokens, where the
    # hierarchical positions are the learned ones: equal to the plain model
    lm = build(
        checkpoint=small,
        max_position=8,
        hierarchical_position=True,
        application="lm",
        with_mlm=False,
    )
    out = run(lm, [ids, seg])
    assert out.shape == (3, 20, H) and np.isfinite(out).all()
    other = {
        **ckpt,
        "bert/embeddings/position_embeddings": np.concatenate([table[:8], table[:12][::-1]]),
    }  # rows 8+ are not the hierarchical ones
    plain = run(
        build(checkpoint=other, max_position=20, application="lm", with_mlm=False), [ids, seg]
    )
    assert_close(out[:, :8], plain[:, :8], what="hierarchical first 8 positions")
    assert np.abs(out[:, 8:] - plain[:, 8:])[mask[:, 8:]].max() > 1e-2


# --------------------------------------------------------------- attention variants
def bert_numpy(w, ids, seg, residual_scores=False, heads=SMALL["num_attention_heads"]):
    """BERT's sequence output in float64 from Google-named weights, written from the papers.

    `residual_scores`: RealFormer as bert4keras 0.11.5 does it: each layer's softmax takes
    its scaled q.k scores plus the previous layer's own scaled q.k scores (not their sum
    with what that layer received: the paper's running sum differs from the third layer on).
    """
    w = {k: v.astype("float64") for k, v in w.items()}
    eps = BERT.layer_norm_epsilon

    def ln(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[f"{prefix}/gamma"] + w[f"{prefix}/beta"]

    def dense(x, prefix):
        return x @ w[f"{prefix}/kernel"] + w[f"{prefix}/bias"]

    b, n = ids.shape
    x = (
        w["bert/embeddings/word_embeddings"][ids]
        + w["bert/embeddings/token_type_embeddings"][seg]
        + w["bert/embeddings/position_embeddings"][:n][None]
    )
    x = ln(x, "bert/embeddings/LayerNorm")
    previous = 0.0
    layers = 1 + max(int(k.split("/")[2][6:]) for k in w if k.startswith("bert/encoder/layer_"))
    for i in range(layers):
        g = f"bert/encoder/layer_{i}"
        q, k, v = (
            dense(x, f"{g}/attention/self/{name}").reshape(b, n, heads, -1)
            for name in ("query", "key", "value")
        )
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        if residual_scores:
            scores, previous = scores + previous, scores
        scores = np.where((ids != 0)[:, None, None, :], scores, -np.inf)
        o = np.einsum("bhqk,bkhd->bqhd", softmax(scores), v).reshape(b, n, -1)
        x = ln(x + dense(o, f"{g}/attention/output/dense"), f"{g}/attention/output/LayerNorm")
        h = dense(numpy_gelu(dense(x, f"{g}/intermediate/dense")), f"{g}/output/dense")
        x = ln(x + h, f"{g}/output/LayerNorm")
    return x


def test_residual_attention_scores(ckpt):
    ids, seg, mask = inputs()
    plain = run(build(checkpoint=ckpt), [ids, seg])
    real = build(checkpoint=ckpt, residual_attention_scores=True)
    residual = run(real, [ids, seg])
    assert_close(plain, bert_numpy(ckpt, ids, seg), mask, what="plain BERT vs NumPy")
    assert_close(residual, bert_numpy(ckpt, ids, seg, True), mask, what="RealFormer vs NumPy")
    # three layers: the third layer's bias is the second layer's own scores, not a running
    # sum (checked against bert4keras 0.11.5 itself: 9e-7; the running sum is 0.89 away)
    three = random_checkpoint(num_hidden_layers=3, seed=1)
    want = bert_numpy(three, ids, seg, residual_scores=True)
    got = run(
        build(checkpoint=three, num_hidden_layers=3, residual_attention_scores=True), [ids, seg]
    )
    assert_close(got, want, mask, what="RealFormer, 3 layers, vs NumPy")
    assert np.abs(want - bert_numpy(three, ids, seg))[mask].max() > 1e-2
    assert np.isfinite(residual[mask]).all()
    assert np.abs(residual - plain)[mask].max() > 1e-2
    # the first layer has no previous scores: one layer is unchanged
    first = {k: v for k, v in ckpt.items() if "/layer_1/" not in k}
    one = [
        run(build(checkpoint=first, num_hidden_layers=1, residual_attention_scores=r), [ids, seg])
        for r in (False, True)
    ]
    assert_close(one[1], one[0], mask, what="residual scores, one layer")


def run_rows(model, rows, seg):
    """Run rows in batches of 3 x 9 (the shape every test uses: JAX compiles once)."""
    out = []
    for i in range(0, len(rows), 3):
        chunk, seg_chunk = rows[i : i + 3], seg[i : i + 3]
        k = len(chunk)
        if k < 3:
            chunk = np.concatenate([chunk, rows[: 3 - k]])
            seg_chunk = np.concatenate([seg_chunk, seg[: 3 - k]])
        out.append(run(model, [chunk, seg_chunk])[:k])
    return np.concatenate(out)


def perturbed(base, positions):
    """`base` followed by one copy per position with that token replaced."""
    rows = [base]
    for t in positions:
        row = base.copy()
        row[t] = 3 + (row[t] - 2) % (V - 3)
        rows.append(row)
    return np.stack(rows)


def test_lm_mask_is_causal(ckpt):
    model = build(checkpoint=ckpt, application="lm")
    assert "Attention-LM-Mask" in names(model)
    ids, _, _ = inputs()
    n = ids.shape[1]
    rows = perturbed(ids[0], range(n))  # row t + 1: token t replaced
    out = run_rows(model, rows, np.zeros_like(rows))  # with_mlm forced to True
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    for t in range(n):
        delta = np.abs(out[t + 1] - out[0]).max(-1)
        assert delta[:t].max(initial=0) <= 1e-6, f"token {t} changed earlier positions"
        assert delta[t] > 1e-4


def test_unilm_mask(ckpt):
    model = build(checkpoint=ckpt, application="unilm", with_mlm="linear")
    assert "Attention-UniLM-Mask" in names(model)
    ids, _, _ = inputs()
    seg = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], "int32")  # source 0-3, target 4-8
    changed = (5, 6, 3)
    rows = perturbed(ids[0], changed)
    out = run_rows(model, rows, np.tile(seg, (len(rows), 1)))
    delta = {t: np.abs(out[i + 1] - out[0]).max(-1) for i, t in enumerate(changed)}
    # a target token is never seen by the source, nor by earlier target positions
    assert delta[5][:5].max() <= 1e-6 and delta[5][5] > 1e-4
    assert delta[6][:6].max() <= 1e-6 and delta[6][6:].min() > 1e-4
    # the source sees the whole source (bidirectionally), and the target sees it
    assert delta[3][0] > 1e-4
    assert delta[3][4:].min() > 1e-4


def test_dropout_only_in_training(ckpt):
    ids, seg, mask = inputs()
    model = build(checkpoint=ckpt, dropout_rate=0.3, attention_dropout_rate=0.2)
    assert "Embedding-Dropout" in names(model)
    infer = [to_numpy(model([ids, seg], training=False)) for _ in range(2)]
    np.testing.assert_array_equal(infer[0], infer[1])
    assert_close(
        infer[0],
        run(build(checkpoint=ckpt), [ids, seg]),
        mask,
        what="dropout model at inference = no-dropout model",
    )
    model = build(checkpoint=ckpt, dropout_rate=0.3)
    train = [to_numpy(model([ids, seg], training=True)) for _ in range(2)]
    assert np.abs(train[0] - infer[0])[mask].max() > 1e-2
    assert np.abs(train[0] - train[1])[mask].max() > 1e-2  # a new draw each call


# --------------------------------------------------------------- activations
@pytest.mark.parametrize("act", ["gelu_tanh", "gelu_new"])
def test_tanh_gelu(ckpt, act):
    ids, seg, mask = inputs()
    erf = build(checkpoint=ckpt, with_mlm="linear")
    tanh = build(checkpoint=ckpt, with_mlm="linear", hidden_act=act)
    grid = np.linspace(-4, 4, 81).astype("float32")
    for model, use_tanh in ((erf, False), (tanh, True)):
        for fn in (
            model.get_layer("Transformer-0-FeedForward").input_dense[0].activation,
            model.get_layer("MLM-Dense").activation,
        ):
            assert_close(
                to_numpy(fn(grid)),
                numpy_gelu(grid.astype("float64"), use_tanh),
                tol=1e-6,
                what=f"{act if use_tanh else 'gelu'} activation",
            )
    diff = np.abs(run(tanh, [ids, seg]) - run(erf, [ids, seg]))[mask].max()
    assert 1e-6 < diff < 0.1, diff


# --------------------------------------------------------------- naming and reuse
def test_prefix_and_name(ckpt):
    ids, seg, mask = inputs()
    a = build(checkpoint=ckpt, prefix="A-", name="encoder_a", with_mlm="linear")
    b = build(checkpoint=ckpt, prefix="B-", with_mlm="linear")
    assert a.name == "encoder_a"
    assert all(n.startswith("A-") for n in names(a)), names(a)
    assert "A-Transformer-1-FeedForward-Norm" in names(a)
    assert [t.name for t in b.inputs] == ["B-Input-Token", "B-Input-Segment"]
    plain = run(build(checkpoint=ckpt, with_mlm="linear"), [ids, seg])
    # two prefixed models live in one graph, each with its own weights
    both = keras.Model(a.inputs + b.inputs, [a.output, b.output])
    out_a, out_b = run(both, [ids, seg, ids, seg])
    assert_close(out_a, plain, mask, what="prefix A")
    assert_close(out_b, plain, mask, what="prefix B")
    b.get_layer("B-MLM-Bias").beta.assign(np.zeros(V, "float32"))
    assert_close(run(a, [ids, seg]), plain, mask, what="prefix A after changing B")


def test_transformer_subclass_as_model(ckpt):
    class MeanPooledBERT(BERT):
        """A user subclass: mean over real tokens instead of any head."""

        def apply_final_layers(self, inputs):
            return self.apply(
                inputs=inputs, layer=keras.layers.GlobalAveragePooling1D, name="Mean-Pooling"
            )

    ids, seg, mask = inputs()
    model = build(MeanPooledBERT, checkpoint=ckpt)
    assert "Mean-Pooling" in names(model)
    seq = run(build(checkpoint=ckpt), [ids, seg]).astype("float64")
    want = (seq * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert_close(run(model, [ids, seg]), want, what="user subclass")
    lm = build(MeanPooledBERT, application="lm")  # applications wrap user classes too
    assert "Attention-LM-Mask" in names(lm)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="gpt9"), "gpt9"),
        (dict(application="seq2seq"), "seq2seq"),
        (dict(model="electra", application="lm"), "lm"),
        (dict(model="electra", application="unilm"), "unilm"),
        (dict(model="electra", with_mlm=True), "with_mlm"),
        (dict(model="roformer_v2", with_pool=True), "with_pool"),
    ],
)
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_missing_config_key_is_a_clear_error():
    config = {k: v for k, v in SMALL.items() if k != "num_attention_heads"}
    with pytest.raises(ValueError, match="num_attention_heads"):
        build_transformer_model(config)


# --------------------------------------------------------------- configs and directories
GOOGLE_CONFIG = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 16,
    "initializer_range": 0.02,
    "intermediate_size": 24,
    "max_position_embeddings": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "type_vocab_size": 2,
    "vocab_size": 30,
    "directionality": "bidi",
    "pooler_type": "first_token_transform",
}
HF_CONFIG = {
    **{k: v for k, v in GOOGLE_CONFIG.items() if k not in ("directionality", "pooler_type")},
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "use_cache": True,
    "classifier_dropout": None,
    "dtype": "float32",
    "transformers_version": "5.0.0",
    "tie_word_embeddings": True,
}


def test_google_and_hf_config_files_build_the_same_model(tmp_path, ckpt):
    google = tmp_path / "bert_config.json"
    google.write_text(json.dumps(GOOGLE_CONFIG))
    hf = tmp_path / "hf" / "config.json"
    hf.parent.mkdir()
    hf.write_text(json.dumps(HF_CONFIG))
    ids, seg, mask = inputs()
    models = [
        build_transformer_model(str(path), checkpoint_path=ckpt, with_mlm="linear")
        for path in (google, hf)
    ]
    assert names(models[0]) == names(models[1])
    assert "Embedding-Dropout" in names(models[0])  # hidden_dropout_prob read
    shapes = [{w.path: tuple(w.shape) for w in m.weights} for m in models]
    assert shapes[0] == shapes[1]
    assert_close(
        run(models[0], [ids, seg]),
        run(models[1], [ids, seg]),
        mask,
        tol=1e-6,
        what="google vs hf config",
    )


@pytest.mark.parametrize("key", ["bert", "albert", "roformer", "electra"])
def test_hf_directory_gives_config_and_model(tmp_path, key):
    extra = dict(embedding_size=8) if key in ("albert", "electra") else {}
    ckpt = random_checkpoint(key, **extra)
    heads = dict(with_discriminator="linear") if key == "electra" else dict(with_mlm="linear")
    source = build(key, checkpoint=ckpt, return_keras_model=False, **extra, **heads)
    folder = str(tmp_path / key)
    source.save_weights_as_checkpoint(folder, naming="hf")
    ids, seg, mask = inputs()
    model = build_transformer_model(checkpoint_path=folder, **heads)  # no config, no model
    assert sorted(names(model)) == sorted(names(source.model))
    assert_close(
        run(model, [ids, seg]),
        run(source.model, [ids, seg]),
        mask,
        tol=1e-6,
        what=f"{key} from its HF directory",
    )
    if key == "albert":  # an explicit model key still wins over the directory's
        unshared = build_transformer_model(checkpoint_path=folder, model="albert_unshared", **heads)
        assert "Transformer-1-FeedForward-Norm" in names(unshared)
        assert_close(
            run(unshared, [ids, seg]),
            run(source.model, [ids, seg]),
            mask,
            what="albert_unshared from albert's HF directory",
        )
