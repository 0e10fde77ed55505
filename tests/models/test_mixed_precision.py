"""Mixed precision: every model and every layer under mixed_bfloat16 and mixed_float16.

Each case is built twice, in float32 and under the policy, with the same
weights (random, far from init), and run on a padded batch whose last row is
all padding. Outputs must be finite everywhere (the padded row included), the
policy must really compute in half precision (outputs differ from float32),
and on the real positions

    max |mixed - float32| <= REL_TOL[policy] * max |float32|.

Measured on jax, torch and tensorflow (these configs, weights of std 0.2):
bfloat16 0.14-1.6% of the output scale, float16 0.02-0.38%, except ALBERT
(one block applied twice, factorised MLM head): up to 2.6% and 0.46%. The
tolerances (5% and 1%) leave about 2x over the worst case. Positions with no visible
key (a fully padded row; T5 decoder rows whose encoder input is all padding)
are only checked to be finite: their values are arbitrary (fused attention
returns the mean of the values there, the unfused path zeros).
"""

import keras
import numpy as np
import pytest
from keras import ops

from kerasformers import build_transformer_model
from kerasformers import layers as L
from kerasformers.losses import global_pointer_crossentropy
from tests.utils import BACKEND, randomize_keras, single_thread_torch  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

POLICIES = ("mixed_bfloat16", "mixed_float16")
REL_TOL = {"mixed_bfloat16": 5e-2, "mixed_float16": 1e-2}
HALF = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}

SMALL = dict(
    vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=24, max_position=16
)
LENGTHS = (7, 4, 0)  # the last row is all padding
N = max(LENGTHS)
REAL = np.arange(N)[None, :] < np.array(LENGTHS)[:, None]  # [batch, n]


def token_ids(lengths=LENGTHS, seed=0, start_token=False):
    ids = np.random.RandomState(seed).randint(3, SMALL["vocab_size"], (len(lengths), N))
    ids = np.where(np.arange(N)[None, :] < np.array(lengths)[:, None], ids, 0).astype("int32")
    if start_token:  # T5 decoder: position 0 is the start token, id 0
        ids = np.concatenate([np.zeros_like(ids[:, :1]), ids[:, :-1]], axis=1)
    return ids


def segment_ids():
    seg = np.zeros((len(LENGTHS), N), "int32")
    for i, n in enumerate(LENGTHS):
        seg[i, n // 2 : n] = 1
    return seg


def as_float32(outputs):
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(ops.convert_to_numpy(ops.cast(o, "float32"))) for o in outputs]


def check(name, policy, mixed, reference, valid):
    """Finite everywhere, half precision in use, close to float32 where `valid`."""
    assert len(mixed) == len(reference)
    worst = 0.0
    for i, (m, r) in enumerate(zip(mixed, reference)):
        assert np.isfinite(m).all(), f"{name} output {i}: non-finite under {policy} ({BACKEND})"
        keep = (
            np.ones(m.shape, bool)
            if valid[i] is None
            else np.broadcast_to(
                valid[i].reshape(valid[i].shape + (1,) * (m.ndim - valid[i].ndim)), m.shape
            )
        )
        scale = np.abs(r[keep]).max()
        err = np.abs(m - r)[keep].max() / scale
        assert err <= REL_TOL[policy], (
            f"{name} output {i}: max |diff| {err:.2%} of the output "
            f"scale {scale:.3g} under {policy} ({BACKEND})"
        )
        worst = max(worst, err)
    assert worst > 0, f"{name}: identical to float32, {policy} was not applied"
    return worst


# ------------------------------------------------------------------ models
# name: build_transformer_model kwargs (one layer unless the case needs two)
MODELS = {
    "bert-nsp-mlm": dict(model="bert", with_nsp=True, with_mlm="linear"),  # pool -> NSP
    "roberta": dict(model="roberta", with_mlm="linear"),
    "albert": dict(model="albert", embedding_size=8, with_mlm="linear", num_hidden_layers=2),
    "albert_unshared": dict(model="albert_unshared", embedding_size=8),
    "nezha": dict(model="nezha", with_mlm="linear"),
    "electra": dict(model="electra", with_discriminator="linear"),
    "roformer": dict(model="roformer", with_mlm="linear"),
    "roformer_v2": dict(model="roformer_v2", with_mlm="linear"),
    "bert-realformer": dict(model="bert", residual_attention_scores=True, num_hidden_layers=2),
    "gpt": dict(model="gpt", final_activation="linear"),
    "gpt2": dict(model="gpt2", final_activation="linear", pad_token_id=0),
    "gpt2_ml": dict(model="gpt2_ml", final_activation="linear"),
    "bert-lm": dict(model="bert", application="lm", with_mlm="linear"),
    "bert-unilm": dict(model="bert", application="unilm", with_mlm="linear"),
    "t5": dict(model="t5", with_lm="linear"),
    "t5.1.1": dict(model="t5.1.1", with_lm="linear"),
    "mt5.1.1": dict(model="mt5.1.1", with_lm="linear"),
    "t5_encoder": dict(model="t5_encoder"),
    "t5.1.1_encoder": dict(model="t5.1.1_encoder"),
    "mt5.1.1_encoder": dict(model="mt5.1.1_encoder"),
    "t5_decoder": dict(model="t5_decoder", with_lm="linear", context_mask=True),
    "t5.1.1_decoder": dict(model="t5.1.1_decoder", with_lm="linear", context_mask=True),
    "mt5.1.1_decoder": dict(model="mt5.1.1_decoder", with_lm="linear", context_mask=True),
}

_REFERENCES = {}


def build_model(case, dtype=None):
    kwargs = {"num_hidden_layers": 1, **SMALL, **MODELS[case]}
    return build_transformer_model(None, **kwargs, dtype=dtype)


def model_inputs(model):
    """The padded batch for this model's inputs, and the [batch, n] real positions."""
    names = [t.name for t in model.inputs]
    x, valid = [], REAL
    for name in names:
        if name == "Input-Context":
            x.append(np.random.RandomState(1).normal(size=(len(LENGTHS), N, 16)).astype("float32"))
        elif name == "Input-Context-Mask":
            x.append(REAL.astype("int32"))
        elif "Segment" in name:
            x.append(segment_ids())
        elif name == "Decoder-Input-Token":
            x.append(token_ids((5, 3, 6), seed=2, start_token=True))
        else:
            x.append(token_ids())
    if "Decoder-Input-Token" in names:
        # decoder positions: the start token and the real tokens, in rows whose
        # encoder input (or context) has at least one real position
        decoder = x[names.index("Decoder-Input-Token")]
        starts = np.arange(N)[None, :] == 0
        valid = (starts | (decoder != 0)) & REAL.any(axis=1, keepdims=True)
    return (x if isinstance(model.input, (list, tuple)) else x[0]), valid


def reference(case):
    """The float32 model (random weights) and its outputs, built once per case."""
    if case not in _REFERENCES:
        model = randomize_keras(build_model(case))
        x, valid = model_inputs(model)
        _REFERENCES[case] = (model.get_weights(), x, valid, as_float32(model(x)))
    return _REFERENCES[case]


def position_masks(outputs, valid):
    """Per output: the [batch, n] real positions, or [batch] real rows (pooled heads)."""
    return [valid if o.ndim >= 3 else valid.any(axis=1) for o in outputs]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", sorted(MODELS))
def test_model_under_mixed_precision(case, policy):
    weights, x, valid, expected = reference(case)
    model = build_model(case, dtype=policy)
    model.set_weights(weights)
    assert all(v.dtype == "float32" for v in model.weights if "float" in v.dtype)
    outputs = model(x)
    half = [
        o
        for o in (outputs if isinstance(outputs, list) else [outputs])
        if keras.backend.standardize_dtype(o.dtype) == HALF[policy]
    ]
    assert half, f"{case}: no output in {HALF[policy]}"
    got = as_float32(outputs)
    check(case, policy, got, expected, position_masks(got, valid))


@pytest.mark.parametrize("case, policy", [("bert-unilm", "mixed_float16")])
def test_training_step_on_padded_batch_stays_finite(case, policy):
    """One compiled SGD step on a batch with a fully padded row: every weight stays
    finite (float16 also catches kernels that do not compile, e.g. jax's fused
    attention on CPU). One case: each compiled step costs seconds on jax."""
    weights, x, valid, expected = reference(case)
    model = build_model(case, dtype=policy)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = np.zeros(expected[-1].shape, "float32")
    loss = model.train_on_batch(x, target, sample_weight=valid.astype("float32"))
    assert np.isfinite(loss)
    for v in model.weights:
        assert np.isfinite(ops.convert_to_numpy(ops.cast(v, "float32"))).all(), v.path
    changed = [
        v.path
        for v, w in zip(model.weights, weights)
        if not np.array_equal(ops.convert_to_numpy(v), w)
    ]
    assert changed, f"{case}: the step changed nothing"


# ------------------------------------------------------------------ layers
RNG = np.random.RandomState(3)
X = RNG.normal(size=(len(LENGTHS), N, 16)).astype("float32")
COND = RNG.normal(size=(len(LENGTHS), 8)).astype("float32")
ATT_MASK = REAL[:, None, None, :]
BIAS = RNG.normal(size=(len(LENGTHS), 2, N, N)).astype("float32")
LABELS = RNG.randint(0, 5, (len(LENGTHS), N)).astype("int32")
SPANS = (RNG.uniform(size=(len(LENGTHS), 2, N, N)) < 0.1).astype("float32")
# query positions that see at least one key: not the fully padded row
SEEN = REAL.any(axis=1, keepdims=True) & np.ones_like(REAL)


def mha(**kwargs):
    return lambda dtype: L.MultiHeadAttention(heads=2, head_size=8, dtype=dtype, **kwargs)


def attention_call(**arguments):
    return lambda layer: layer([X, X, X], attention_mask=ATT_MASK, **arguments)


def span_valid():
    keep = REAL[:, None, :, None] & REAL[:, None, None, :]
    return keep & (np.arange(N)[:, None] <= np.arange(N)[None, :])


def tagging_call(layer):
    """A CRF / MEMM on half-precision emissions: the loss (and the layer's output)."""
    emissions = (
        ops.cast(X[..., :5], layer.compute_dtype)
        if layer.compute_dtype != "float32"
        else X[..., :5]
    )
    return [layer(emissions), layer.sparse_loss(LABELS, emissions, mask=REAL)[None]]


# name: (make(dtype), call(layer) -> outputs, valid masks per output (None = all))
LAYERS = {
    "AttentionMask": (
        lambda dtype: L.AttentionMask("unilm", dtype=dtype),
        lambda l: ops.cast(l([token_ids(), segment_ids()]), "float32"),
        [None],
    ),
    "Embedding": (
        lambda dtype: L.Embedding(40, 16, mask_zero=True, dtype=dtype),
        lambda l: [l(token_ids()), l(X, mode="dense")],
        [None, None],
    ),
    "PositionEmbedding": (
        lambda dtype: L.PositionEmbedding(4, 16, hierarchical=True, dtype=dtype),
        lambda l: l(X),
        [None],
    ),
    "SinusoidalPositionEmbedding": (
        lambda dtype: L.SinusoidalPositionEmbedding(16, dtype=dtype),
        lambda l: l(X),
        [None],
    ),
    "RelativePositionEmbedding": (
        lambda dtype: L.RelativePositionEmbedding(9, 8, dtype=dtype),
        lambda l: l([X, X]),
        [None],
    ),
    "RelativePositionEmbeddingT5": (
        lambda dtype: L.RelativePositionEmbeddingT5(32, 2, dtype=dtype),
        lambda l: l([X, X]),
        [None],
    ),
    "LayerNormalization": (
        lambda dtype: L.LayerNormalization(epsilon=1e-12, dtype=dtype),
        lambda l: l(X),
        [None],
    ),
    "LayerNormalization-rms": (
        lambda dtype: L.LayerNormalization(
            zero_mean=False, offset=False, epsilon=1e-6, dtype=dtype
        ),
        lambda l: l(X),
        [None],
    ),
    "LayerNormalization-conditional": (
        lambda dtype: L.LayerNormalization(conditional=True, hidden_units=4, dtype=dtype),
        lambda l: l([X, COND]),
        [None],
    ),
    "ScaleOffset": (lambda dtype: L.ScaleOffset(dtype=dtype), lambda l: l(X), [None]),
    "FeedForward": (
        lambda dtype: L.FeedForward(24, activation=["gelu", "linear"], dtype=dtype),
        lambda l: l(X),
        [None],
    ),
    "MaskedAdd": (lambda dtype: L.MaskedAdd(dtype=dtype), lambda l: l([X, X[::-1]]), [None]),
    "TokenSelect": (lambda dtype: L.TokenSelect(dtype=dtype), lambda l: l(X), [None]),
    "TokenGather": (
        lambda dtype: L.TokenGather(dtype=dtype),
        lambda l: l([X, np.tile(np.array([[N - 1, 0, 2]]), (len(X), 1))]),
        [None],
    ),
    "MultiHeadAttention": (mha(), attention_call(), [SEEN]),
    "MultiHeadAttention-softmax_plus": (
        mha(normalization="softmax_plus"),
        attention_call(),
        [SEEN],
    ),
    # (rotary, NEZHA, T5 and RealFormer attention run in the model cases,
    # squared_relu normalisation in GatedAttentionUnit)
    "MultiHeadAttention-bias": (mha(), attention_call(attention_bias=BIAS), [SEEN]),
    "ConditionalRandomField": (
        lambda dtype: L.ConditionalRandomField(dtype=dtype),
        tagging_call,
        [REAL, None],
    ),
    "MaximumEntropyMarkovModel": (
        lambda dtype: L.MaximumEntropyMarkovModel(hidden_dim=3, dtype=dtype),
        tagging_call,
        [REAL, None],
    ),
    "GlobalPointer": (
        lambda dtype: L.GlobalPointer(2, 8, dtype=dtype),
        lambda l: l(X, mask=REAL),
        [span_valid()],
    ),
    "EfficientGlobalPointer": (
        lambda dtype: L.EfficientGlobalPointer(2, 8, dtype=dtype),
        lambda l: l(X, mask=REAL),
        [span_valid()],
    ),
    "GatedAttentionUnit": (
        lambda dtype: L.GatedAttentionUnit(units=24, key_size=8, rope=True, dtype=dtype),
        lambda l: l(X, mask=REAL),
        [SEEN],
    ),
    **{
        f"GlobalPooling-{mode}": (
            lambda dtype, mode=mode: L.GlobalPooling(mode, dtype=dtype),
            lambda l: l(X, mask=REAL),
            [None],
        )
        for mode in ("mean", "max", "last")
    },
}
# exact by construction (boolean output)


class _SquareLoss(L.Loss):
    """The smallest `Loss` subclass: its output is its input, its loss mean(x^2)."""

    def compute_loss(self, inputs, mask=None):
        return ops.mean(ops.square(inputs))


LAYERS["Loss"] = (
    lambda dtype: _SquareLoss(dtype=dtype),
    lambda l: [l(X), ops.reshape(l.losses[-1], (1,))],
    [None, None],
)
EXACT = {"AttentionMask"}


def randomize_layer(layer, seed=0):
    rng = np.random.RandomState(seed)
    for w in layer.weights:
        if "float" in w.dtype:
            w.assign((0.5 * rng.normal(size=w.shape)).astype(w.dtype))


def test_every_layer_has_a_mixed_precision_case():
    layer_classes = {name for name in L.__all__ if isinstance(getattr(L, name), type)}
    covered = {name.split("-")[0] for name in LAYERS} | {"ViterbiDecoder"}
    assert layer_classes <= covered, f"no mixed precision case for {layer_classes - covered}"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_under_mixed_precision(case, policy):
    make, call, valid = LAYERS[case]
    ref_layer = make("float32")
    call(ref_layer)
    randomize_layer(ref_layer)
    expected = as_float32(call(ref_layer))
    layer = make(policy)
    call(layer)
    layer.set_weights(ref_layer.get_weights())
    got = as_float32(call(layer))
    if case in EXACT:
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)
        return
    check(case, policy, got, expected, valid)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("layer_class", ["GlobalPointer", "EfficientGlobalPointer"])
def test_global_pointer_masks_stay_finite_and_negative(layer_class, policy):
    layer = getattr(L, layer_class)(2, 8, dtype=policy)
    scores = layer(X, mask=REAL)
    assert keras.backend.standardize_dtype(scores.dtype) == HALF[policy]
    values = as_float32(scores)[0]
    hidden = ~np.broadcast_to(span_valid(), values.shape)
    assert np.isfinite(values).all() and (values[hidden] <= -6e4).all()
    loss = as_float32(global_pointer_crossentropy(SPANS, scores))[0]
    assert np.isfinite(loss).all()


@pytest.mark.parametrize("policy", POLICIES)
def test_viterbi_decoding_of_half_precision_emissions(policy):
    """Decoding runs in float32 whatever the emissions' dtype: the same paths as
    float32 emissions holding the same (rounded) values."""
    crf = L.ConditionalRandomField()
    crf(X[..., :5])
    randomize_layer(crf)
    half = ops.cast(X[..., :5], HALF[policy])
    rounded = ops.cast(half, "float32")
    paths = ops.convert_to_numpy(crf.decode(half, mask=REAL))
    np.testing.assert_array_equal(paths, ops.convert_to_numpy(crf.decode(rounded, mask=REAL)))
    assert (paths[~REAL] == 0).all()
    trans = ops.convert_to_numpy(crf.trans)
    decoder = L.ViterbiDecoder(trans)
    row = ops.convert_to_numpy(rounded)[0]
    np.testing.assert_array_equal(decoder.decode(row.astype("float16")), decoder.decode(row))
