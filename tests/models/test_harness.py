"""The shared model harness, run for every model `build_transformer_model` builds.

Five checks, the same for every case: config round trip, variable sequence
length, `.keras` save/load with equal outputs, a `mixed_bfloat16` run with
finite outputs under padding, and padding invariance at real positions.

The cases cover every key of `kerasformers.models.MODELS` (a test fails when a
new key has no case) plus the lm/unilm applications: encoders (BERT family),
decoder-only causal LMs (GPT, GPT2, GPT2_ML) and the T5 family (joint model,
encoder alone, decoder alone). Inputs are made from the model's input names, one
hook per kind of input (`INPUTS`), so the three families share every check.

Outputs must vary (issue #20: ELECTRA's untrained discriminator sat in
0.499-0.502, below what the tolerance resolves). So every model gets random
weights (std 0.2, norm gammas 1 + 0.1 noise), its heads emit logits ('linear':
softmax over 60 near-uniform probabilities flattens the outputs as well), and
each comparison first asserts the outputs vary (`assert_varied`). The
`mixed_bfloat16` check keeps the default softmax / sigmoid heads.
Padding is trailing (right): encoder ids and decoder ids of different lengths
per row, the decoder ids starting with T5's start token 0.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.models import MODELS
from tests.utils import (
    assert_close,
    assert_varied,
    batch,
    randomize_keras,
    run,
    single_thread_torch,  # noqa: F401
)

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
)
PADDING_TOL = 1e-5


def case(model, application="encoder", heads=None, **kwargs):
    """A harness case: model key, application, head options (logits), other kwargs.
    Learned positions get a small table; T5's relative positions take no max_position."""
    if "t5" not in model:
        kwargs.setdefault("max_position", 32)
    return dict(model=model, application=application, heads=heads or {}, kwargs=kwargs)


MLM = dict(with_mlm="linear")
GPT_LM = dict(final_activation="linear")
T5_LM = dict(with_lm="linear")

CASES = {
    "bert": case("bert", heads=MLM, with_pool=True),
    "roberta": case("roberta", heads=MLM),
    "albert": case("albert", heads=MLM, embedding_size=16),
    "albert_unshared": case("albert_unshared", embedding_size=16),
    "nezha": case("nezha", heads=MLM),
    "electra": case("electra", heads=dict(with_discriminator="linear")),
    "roformer": case("roformer", heads=MLM),
    "roformer_v2": case("roformer_v2", heads=MLM),
    "gau_alpha": case("gau_alpha", heads=MLM),
    "bert-lm": case("bert", "lm", heads=MLM),
    "bert-unilm": case("bert", "unilm", heads=MLM),
    "roformer-unilm": case("roformer", "unilm", heads=MLM),
    "gpt": case("gpt", heads=GPT_LM),
    "gpt-unilm": case("gpt", "unilm", heads=GPT_LM),
    "gpt2": case("gpt2", heads=GPT_LM),
    "gpt2_ml": case("gpt2_ml", heads=GPT_LM),
    **{
        key: case(key, heads=T5_LM)
        for key in (
            "t5.1.0",
            "t5.1.1",
            "mt5.1.1",
            "t5.1.0_decoder",
            "t5.1.1_decoder",
            "mt5.1.1_decoder",
        )
    },
    **{key: case(key) for key in ("t5.1.0_encoder", "t5.1.1_encoder", "mt5.1.1_encoder")},
    "t5.1.1_decoder-context_mask": case("t5.1.1_decoder", heads=T5_LM, context_mask=True),
}
#: registry keys that are another key's class under another name (same build)
ALIASES = {"t5": "t5.1.0", "t5_encoder": "t5.1.0_encoder", "t5_decoder": "t5.1.0_decoder"}
#: the default (probability) head behind each logits option, for mixed_bfloat16
PROBABILITIES = dict(
    with_mlm=True, with_discriminator=True, with_lm=True, final_activation="softmax"
)


def build(name, probabilities=False, **kwargs):
    c = CASES[name]
    heads = {k: PROBABILITIES[k] for k in c["heads"]} if probabilities else c["heads"]
    return build_transformer_model(
        None,
        model=c["model"],
        application=c["application"],
        **SMALL,
        **c["kwargs"],
        **heads,
        **kwargs,
    )


# ------------------------------------------------------------------ inputs
def _ids(lengths, seed, start=False):
    ids, _ = batch(vocab_size=SMALL["vocab_size"], lengths=lengths, seed=seed)
    if start:
        ids[:, 0] = 0  # T5's decoder starts with token 0 (also its pad id)
    return ids


def _context(model, lengths, decoder_lengths, names):
    rng = np.random.RandomState(2)
    x = rng.normal(size=(len(lengths), max(lengths), SMALL["hidden_size"])).astype("float32")
    # without Input-Context-Mask every context position is attended: all real
    real = lengths if "Input-Context-Mask" in names else (max(lengths),) * len(lengths)
    return x, real


#: input name -> (model, encoder lengths, decoder lengths, input names) -> (array, row lengths)
INPUTS = {
    "Input-Token": lambda m, enc, dec, names: (_ids(enc, 0), enc),
    "Encoder-Input-Token": lambda m, enc, dec, names: (_ids(enc, 0), enc),
    "Input-Segment": lambda m, enc, dec, names: (batch(lengths=enc)[1], enc),
    "Decoder-Input-Token": lambda m, enc, dec, names: (_ids(dec, 1, start=True), dec),
    "Input-Context": _context,
    "Input-Context-Mask": lambda m, enc, dec, names: ((_ids(enc, 0) != 0).astype("int32"), enc),
}


def inputs(model, lengths=(9, 6, 3)):
    """(arrays for the model's inputs, each one's row lengths, the output's row lengths).

    Decoder ids get the encoder lengths reversed, so the longest decoder row
    reads the most padded context.
    """
    names = [t.name for t in model.inputs]
    unknown = [n for n in names if n not in INPUTS]
    assert not unknown, f"no harness input hook for {unknown}: add one to INPUTS"
    decoder_lengths = tuple(reversed(lengths))
    made = [INPUTS[n](model, lengths, decoder_lengths, names) for n in names]
    out_lengths = decoder_lengths if "Decoder-Input-Token" in names else lengths
    return [a for a, _ in made], [r for _, r in made], out_lengths


def real(lengths):
    """[batch, max(lengths)] True at real positions."""
    return np.arange(max(lengths))[None] < np.array(lengths)[:, None]


def outputs(model, x):
    """Every output of the model as a list of float32 arrays."""
    out = run(model, x if isinstance(model.input, list) else x[0])
    return out if isinstance(out, list) else [out]


def compare(ours, ref, out_lengths, tol, what, guard=True):
    """Every output close, at real positions for per-position outputs; with
    `guard`, the reference outputs must vary enough for `tol` to mean something."""
    assert len(ours) == len(ref), f"{what}: {len(ours)} outputs vs {len(ref)}"
    for i, (o, r) in enumerate(zip(ours, ref)):
        mask = real(out_lengths) if r.ndim >= 3 else None  # pooled outputs: per row
        if guard:
            assert_varied(r, mask, tol=tol, what=f"{what} output {i}")
        assert_close(o, r, mask, tol=tol, what=f"{what} output {i}")


# ------------------------------------------------------------------ models
@pytest.fixture(scope="module", params=sorted(CASES))
def harness_case(request):
    """(name, model): built once per case for the module, random weights (seed 0).
    Module-scoped and parametrised, so pytest runs a case's checks together."""
    model = randomize_keras(build(request.param))
    return request.param, model


def test_every_model_is_covered():
    covered = {c["model"] for c in CASES.values()}
    missing = sorted(set(MODELS) - covered - set(ALIASES))
    assert not missing, f"models without a harness case: {missing}"
    for alias, key in ALIASES.items():
        assert MODELS[alias] is MODELS[key], f"{alias} is no longer an alias of {key}"
    stale = sorted(covered - set(MODELS))
    assert not stale, f"harness cases for unknown models: {stale}"


def test_config_round_trip(harness_case):
    name, model = harness_case
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x, _, out_lengths = inputs(model)
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    compare(outputs(clone, x), outputs(model, x), out_lengths, tol=1e-6, what=name)


def test_variable_sequence_length(harness_case):
    name, model = harness_case
    for lengths in [(3,), (5, 2), (17, 17, 4)]:
        x, _, out_lengths = inputs(model, lengths)
        out = outputs(model, x)[-1]
        assert out.shape[:2] == (len(lengths), max(out_lengths)), f"{name}: {out.shape}"
        assert np.isfinite(out).all(), f"{name}: non-finite outputs for lengths {lengths}"


def test_keras_save_load(harness_case, tmp_path):
    name, model = harness_case
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x, _, out_lengths = inputs(model)
    compare(outputs(loaded, x), outputs(model, x), out_lengths, tol=1e-6, what=name)


def test_padding_does_not_change_real_positions(harness_case):
    name, model = harness_case
    x, row_lengths, out_lengths = inputs(model)
    padded = outputs(model, x)
    for i, p in enumerate(padded):  # once on the whole batch: one row alone may be short
        assert_varied(
            p,
            real(out_lengths) if p.ndim >= 3 else None,
            tol=PADDING_TOL,
            what=f"{name} output {i}",
        )
    for row in range(len(out_lengths)):
        alone = outputs(model, [a[row : row + 1, : r[row]] for a, r in zip(x, row_lengths)])
        n = out_lengths[row]
        compare(
            alone,
            [p[row : row + 1, :n] if p.ndim >= 3 else p[row : row + 1] for p in padded],
            (n,),
            tol=PADDING_TOL,
            what=f"{name} row {row}",
            guard=False,
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_mixed_bfloat16_finite_under_padding(name):
    model = randomize_keras(build(name, probabilities=True, dtype="mixed_bfloat16"))
    assert any(v.dtype == "float32" for v in model.weights)
    x, _, _ = inputs(model)
    for i, out in enumerate(outputs(model, x)):
        assert np.isfinite(out).all(), f"{name}: non-finite output {i} under mixed_bfloat16"
