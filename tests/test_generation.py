"""`generate` equals transformers' `generate` on small random models, every backend.

* the references are not degenerate: `assert_decisive` fails a transformers output
  with few distinct tokens or a near-tie between its two best logits (issue #20);
* greedy: token-identical for GPT2 (a batch of prompts of different lengths,
  transformers left-pads them) and for T5 / mT5 (padded encoder batch, eos ids the
  model emits);
* beam search (num_beams 4, length_penalty 1.0 and 0.6): identical sequences and
  sequence scores within 1e-4;
* every feature (`FEATURES`: early_stopping True / "never", negative length_penalty,
  min_new_tokens in greedy and beam search, several eos ids, num_return_sequences
  3 and 4, repetition_penalty, no_repeat_ngram_size alone) equals transformers, in
  a case where transformers without the feature differs; compiled loop == host loop;
* sampling: a seeded sample is a literal, the same on every backend, in the
  compiled loop, the host loop and `stream_generate`; UniLM batches equal
  one-by-one decoding; streaming equals generate; bad input is refused.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.generation import generate, processors, stream_generate
from tests.utils import randomize_torch, single_thread_torch  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")
V = 97
PROMPTS = [[5, 17, 33, 2, 8, 41], [9, 3], [60, 61, 62, 63]]


class Reference:
    def __init__(self, folder, hf, ours):
        self.folder, self.hf, self.ours = folder, hf, ours


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=V,
        n_embd=64,  # at 32 wide a few tokens win most steps whatever the context
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    hf = randomize_torch(GPT2LMHeadModel(config), seed=2)
    folder = str(tmp_path_factory.mktemp("gpt2"))
    hf.save_pretrained(folder)
    ours = build_transformer_model(checkpoint_path=folder, return_keras_model=False)
    return Reference(folder, hf, ours)


@pytest.fixture(scope="module", params=["t5", "mt5"])
def t5(request, tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    name = "MT5" if request.param == "mt5" else "T5"
    config = getattr(transformers, f"{name}Config")(
        vocab_size=V,
        d_model=64,  # at 32 wide most rows repeat one token (a degenerate reference)
        d_kv=8,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    hf = getattr(transformers, f"{name}ForConditionalGeneration")(config)
    hf = randomize_torch(hf, seed=15)
    folder = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(folder)
    ours = build_transformer_model(checkpoint_path=folder, return_keras_model=False)
    return Reference(folder, hf, ours)


def _eos_list(eos):
    if eos is None:
        return []
    return [int(e) for e in np.atleast_1d(eos)]


def _until_eos(row, eos):
    hits = np.flatnonzero(np.isin(row, eos)) if eos else []
    return list(row[: hits[0] + 1] if len(hits) else row)


#: a reference's greedy choice must beat the runner-up by this much (float32 sums
#: in another order move these logits by ~1e-6)
MIN_MARGIN = 1e-3


def assert_decisive(tokens, eos=None, scores=None, what="reference"):
    """Fail loudly on a degenerate reference (issue #20): a model whose output barely
    depends on its input agrees with a wrong implementation. tokens: [rows, steps]
    new tokens (each row up to its first eos id is checked). Required: distinct
    tokens at least a quarter of all tokens (at least 2), no row of 8+ tokens more
    than 60% one token, and with `scores` (greedy: the processed scores per step,
    [rows, steps, vocab]) a top-two margin of at least MIN_MARGIN at every step
    that chose a token. Returns (distinct tokens, smallest margin or None)."""
    eos = _eos_list(eos)
    rows = [_until_eos(np.asarray(row), eos) for row in tokens]
    flat = [t for row in rows for t in row]
    distinct = len(set(flat))
    assert distinct >= max(2, len(flat) // 4), (
        f"{what}: degenerate, {distinct} distinct tokens in {len(flat)}: {rows}"
    )
    for row in rows:
        if len(row) >= 8:
            share = np.bincount(row).max() / len(row)
            assert share <= 0.6, f"{what}: degenerate, one token is {share:.0%} of row {row}"
    margin = None
    if scores is not None:
        scores = np.asarray(scores, "float64")
        top2 = np.sort(scores, axis=-1)[..., -2:]
        gaps = top2[..., 1] - top2[..., 0]
        margin = min(float(gaps[i, : len(row)].min()) for i, row in enumerate(rows))
        assert margin >= MIN_MARGIN, (
            f"{what}: near-tie, top-two logit margin {margin:.2g} < {MIN_MARGIN}: pick another seed"
        )
    return distinct, margin


def _checked(out, width, kwargs):
    """(new tokens, sequence scores or None) of transformers' output, guarded."""
    import torch

    tokens = out.sequences[:, width:].numpy()
    greedy = kwargs.get("num_beams", 1) == 1 and not kwargs.get("do_sample")
    scores = torch.stack(out.scores, 1).numpy() if greedy else None
    best = tokens[:: kwargs.get("num_return_sequences", 1)]  # a prompt's beams share prefixes
    assert_decisive(best, kwargs.get("eos_token_id"), scores)
    return tokens, getattr(out, "sequences_scores", None)


def hf_generate_decoder_only(hf, prompts, **kwargs):
    """transformers: left-padded batch; returns the new tokens per row (and scores),
    after `assert_decisive`."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            return_dict_in_generate=True,
            output_scores=True,
            **kwargs,
        )
    return _checked(out, width, kwargs)


def hf_generate_seq2seq(hf, prompts, **kwargs):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            return_dict_in_generate=True,
            output_scores=True,
            **kwargs,
        )
    return _checked(out, 1, kwargs)


def same_tokens(ours, theirs, pad, eos=None):
    """Equal up to trailing padding (each side pads to its own longest row; with
    eos ids, whatever follows a row's first eos is padding: transformers' beam search
    fills with the eos when pad_token_id is 0)."""
    width = max(ours.shape[1], theirs.shape[1])
    eos = _eos_list(eos)

    def padded(a):
        a = np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad)
        for row in a:
            hits = np.flatnonzero(np.isin(row, eos)) if eos else []
            if len(hits):
                row[hits[0] + 1 :] = pad
        return a

    np.testing.assert_array_equal(padded(ours), padded(theirs))


COMMON = dict(do_sample=False, pad_token_id=0)


# ---------------------------------------------------------------- greedy
def test_gpt2_greedy_equals_transformers(gpt2):
    theirs, _ = hf_generate_decoder_only(gpt2.hf, PROMPTS, max_new_tokens=10, **COMMON)
    ours = generate(gpt2.ours, PROMPTS, max_new_tokens=10, pad_token_id=0)
    same_tokens(ours, theirs, 0)
    # an eos the model actually emits: rows stop there and are padded after it
    eos = int(theirs[0, 3])
    theirs, _ = hf_generate_decoder_only(
        gpt2.hf, PROMPTS, max_new_tokens=10, eos_token_id=eos, **COMMON
    )
    ours = generate(gpt2.ours, PROMPTS, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    same_tokens(ours, theirs, 0)
    stop = list(ours[0]).index(eos)
    assert stop <= 3 and (ours[0, stop + 1 :] == 0).all()


def test_gpt2_batch_equals_one_by_one(gpt2):
    together = generate(gpt2.ours, PROMPTS, max_new_tokens=6)
    for i, prompt in enumerate(PROMPTS):
        np.testing.assert_array_equal(
            generate(gpt2.ours, [prompt], max_new_tokens=6)[0], together[i]
        )


T5_PROMPTS = [[5, 9, 14, 22, 1], [7, 7, 30, 1], [40, 41, 42, 43, 44, 45, 46, 1]]


@pytest.fixture(scope="module")
def t5_eos(t5):
    """Two eos ids the T5 model emits (its config's eos, 1, it never does): rows end
    at different steps."""
    greedy, _ = hf_generate_seq2seq(t5.hf, T5_PROMPTS, max_new_tokens=9, **COMMON)
    return [int(greedy[0, 3]), int(greedy[2, 5])]


def test_t5_greedy_equals_transformers(t5, t5_eos):
    kwargs = dict(max_new_tokens=9, eos_token_id=t5_eos)
    theirs, _ = hf_generate_seq2seq(t5.hf, T5_PROMPTS, **kwargs, **COMMON)
    ours = generate(t5.ours, T5_PROMPTS, pad_token_id=0, **kwargs)
    same_tokens(ours, theirs, 0)
    stop = np.flatnonzero(np.isin(ours[0], t5_eos))[0]  # row 0 emits an eos and stops
    assert stop <= 3 and (ours[0, stop + 1 :] == 0).all()


# ---------------------------------------------------------------- beam search
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_gpt2_beam_search_equals_transformers(gpt2, length_penalty):
    greedy, _ = hf_generate_decoder_only(gpt2.hf, PROMPTS, max_new_tokens=8, **COMMON)
    eos = int(greedy[1, 2])  # an eos some beams reach
    kwargs = dict(
        max_new_tokens=8,
        num_beams=4,
        length_penalty=length_penalty,
        eos_token_id=eos,
        num_return_sequences=2,
    )
    theirs, their_scores = hf_generate_decoder_only(gpt2.hf, PROMPTS, **COMMON, **kwargs)
    ours, our_scores = generate(gpt2.ours, PROMPTS, pad_token_id=0, return_scores=True, **kwargs)
    same_tokens(ours, theirs, 0, eos)
    np.testing.assert_allclose(our_scores, their_scores.numpy(), atol=1e-4, rtol=0)


def test_t5_beam_search_equals_transformers(t5, t5_eos):
    prompts = T5_PROMPTS[:2]
    for length_penalty in (1.0, 0.6):
        kwargs = dict(
            max_new_tokens=7, num_beams=4, length_penalty=length_penalty, eos_token_id=t5_eos
        )
        theirs, their_scores = hf_generate_seq2seq(t5.hf, prompts, **COMMON, **kwargs)
        ours, our_scores = generate(t5.ours, prompts, pad_token_id=0, return_scores=True, **kwargs)
        same_tokens(ours, theirs, 0, t5_eos)
        np.testing.assert_allclose(our_scores, their_scores.numpy(), atol=1e-4, rtol=0)
        assert np.isin(ours, t5_eos).any()  # hypotheses that ended with an eos


# ---------------------------------------------------------------- processors
def test_penalties_inside_generate_equal_transformers(gpt2):
    kwargs = dict(max_new_tokens=12, repetition_penalty=1.8, no_repeat_ngram_size=2)
    theirs, _ = hf_generate_decoder_only(gpt2.hf, PROMPTS, **COMMON, **kwargs)
    ours = generate(gpt2.ours, PROMPTS, pad_token_id=0, **kwargs)
    same_tokens(ours, theirs, 0)
    for row in ours:  # no bigram twice
        bigrams = list(zip(row[:-1], row[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_repetition_penalty_in_device_loops_equals_transformers(gpt2):
    """Without no_repeat_ngram the penalty runs inside the compiled loop (greedy and beam)."""
    for kwargs in (
        dict(max_new_tokens=12, repetition_penalty=1.8),
        dict(max_new_tokens=8, repetition_penalty=1.5, num_beams=3, length_penalty=0.6),
    ):
        theirs, _ = hf_generate_decoder_only(gpt2.hf, PROMPTS, **COMMON, **kwargs)
        ours = generate(gpt2.ours, PROMPTS, pad_token_id=0, **kwargs)
        same_tokens(ours, theirs, 0)


#: (id, settings, loops to run, the feature switched off). Every case has two eos
#: ids the model emits. Without sampling, each loop's tokens and scores equal
#: transformers' `generate`, and transformers' output with the feature switched
#: off differs (so the case can fail if the feature is ignored). The "device" cases
#: also prove device loop == host loop; the host-only cases add features whose
#: device path another case runs (min_new_tokens in beam search, eos ids) or that
#: run on the host anyway (no_repeat_ngram_size).
FEATURES = [
    ("greedy-min", dict(max_new_tokens=9, min_new_tokens=4), "device", dict(min_new_tokens=0)),
    (
        "greedy-penalty",
        dict(max_new_tokens=9, repetition_penalty=1.3),
        "device",
        dict(repetition_penalty=1.0),
    ),
    (
        "beam-early",
        dict(max_new_tokens=8, num_beams=3, early_stopping=True, num_return_sequences=3),
        "device",
        dict(early_stopping=False),
    ),
    (  # "never" differs from False only if a later, longer hypothesis wins: lp 2
        "beam-never",
        dict(max_new_tokens=12, num_beams=2, early_stopping="never", length_penalty=2.0),
        "device",
        dict(early_stopping=False),
    ),
    (
        "beam-negative-lp",
        dict(
            max_new_tokens=8,
            num_beams=2,
            early_stopping=False,
            length_penalty=-0.5,
            min_new_tokens=3,
            repetition_penalty=1.4,
        ),
        "device",
        dict(length_penalty=1.0),
    ),
    (
        "sample-warped",
        dict(
            max_new_tokens=8,
            do_sample=True,
            top_k=20,
            top_p=0.9,
            temperature=1.3,
            seed=3,
            min_new_tokens=2,
            repetition_penalty=1.2,
            num_return_sequences=2,
        ),
        "device",
        None,
    ),
    ("sample", dict(max_new_tokens=8, do_sample=True, seed=11), "device", None),
    ("greedy-eos-ids", dict(max_new_tokens=8), "host", dict(eos_token_id="first")),
    (
        "beam-eos-ids",
        dict(max_new_tokens=8, num_beams=4, num_return_sequences=4),
        "host",
        dict(eos_token_id="first"),
    ),
    (
        "beam-min",
        dict(max_new_tokens=8, num_beams=3, min_new_tokens=5, num_return_sequences=2),
        "host",
        dict(min_new_tokens=0),
    ),
    (  # no eos: greedy repeats a bigram only after 14 tokens
        "greedy-ngram",
        dict(max_new_tokens=24, no_repeat_ngram_size=2, eos_token_id=None),
        "host",
        dict(no_repeat_ngram_size=0),
    ),
    (
        "beam-ngram",
        dict(max_new_tokens=10, num_beams=3, no_repeat_ngram_size=2, eos_token_id=None),
        "host",
        dict(no_repeat_ngram_size=0),
    ),
]


@pytest.fixture(scope="module")
def eos_ids(gpt2):
    """Two eos ids the model emits early (so rows and beams end at different steps)."""
    greedy = generate(gpt2.ours, PROMPTS, max_new_tokens=6)
    return [int(greedy[0, 2]), int(greedy[2, 1])]


@pytest.mark.parametrize(
    "kwargs,loops,off", [f[1:] for f in FEATURES], ids=[f[0] for f in FEATURES]
)
def test_features_equal_transformers(gpt2, eos_ids, kwargs, loops, off):
    """Each generation feature against transformers' generate (and, for the device
    cases, the compiled loop against the host loop: sampling is checked that way)."""
    kwargs = {"eos_token_id": eos_ids, **kwargs, "pad_token_id": 0}
    eos = kwargs["eos_token_id"]
    host, host_scores = generate(gpt2.ours, PROMPTS, loop="host", return_scores=True, **kwargs)
    if loops == "device":
        device, device_scores = generate(
            gpt2.ours, PROMPTS, loop="device", return_scores=True, **kwargs
        )
        np.testing.assert_array_equal(device, host)
        if host_scores is not None:
            np.testing.assert_allclose(device_scores, host_scores, atol=1e-5, rtol=0)
    if kwargs.get("do_sample"):
        return
    assert eos is None or np.isin(host, eos).any()
    theirs, their_scores = hf_generate_decoder_only(gpt2.hf, PROMPTS, do_sample=False, **kwargs)
    same_tokens(host, theirs, 0, eos)
    if their_scores is not None:
        np.testing.assert_allclose(host_scores, their_scores.numpy(), atol=1e-4, rtol=0)
    # the feature matters here: transformers without it gives something else
    off = {k: eos_ids[0] if v == "first" else v for k, v in off.items()}
    other, other_scores = hf_generate_decoder_only(
        gpt2.hf, PROMPTS, do_sample=False, **{**kwargs, **off}
    )
    differs = other.shape != theirs.shape or (other != theirs).any()
    if their_scores is not None:
        differs = differs or not np.allclose(other_scores.numpy(), their_scores.numpy(), atol=1e-4)
    assert differs, f"switching off {off} changes nothing here: the case proves nothing"


def test_processors_on_given_logits():
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.RandomState(0)
    scores = (rng.normal(size=(4, 50)) * 3).astype("float32")
    scores[0, :5] = scores[0, 5]  # ties
    ids = rng.randint(0, 50, (4, 9))
    t_scores, t_ids = torch.from_numpy(scores), torch.from_numpy(ids)
    histories = list(ids)
    seen = processors.seen_mask(histories, 50)
    cases = [
        (
            lp.RepetitionPenaltyLogitsProcessor(1.5),
            lambda s: processors.repetition_penalty(s, seen, 1.5),
        ),
        (lp.NoRepeatNGramLogitsProcessor(2), lambda s: processors.no_repeat_ngram(s, histories, 2)),
        (lp.NoRepeatNGramLogitsProcessor(3), lambda s: processors.no_repeat_ngram(s, histories, 3)),
        (lp.TemperatureLogitsWarper(0.7), lambda s: processors.temperature_scale(s, 0.7)),
        (lp.TopKLogitsWarper(5), lambda s: processors.top_k_filter(s, 5)),
        (lp.TopPLogitsWarper(0.8), lambda s: processors.top_p_filter(s, 0.8)),
        (lp.TopPLogitsWarper(0.05), lambda s: processors.top_p_filter(s, 0.05)),
    ]
    for theirs, ours in cases:
        expected = theirs(t_ids, t_scores.clone()).numpy()
        got = keras.ops.convert_to_numpy(ours(scores.copy()))
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0, err_msg=type(theirs).__name__)


# ---------------------------------------------------------------- sampling, limits
def _lowbias32(x):
    x = np.asarray(x, np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def test_uniform_draws_equal_a_numpy_reference():
    """The counter-based draws are integer arithmetic: bit-identical on every backend."""
    from kerasformers.generation import draws

    seed, step, shape = 123456789, 17, (3, 1000)
    with np.errstate(over="ignore"):
        key = _lowbias32(_lowbias32(np.uint32(step + 0x632BE5AB)) ^ np.uint32(seed))
        counter = np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape)
        bits = _lowbias32(_lowbias32(counter ^ key) + key)
    expected = ((bits >> np.uint32(8)).astype("float32") + 0.5) / 16777216.0
    got = keras.ops.convert_to_numpy(draws.uniform(seed, step, shape))
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.min() and got.max() < 1 and abs(got.mean() - 0.5) < 0.01


def test_gumbel_max_draws_follow_the_softmax():
    from kerasformers.generation import draws

    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1], "float32"))
    noise = keras.ops.convert_to_numpy(draws.uniform(7, 0, (20000, 4)))
    picks = (logits - np.log(-np.log(noise))).argmax(-1)
    np.testing.assert_allclose(
        np.bincount(picks, minlength=4) / 20000, [0.5, 0.25, 0.15, 0.1], atol=0.012
    )


@pytest.mark.parametrize(
    "warpers",
    [
        dict(temperature=0.7),
        dict(top_k=7),
        dict(top_p=0.8),
        dict(temperature=1.3, top_k=20, top_p=0.9),
    ],
)
def test_warp_equals_transformers_warpers(warpers):
    """`warp` (top-p over top-k's values only, as in the loops) equals the processors
    one by one and transformers' warpers in its order."""
    import torch
    from transformers.generation import logits_process as lp

    from kerasformers.generation import processors as P

    scores = (np.random.RandomState(1).normal(size=(4, 50)) * 3).astype("float32")
    temperature, top_k, top_p = (warpers.get(k) for k in ("temperature", "top_k", "top_p"))
    theirs = torch.from_numpy(scores.copy())
    for warper in (
        ([lp.TemperatureLogitsWarper(temperature)] if temperature else [])
        + ([lp.TopKLogitsWarper(top_k)] if top_k else [])
        + ([lp.TopPLogitsWarper(top_p)] if top_p else [])
    ):
        theirs = warper(None, theirs)
    theirs = theirs.numpy()
    one_by_one = P.top_p_filter(
        P.top_k_filter(P.temperature_scale(scores, temperature), top_k), top_p
    )
    for ours in (P.warp(scores, temperature or 1.0, top_k, top_p), one_by_one):
        ours = keras.ops.convert_to_numpy(ours)
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
        kept = np.isfinite(theirs)
        np.testing.assert_allclose(ours[kept], theirs[kept], atol=1e-6, rtol=0)


#: a seeded sample with every warper and processor: the "sample-warped" case above,
#: eos ids from the `eos_ids` fixture
SAMPLE = dict(FEATURES[5][1], pad_token_id=0)
#: its tokens, the same on jax, torch and tensorflow (counter-based draws): a literal,
#: so a backend cannot pass by agreeing with itself
SAMPLED = np.array(
    [
        [22, 56, 72, 60, 12, 73, 9, 23],
        [17, 86, 23, 0, 0, 0, 0, 0],
        [47, 28, 23, 0, 0, 0, 0, 0],
        [76, 60, 21, 4, 26, 26, 4, 23],
        [21, 25, 78, 53, 64, 9, 65, 65],
        [22, 32, 85, 32, 31, 16, 3, 6],
    ]
)


def test_seeded_sample_is_the_same_on_every_backend(gpt2, eos_ids):
    """`generate` (compiled loop and host loop) and `stream_generate` give this
    literal sample for this seed on every backend."""
    kwargs = dict(SAMPLE, eos_token_id=eos_ids)
    np.testing.assert_array_equal(generate(gpt2.ours, PROMPTS, **kwargs), SAMPLED)
    np.testing.assert_array_equal(generate(gpt2.ours, PROMPTS, loop="host", **kwargs), SAMPLED)
    streamed = np.array(list(stream_generate(gpt2.ours, PROMPTS, **kwargs))).T
    np.testing.assert_array_equal(streamed[:, : SAMPLED.shape[1]], SAMPLED)
    assert (streamed[:, SAMPLED.shape[1] :] == 0).all()
    greedy = generate(gpt2.ours, PROMPTS, max_new_tokens=8, eos_token_id=eos_ids, pad_token_id=0)
    assert not np.array_equal(SAMPLED[::2, : greedy.shape[1]], greedy)  # a real sample


def test_sampling_is_reproducible_with_a_seed(gpt2):
    kwargs = dict(max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=1.3)
    a = generate(gpt2.ours, PROMPTS, seed=7, **kwargs)
    b = generate(gpt2.ours, PROMPTS, seed=7, **kwargs)
    c = generate(gpt2.ours, PROMPTS, seed=8, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    many = generate(gpt2.ours, PROMPTS[:1], seed=7, num_return_sequences=3, **kwargs)
    assert many.shape[0] == 3 and len({tuple(r) for r in many}) > 1


def test_min_new_tokens(gpt2):
    first = generate(gpt2.ours, PROMPTS, max_new_tokens=1)[:, 0]
    eos = int(first[0])  # the most likely first token of row 0
    out = generate(
        gpt2.ours, PROMPTS, max_new_tokens=6, min_new_tokens=4, eos_token_id=eos, pad_token_id=0
    )
    assert (out[:, :4] != eos).all()
    theirs, _ = hf_generate_decoder_only(
        gpt2.hf, PROMPTS, max_new_tokens=6, min_new_tokens=4, eos_token_id=eos, **COMMON
    )
    same_tokens(out, theirs, 0)


def test_streaming_equals_generate(gpt2):
    out = generate(gpt2.ours, PROMPTS, max_new_tokens=7)
    steps = list(stream_generate(gpt2.ours, PROMPTS, max_new_tokens=7))
    np.testing.assert_array_equal(np.array(steps).T, out)


def test_streamed_text_never_splits_a_character():
    from kerasformers.generation.generate import stream_generate as stream

    class ByteTokenizer:  # token i = byte i
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    class Fixed:  # a fake runner emitting the UTF-8 bytes of "语言"
        kind, vocab_size = "causal", 256
        data = list("语言".encode("utf-8"))

        def needs_equal_lengths(self, lengths):
            return False

        def check(self, lengths, max_new_tokens, copies=1):
            pass  # no model: no positions or cache to bound

        def prefill(self, prompts, n):
            return self.logits(0), 0

        def step(self, tokens, state):
            return self.logits(state + 1), state + 1

        def logits(self, i):
            out = np.zeros((1, 256), "float32")
            out[0, self.data[min(i, len(self.data) - 1)]] = 1
            return out

    from kerasformers.generation.runner import Runner

    fake = Fixed()
    fake.__class__ = type("FakeRunner", (Fixed, Runner), {})
    pieces = [p[0] for p in stream(fake, [[1]], tokenizer=ByteTokenizer(), max_new_tokens=6)]
    assert "".join(pieces) == "语言" and pieces[2] == "语" and pieces[5] == "言"
    assert all("\ufffd" not in p for p in pieces)


@pytest.fixture(scope="module")
def unilm():
    """A tiny random BERT as UniLM (built once for the tests that only decode with it)."""
    return build_transformer_model(
        None,
        model="bert",
        application="unilm",
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        return_keras_model=False,
    )


def test_unilm_batch_equals_one_by_one(unilm):
    sources = [[2, 11, 12, 13, 3], [2, 20, 3], [2, 30, 31, 32, 33, 34, 3]]
    together = generate(unilm, sources, max_new_tokens=5, num_beams=3)
    for i, source in enumerate(sources):
        alone = generate(unilm, [source], max_new_tokens=5, num_beams=3)
        np.testing.assert_array_equal(alone[0], together[i][: alone.shape[1]])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(inputs=[[]]), "prompt 0 is empty"),
        (dict(inputs=[[1] * 60], max_new_tokens=10), "exceed the model's 64 positions"),
        (dict(num_beams=0), "num_beams must be >= 1"),
        (dict(top_p=1.5, do_sample=True), "top_p must be in"),
        (dict(top_p=0.0, do_sample=True), "top_p must be in"),
        (dict(eos_token_id=V + 5), "not in the vocabulary"),
        (dict(max_new_tokens=0), "max_new_tokens must be"),
    ],
)
def test_bad_input_is_a_clear_error(gpt2, kwargs, message):
    kwargs = {"inputs": PROMPTS, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(gpt2.ours, **kwargs)


def test_generation_config_and_overrides(gpt2):
    from kerasformers.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, num_beams=3, eos_token_id=[4, 7])
    assert config.eos_ids == [4, 7] and config.pad == 4
    np.testing.assert_array_equal(
        generate(gpt2.ours, PROMPTS, config, num_beams=2),
        generate(gpt2.ours, PROMPTS, max_new_tokens=5, num_beams=2, eos_token_id=[4, 7]),
    )
    with pytest.raises(TypeError, match="unknown generation arguments: beams, topk"):
        generate(gpt2.ours, PROMPTS, beams=2, topk=3)
    with pytest.raises(TypeError, match="unknown generation arguments: beams"):
        next(stream_generate(gpt2.ours, PROMPTS, beams=2))
    with pytest.raises(TypeError, match="GenerationConfig"):
        generate(gpt2.ours, PROMPTS, 10)
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        GenerationConfig(num_beams=0)
    with pytest.raises(ValueError, match="loop must be one of"):
        generate(gpt2.ours, PROMPTS, loop="gpu")


def test_the_default_keras_model_generates_and_a_foreign_one_is_refused(gpt2):
    model = build_transformer_model(checkpoint_path=gpt2.folder)
    np.testing.assert_array_equal(
        generate(model, PROMPTS, max_new_tokens=4), generate(gpt2.ours, PROMPTS, max_new_tokens=4)
    )
    foreign = keras.Model(model.inputs, model.outputs)
    with pytest.raises(TypeError, match="build_transformer_model"):
        generate(foreign, PROMPTS)


# ---------------------------------------------------------------- bert4keras-style API
def test_autoregressive_decoder_equals_generate(unilm):
    """A bert4keras-style UniLM decoder (whole sequence through the Keras model every
    step) gives generate's tokens: greedy beam search (topk=1) and topk=1 sampling."""
    from kerasformers.generation import AutoRegressiveDecoder

    source = [2, 11, 12, 13, 3]
    expected = list(generate(unilm, [source], max_new_tokens=6, eos_token_id=3)[0])
    end = expected[-1] if 3 in expected else None

    class Seq2Seq(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="probas")
        def predict(self, inputs, output_ids, states):
            token_ids, segment_ids = inputs
            token_ids = np.concatenate([token_ids, output_ids], 1)
            segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
            return self.last_token(unilm.model).predict([token_ids, segment_ids], verbose=0)

    decoder = Seq2Seq(start_id=None, end_id=3, maxlen=6)
    inputs = [np.array(source), np.zeros(len(source), "int32")]
    assert list(decoder.beam_search(inputs, topk=1)) == expected
    samples = decoder.random_sample(inputs, n=2, topk=1, seed=0)
    assert [list(s) for s in samples] == [expected] * 2
    assert end is None or expected[-1] == 3


def test_compiled_calls_are_reused(gpt2):
    from kerasformers.generation import Runner

    generate(gpt2.ours, PROMPTS[:1], max_new_tokens=2)
    runner = Runner.of(gpt2.ours)
    generate(gpt2.ours, PROMPTS[:1], max_new_tokens=2)
    assert Runner.of(gpt2.ours) is runner
