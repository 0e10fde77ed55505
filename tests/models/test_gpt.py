"""GPT, GPT2 and GPT2_ML: proven equal to a reference, in both name formats.

* GPT2: a small random transformers `GPT2LMHeadModel` -> save_pretrained -> our
  build_transformer_model(checkpoint_path=dir) -> logits max |diff| <= 1e-4 at
  every real position of a right-padded batch and on an unpadded row; our HF
  export loads back into transformers.
* GPT and GPT2_ML have no reference implementation: an independent NumPy
  (float64) forward pass written here from the architecture description (SPEC
  §1.2), fed random weights (std ~0.2) under the ORIGINAL Google TF variable
  names; plus a TF-checkpoint round trip under those names.
* Causality by perturbation, on all three: changing token t never changes an
  output at a position < t.
"""

import math

import keras
import numpy as np
import pytest
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.sources import open_checkpoint
from kerasformers.config import read_config
from tests.utils import assert_close, batch, randomize_torch, run

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ---------------------------------------------------------------- NumPy maths
def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, w, prefix, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{prefix}/gamma"] + w[f"{prefix}/beta"]


def dense(x, w, prefix):
    return x @ w[f"{prefix}/kernel"] + w[f"{prefix}/bias"]


def causal_attention(x, w, ids, heads, q, k, v, o, pad=0):
    """Self-attention where i sees j iff j <= i and ids[j] != pad."""
    b, n, _ = x.shape
    qh, kh, vh = (dense(x, w, p).reshape(b, n, heads, -1) for p in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", qh, kh) / math.sqrt(qh.shape[-1])
    visible = np.tril(np.ones((n, n), bool))[None, None] & (ids != pad)[:, None, None, :]
    scores = np.where(visible, scores, -np.inf)
    out = np.einsum("bhqk,bkhd->bqhd", softmax(scores), vh).reshape(b, n, -1)
    return dense(out, w, o)


def random_weights(shapes, seed):
    """{name: float32 array}: LN gammas ~ 1 +- 0.1, everything else std 0.2 / 0.1."""
    rng = np.random.RandomState(seed)
    w = {}
    for name, shape in shapes.items():
        noise = rng.randn(*shape)
        if name.endswith("/gamma"):
            w[name] = 1.0 + 0.1 * noise
        else:
            w[name] = noise * (0.2 if len(shape) > 1 else 0.1)
    return {k: v.astype("float32") for k, v in w.items()}


def dense_shapes(prefix, n_in, n_out):
    return {f"{prefix}/kernel": (n_in, n_out), f"{prefix}/bias": (n_out,)}


def norm_shapes(prefix, dim):
    return {f"{prefix}/gamma": (dim,), f"{prefix}/beta": (dim,)}


# One set of sizes and two input shapes ([3, 12] padded, [1, 8] unpadded) for every
# test: JAX compiles each op once per shape, so this keeps the file fast there.
LENGTHS = (12, 8, 3)
CFG = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    hidden_act="gelu",
)


# ---------------------------------------------------------------- GPT (original names)
def gpt_names(cfg):
    """The original checkpoint names: BERT's with bert/ -> gpt/, encoder -> transformer."""
    V, H, I, P = (
        cfg[k]
        for k in ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings")
    )
    shapes = {
        "gpt/embeddings/word_embeddings": (V, H),
        "gpt/embeddings/token_type_embeddings": (2, H),
        "gpt/embeddings/position_embeddings": (P, H),
    }
    for i in range(cfg["num_hidden_layers"]):
        g = f"gpt/transformer/layer_{i}"
        for name in ("query", "key", "value"):
            shapes.update(dense_shapes(f"{g}/attention/self/{name}", H, H))
        shapes.update(dense_shapes(f"{g}/attention/output/dense", H, H))
        shapes.update(norm_shapes(f"{g}/attention/output/LayerNorm", H))
        shapes.update(dense_shapes(f"{g}/intermediate/dense", H, I))
        shapes.update(dense_shapes(f"{g}/output/dense", I, H))
        shapes.update(norm_shapes(f"{g}/output/LayerNorm", H))
    return shapes


def gpt_numpy(w, cfg, ids, seg):
    """GPT logits (float64): token + segment + position, post-LN blocks (eps 1e-12,
    BERT's), no embedding LN, causal mask with id 0 hidden, tied output."""
    w = {k: v.astype("float64") for k, v in w.items()}
    eps, n = 1e-12, ids.shape[1]
    x = (
        w["gpt/embeddings/word_embeddings"][ids]
        + w["gpt/embeddings/token_type_embeddings"][seg]
        + w["gpt/embeddings/position_embeddings"][:n][None]
    )
    for i in range(cfg["num_hidden_layers"]):
        g = f"gpt/transformer/layer_{i}"
        a = causal_attention(
            x,
            w,
            ids,
            cfg["num_attention_heads"],
            *(f"{g}/attention/self/{n}" for n in ("query", "key", "value")),
            f"{g}/attention/output/dense",
        )
        x = layer_norm(x + a, w, f"{g}/attention/output/LayerNorm", eps)
        h = dense(gelu(dense(x, w, f"{g}/intermediate/dense")), w, f"{g}/output/dense")
        x = layer_norm(x + h, w, f"{g}/output/LayerNorm", eps)
    return x @ w["gpt/embeddings/word_embeddings"].T


# ---------------------------------------------------------------- GPT2_ML (original names)
def gpt2_ml_names(cfg):
    V, H, I, P = (
        cfg[k]
        for k in ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings")
    )
    shapes = {
        "newslm/embeddings/word_embed": (V, H),
        "newslm/embeddings/pos_embed": (P, H),
        **norm_shapes("newslm/embeddings/LayerNorm_embed_norm", H),
    }
    for i in range(cfg["num_hidden_layers"]):
        g = f"newslm/layer{i:02d}"
        for name in ("query_layer", "key_layer", "value_layer", "context_projection_layer"):
            shapes.update(dense_shapes(f"{g}/{name}", H, H))
        shapes.update(norm_shapes(f"{g}/LayerNorm_mlp_ln0", H))
        shapes.update(dense_shapes(f"{g}/intermediate", H, I))
        shapes.update(dense_shapes(f"{g}/output", I, H))
        shapes.update(norm_shapes(f"{g}/LayerNorm_mlp_ln1", H))
    return shapes


def gpt2_ml_numpy(w, cfg, ids):
    """GPT2_ML logits (float64): token + position -> LN (eps 1e-5); each block
    r = x + Att(x); x = LN1(r + FFN(LN0(r))); causal, id 0 hidden; tied output."""
    w = {k: v.astype("float64") for k, v in w.items()}
    eps, n = 1e-5, ids.shape[1]
    x = w["newslm/embeddings/word_embed"][ids] + w["newslm/embeddings/pos_embed"][:n][None]
    x = layer_norm(x, w, "newslm/embeddings/LayerNorm_embed_norm", eps)
    for i in range(cfg["num_hidden_layers"]):
        g = f"newslm/layer{i:02d}"
        r = x + causal_attention(
            x,
            w,
            ids,
            cfg["num_attention_heads"],
            f"{g}/query_layer",
            f"{g}/key_layer",
            f"{g}/value_layer",
            f"{g}/context_projection_layer",
        )
        h = layer_norm(r, w, f"{g}/LayerNorm_mlp_ln0", eps)
        h = dense(gelu(dense(h, w, f"{g}/intermediate")), w, f"{g}/output")
        x = layer_norm(r + h, w, f"{g}/LayerNorm_mlp_ln1", eps)
    return x @ w["newslm/embeddings/word_embed"].T


def _gpt_case():
    w = random_weights(gpt_names(CFG), seed=1)
    ids, seg = batch(vocab_size=CFG["vocab_size"], lengths=LENGTHS, seed=1)
    return w, [ids, seg], ids, gpt_numpy(w, CFG, ids, seg)


def _gpt2_ml_case():
    w = random_weights(gpt2_ml_names(CFG), seed=2)
    ids, _ = batch(vocab_size=CFG["vocab_size"], lengths=LENGTHS, seed=2, segments=False)
    return w, [ids], ids, gpt2_ml_numpy(w, CFG, ids)


NUMPY_CASES = {"gpt": _gpt_case, "gpt2_ml": _gpt2_ml_case}


@pytest.mark.parametrize("key", sorted(NUMPY_CASES))
def test_equals_numpy(key):
    w, inputs, ids, want = NUMPY_CASES[key]()
    mask = ids != 0
    logits = build_transformer_model(CFG, checkpoint_path=w, model=key, final_activation="linear")
    assert_close(run(logits, inputs), want, mask, what=f"{key} logits")
    probs = build_transformer_model(CFG, checkpoint_path=w, model=key)  # default: softmax
    assert_close(run(probs, inputs), softmax(want), mask, what=f"{key} probabilities")
    # an unpadded row on its own
    n = int(mask[1].sum())
    alone = [x[1:2, :n] for x in inputs]
    assert_close(run(logits, alone), want[1:2, :n], what=f"{key} unpadded row")


@pytest.mark.parametrize("key,names", [("gpt", gpt_names), ("gpt2_ml", gpt2_ml_names)])
def test_tf_checkpoint_round_trip(key, names, tmp_path):
    w, inputs, _, _ = NUMPY_CASES[key]()
    source = build_transformer_model(CFG, checkpoint_path=w, model=key, return_keras_model=False)
    prefix = str(tmp_path / "model.ckpt")
    source.save_weights_as_checkpoint(prefix, naming="google")
    written = open_checkpoint(prefix)
    assert set(written.keys()) == set(names(CFG))  # exactly the original names
    for name, value in w.items():
        np.testing.assert_array_equal(written.get(name), value, err_msg=name)
    fresh = build_transformer_model(
        CFG, checkpoint_path=prefix, model=key, return_keras_model=False
    )
    for path, variable in source.variables().items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(fresh.variables()[path]),
            keras.ops.convert_to_numpy(variable),
            err_msg=path,
        )
    np.testing.assert_array_equal(run(fresh.model, inputs), run(source.model, inputs))


# ---------------------------------------------------------------- GPT2 vs transformers
GPT2_CFG = dict(
    vocab_size=99,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)


class GPT2Reference:
    """A random GPT2LMHeadModel saved to disk."""

    def __init__(self, folder):
        config = transformers.GPT2Config(**GPT2_CFG)
        torch.manual_seed(0)
        self.hf = randomize_torch(transformers.GPT2LMHeadModel(config))  # ln_* gains too
        self.hf.save_pretrained(folder)
        self.folder = folder

    def logits(self, ids, lengths=None):
        mask = (
            None
            if lengths is None
            else torch.tensor(np.arange(ids.shape[1])[None] < np.asarray(lengths)[:, None]).long()
        )
        with torch.no_grad():
            return self.hf(input_ids=torch.tensor(ids).long(), attention_mask=mask).logits.numpy()


@pytest.fixture(scope="module")
def gpt2_ref(tmp_path_factory):
    return GPT2Reference(str(tmp_path_factory.mktemp("gpt2")))


def gpt2_batch(pad, lengths=LENGTHS, seed=0):
    """Right-padded ids; real tokens include id 0 and never equal `pad`."""
    ids, _ = batch(vocab_size=98, lengths=lengths, pad=pad, seed=seed, segments=False, low=0)
    ids[:, 1] = 0  # id 0 is a real GPT-2 token
    return ids, np.arange(ids.shape[1])[None] < np.asarray(lengths)[:, None]


def test_gpt2_config_mapping(gpt2_ref):
    cfg = read_config(gpt2_ref.folder)
    assert {
        k: cfg[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position",
            "hidden_act",
            "layer_norm_eps",
            "segment_vocab_size",
        )
    } == dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position=64,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        segment_vocab_size=0,
    )
    assert "pad_token_id" not in cfg and "n_embd" not in cfg


@pytest.mark.parametrize("pad", [None, 98])
def test_gpt2_equals_transformers(gpt2_ref, pad):
    """pad None (the default from an HF config): nothing masked by id, id 0 is real;
    pad 98: an explicit padding id. Right padding: real positions are exact."""
    lengths = LENGTHS
    ids, mask = gpt2_batch(98, lengths)
    want = gpt2_ref.logits(ids, lengths)
    kwargs = {} if pad is None else dict(pad_token_id=pad)
    model = build_transformer_model(
        checkpoint_path=gpt2_ref.folder, final_activation="linear", **kwargs
    )
    assert [t.name for t in model.inputs] == ["Input-Token"]
    assert_close(run(model, [ids]), want, mask, what=f"gpt2 logits (pad {pad})")
    n = lengths[1]
    alone = ids[1:2, :n]
    assert_close(run(model, [alone]), gpt2_ref.logits(alone), what="gpt2 unpadded row")
    probs = build_transformer_model(checkpoint_path=gpt2_ref.folder, **kwargs)
    assert_close(
        run(probs, [ids]), softmax(want.astype("float64")), mask, what="gpt2 probabilities"
    )


def test_gpt2_hf_export_round_trip(gpt2_ref, tmp_path):
    """Export re-fuses c_attn (q|k|v) bit-exactly; transformers loads our directory."""
    from safetensors.numpy import load_file

    ours = build_transformer_model(checkpoint_path=gpt2_ref.folder, return_keras_model=False)
    exported = ours.export_weights("hf")
    original = load_file(f"{gpt2_ref.folder}/model.safetensors")
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    # GPT2Model-style names (no `transformer.` prefix, as on the hub) load the same
    bare = build_transformer_model(
        gpt2_ref.folder,
        return_keras_model=False,
        checkpoint_path={k.removeprefix("transformer."): v for k, v in original.items()},
    )
    for path, variable in ours.variables().items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(bare.variables()[path]),
            keras.ops.convert_to_numpy(variable),
            err_msg=path,
        )
    out = str(tmp_path / "hf")
    ours.save_weights_as_checkpoint(out, naming="hf")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids, _ = gpt2_batch(98, (8,))
    with torch.no_grad():
        got = reloaded(input_ids=torch.tensor(ids).long()).logits.numpy()
    assert_close(got, gpt2_ref.logits(ids), tol=1e-5, what="transformers on our export")


def test_gpt2_google_names_round_trip(gpt2_ref, tmp_path):
    """HF -> ours -> original CPM-LM names (input/LayerNorm, gpt/output/LayerNorm) -> ours."""
    ours = build_transformer_model(
        checkpoint_path=gpt2_ref.folder, return_keras_model=False, final_activation="linear"
    )
    prefix = str(tmp_path / "gpt2.ckpt")
    ours.save_weights_as_checkpoint(prefix, naming="google")
    H, I = GPT2_CFG["n_embd"], 4 * GPT2_CFG["n_embd"]
    want = {
        "gpt/embeddings/word_embeddings": (99, H),
        "gpt/embeddings/position_embeddings": (64, H),
        **norm_shapes("gpt/output/LayerNorm", H),
    }
    for i in range(GPT2_CFG["n_layer"]):
        g = f"gpt/transformer/layer_{i}"
        for name in ("query", "key", "value"):
            want.update(dense_shapes(f"{g}/attention/self/{name}", H, H))
        want.update(dense_shapes(f"{g}/attention/output/dense", H, H))
        want.update(norm_shapes(f"{g}/attention/input/LayerNorm", H))
        want.update(dense_shapes(f"{g}/intermediate/dense", H, I))
        want.update(dense_shapes(f"{g}/output/dense", I, H))
        want.update(norm_shapes(f"{g}/input/LayerNorm", H))
    written = open_checkpoint(prefix)
    assert {k: written.shape(k) for k in written.keys()} == want
    fresh = build_transformer_model(
        gpt2_ref.folder, checkpoint_path=prefix, final_activation="linear"
    )
    ids, _ = gpt2_batch(98, (8,))
    np.testing.assert_array_equal(run(fresh, [ids]), run(ours.model, [ids]))


# ---------------------------------------------------------------- causality, options
SMALL = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position=64,
    final_activation="linear",
)


@pytest.mark.parametrize("key", ["gpt", "gpt2", "gpt2_ml"])
def test_causal_by_perturbation(key):
    keras.utils.set_random_seed(0)
    model = build_transformer_model(None, model=key, **SMALL)
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, (3, 12)).astype("int32")
    inputs = [ids, np.zeros_like(ids)] if key == "gpt" else [ids]
    base = run(model, inputs)
    for t in (0, 4, 11):
        changed = ids.copy()
        changed[:, t] = changed[:, t] % 98 + 1
        out = run(model, [changed] + inputs[1:])
        np.testing.assert_array_equal(out[:, :t], base[:, :t], err_msg=f"{key} t={t}")
        assert np.abs(out[:, t] - base[:, t]).max() > 1e-3  # position t does see token t


@pytest.mark.parametrize("key", ["gpt", "gpt2", "gpt2_ml"])
def test_heads_are_refused(key):
    for head in ("with_pool", "with_mlm", "with_nsp"):
        with pytest.raises(ValueError, match=head):
            build_transformer_model(None, model=key, **SMALL, **{head: True})


@pytest.mark.parametrize("key", ["gpt", "gpt2", "gpt2_ml"])
def test_factorised_embedding_refused(key):
    with pytest.raises(ValueError, match="embedding_size"):
        build_transformer_model(None, model=key, **SMALL, embedding_size=16)


@pytest.mark.parametrize("key", ["gpt2", "gpt2_ml"])
def test_unilm_refused_without_segments(key):
    with pytest.raises(ValueError, match="unilm"):
        build_transformer_model(None, model=key, application="unilm", **SMALL)


def test_applications_on_gpt():
    """'lm' is GPT itself (already causal); 'unilm' swaps in the segment-id mask."""
    keras.utils.set_random_seed(0)
    lm = build_transformer_model(None, model="gpt", application="lm", **SMALL)
    assert "Attention-LM-Mask" in [layer.name for layer in lm.layers]
    assert lm.output_shape == (None, None, SMALL["vocab_size"])
    unilm = build_transformer_model(None, model="gpt", application="unilm", **SMALL)
    assert "Attention-UniLM-Mask" in [layer.name for layer in unilm.layers]
    ids = np.arange(1, 9, dtype="int32")[None]
    seg = np.array([[0, 0, 0, 0, 1, 1, 1, 1]], "int32")
    base = run(unilm, [ids, seg])
    changed = ids.copy()
    changed[0, 3] = 20  # a source token: every source position sees it (causal would not)
    assert np.abs(run(unilm, [changed, seg])[0, 0] - base[0, 0]).max() > 1e-6


def test_gpt_from_hf_checkpoint_is_refused(gpt2_ref):
    with pytest.raises(CheckpointError, match="no 'hf' weight names"):
        build_transformer_model(
            None,
            checkpoint_path=f"{gpt2_ref.folder}/model.safetensors",
            model="gpt2_ml",
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position=64,
        )
