"""Generation under bad input (issue #18, points 5, 6 and 9): refuse clearly, stay bounded.

* the Keras model `build_transformer_model` returns by default generates and streams like
  its model object (GPT-2, BERT UniLM, T5); a Keras model not built by us is a TypeError;
* token ids are checked on the host before anything is compiled: negative, >= vocab_size,
  float, NaN, bool, text, empty, nested: a ValueError naming the prompt, position and value,
  and no compiled loop is made; prompt + max_new_tokens beyond the model's positions and
  absurd max_new_tokens (10**9; T5 has no position limit: its cache bound) are refused;
* compiled decode loops are bounded: 30 different max_new_tokens and 7 batch sizes compile
  a handful of loops (counted from the Runner's cache and its traces), least recently used
  dropped beyond `Runner.max_loops`, with the same tokens as one loop per length;
* `stream_generate` with a tokenizer smaller than the model's vocabulary says so at start.

Tiny random models (2 layers, hidden 32), deterministic, every backend.
"""

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.generation import Runner, check_prompts, generate, stream_generate

V = 50
SIZES = dict(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
KINDS = {
    "gpt2": dict(model="gpt2", max_position=64),
    "unilm": dict(model="bert", application="unilm", max_position=64),
    "t5": dict(model="t5.1.1"),
    "roformer": dict(model="roformer", application="lm"),
}
PROMPTS = [[5, 17, 33, 2], [9, 3], [40, 41, 42]]


def build(kind, **kwargs):
    """A tiny model with large random weights (so greedy tokens vary), deterministic."""
    keras.utils.set_random_seed(0)
    model = build_transformer_model(None, **SIZES, **KINDS[kind], **kwargs)
    rng = np.random.default_rng(1)
    for v in getattr(model, "model", model).weights:
        if len(v.shape) > 1:
            v.assign(rng.normal(0, 0.3, v.shape).astype(v.dtype))
    return model


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def model(kind):
    return build(kind)


# --------------------------------------------------------- 9: the default Keras model
@pytest.mark.parametrize("kind", ["gpt2", "unilm", "t5"])
def test_the_default_keras_model_generates_like_its_model_object(kind):
    keras_model = build(kind)
    assert isinstance(keras_model, keras.Model)
    transformer = build(kind, return_keras_model=False)
    transformer.model.set_weights(keras_model.get_weights())
    for kwargs in (dict(max_new_tokens=5), dict(max_new_tokens=4, num_beams=2)):
        np.testing.assert_array_equal(
            generate(keras_model, PROMPTS[:1], **kwargs),
            generate(transformer, PROMPTS[:1], **kwargs),
        )
    streamed = np.stack(list(stream_generate(keras_model, PROMPTS[:1], max_new_tokens=5)), 1)
    np.testing.assert_array_equal(streamed, generate(transformer, PROMPTS[:1], max_new_tokens=5))


def test_a_keras_model_not_built_by_us_is_a_clear_type_error():
    keras_model = build("gpt2")
    foreign = keras.Model(keras_model.inputs, keras_model.outputs, name="mine")
    for call in (
        lambda: generate(foreign, PROMPTS),
        lambda: next(stream_generate(foreign, PROMPTS)),
    ):
        with pytest.raises(
            TypeError,
            match="'mine' has no kerasformers Transformer attached.*build_transformer_model",
        ):
            call()


# --------------------------------------------------------- 5: ids checked where they enter
BAD_IDS = [
    ([[5, -1, 7]], ValueError, r"prompt 0 has token id -1 at position 1: ids must be in \[0, 50\)"),
    ([[5, 6], [7, 50]], ValueError, r"prompt 1 has token id 50 at position 1"),
    ([[5, 10**12]], ValueError, r"prompt 0 has token id 1000000000000 at position 1"),
    (np.array([[5, 2**31]], "uint64"), ValueError, r"token id 2147483648 at position 1"),
    (
        [[5.0, 6.5]],
        ValueError,
        r"prompt 0 has float64 value 6.5 at position 1: token ids must "
        r"be an integer type",
    ),
    (np.array([[5.0, 6.0]], "float32"), ValueError, r"float32 value 5.0 at position 0"),
    ([[5, float("nan")]], ValueError, r"prompt 0 has NaN at position 1"),
    ([[True, False]], ValueError, r"prompt 0 has bool values"),
    ([[5], []], ValueError, r"prompt 1 is empty"),
    ([], ValueError, r"no inputs"),
    ([[5, 6], [[7, 8], [9]]], ValueError, r"prompt 1 is not a flat list"),
    (
        [[[5, 6], [7, 8]]],
        ValueError,
        r"prompt 0 must be a flat list of token ids, got shape "
        r"\(2, 2\)",
    ),
    (np.zeros((1, 2, 3), "int32"), ValueError, r"inputs must be \[rows, length\].*\(1, 2, 3\)"),
    ("hello", TypeError, r"token ids, not text"),
    (["hello"], TypeError, r"prompt 0 is text"),
]


@pytest.mark.parametrize(
    "inputs,error,message", BAD_IDS, ids=[f"bad{i}" for i in range(len(BAD_IDS))]
)
def test_bad_ids_are_refused_on_the_host_before_any_compiled_call(model, inputs, error, message):
    runner = Runner.of(model)
    traces, loops = runner.loop_traces, runner.compiled_loops()
    with pytest.raises(error, match=message):
        generate(model, inputs, max_new_tokens=3)
    with pytest.raises(error, match=message):
        next(stream_generate(model, inputs, max_new_tokens=3))
    assert (runner.loop_traces, runner.compiled_loops()) == (traces, loops)


@pytest.mark.parametrize(
    "inputs,expected",
    [
        ([5, 6, 7], [[5, 6, 7]]),  # a flat list is one prompt, like a 1-D array
        (np.array([5, 6, 7], "int32"), [[5, 6, 7]]),
        (np.array([[5, 6], [7, 8]], "uint8"), [[5, 6], [7, 8]]),
        ([[5, 6], (7,)], [[5, 6], [7]]),
    ],
)
def test_good_ids_pass_as_int64(inputs, expected):
    prompts = check_prompts(inputs, V)
    assert [p.tolist() for p in prompts] == expected
    assert all(p.dtype == np.int64 for p in prompts)


@pytest.mark.parametrize("kind", ["gpt2", "unilm"])
def test_positions_beyond_the_model_are_refused(kind):
    model = build(kind)
    with pytest.raises(
        ValueError,
        match=r"prompt \(60 tokens\) \+ max_new_tokens \(5\) exceed "
        r"the model's 64 positions: ask for at most 4",
    ):
        generate(model, [[5] * 60], max_new_tokens=5)
    assert generate(model, [[5] * 60], max_new_tokens=4).shape == (1, 4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_absurd_max_new_tokens_is_refused_not_allocated(kind):
    model = build(kind)
    runner = Runner.of(model)
    # RoFormer keeps its configured 512 positions; T5 has no limit: the cache bound refuses
    message = "Runner.max_cache_elements" if kind == "t5" else "positions"
    for call in (
        lambda: generate(model, [[5, 6]], max_new_tokens=10**9),
        lambda: next(stream_generate(model, [[5, 6]], max_new_tokens=10**9)),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert runner.compiled_loops() == 0


def test_the_cache_bound_counts_rows_and_can_be_raised(monkeypatch):
    model = build("t5")
    monkeypatch.setattr(Runner, "max_cache_elements", 10_000)
    with pytest.raises(ValueError, match=r"3 rows x 64 positions x 128 per position"):
        generate(model, PROMPTS, max_new_tokens=20)
    monkeypatch.setattr(Runner, "max_cache_elements", 2**31)
    assert generate(model, PROMPTS, max_new_tokens=20).shape[0] == 3


# --------------------------------------------------------- 6: bounded compilation
def _compiles():
    return keras.backend.backend() in ("jax", "tensorflow")


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_many_lengths_compile_a_handful_of_loops_with_the_same_tokens(kind):
    transformer = build(kind)._kerasformers_transformer
    runner = Runner(transformer)
    lengths = (1, 2, 5, 8, 9, 12, 16, 17, 23, 30)
    outputs = {n: generate(runner, PROMPTS, max_new_tokens=n) for n in lengths}
    assert runner.compiled_loops() == 3  # loops for 8, 16 and 32 tokens (was one per length)
    if _compiles():
        assert runner.loop_traces == 3
    for n, batch in [(7, 1), (7, 2), (7, 5), (7, 6), (7, 7)]:  # batches 1, 2, 8 are new
        generate(runner, PROMPTS[:1] * batch, max_new_tokens=n)
    assert runner.compiled_loops() == 6
    # one loop per length, as before: the same tokens
    exact = Runner(transformer)
    exact.bucket_loops = False
    for n in (2, 9, 17, 30):  # each shorter than its bucket's loop
        np.testing.assert_array_equal(outputs[n], generate(exact, PROMPTS, max_new_tokens=n))
        assert outputs[n].shape == (3, n)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_beams=3),
        dict(num_beams=2, num_return_sequences=2),
        dict(do_sample=True, seed=3, top_k=10),
        dict(do_sample=True, seed=4, num_return_sequences=2),
        dict(num_beams=2, early_stopping="never", length_penalty=0.5),
    ],
)
def test_rounded_loops_give_the_same_beams_and_samples(kwargs):
    transformer = build("gpt2")._kerasformers_transformer
    rounded, exact = Runner(transformer), Runner(transformer)
    exact.bucket_loops = False
    for n in (3, 11):
        a, sa = generate(rounded, PROMPTS, max_new_tokens=n, return_scores=True, **kwargs)
        b, sb = generate(exact, PROMPTS, max_new_tokens=n, return_scores=True, **kwargs)
        np.testing.assert_array_equal(a, b)
        if sa is not None:
            np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)


def test_least_recently_used_loops_are_dropped(monkeypatch):
    monkeypatch.setattr(Runner, "max_loops", 2)
    runner = Runner(build("gpt2")._kerasformers_transformer)
    for n in (5, 12, 5, 20):  # loops for 8, 16, 8 (reused, now the newest), 32
        generate(runner, PROMPTS, max_new_tokens=n)
    assert runner.compiled_loops() == 2
    assert sorted(key[0].max_new_tokens for key in runner._loops) == [8, 32]
    if _compiles():
        assert runner.loop_traces == 3


# --------------------------------------------------------- stream_generate's tokenizer
class _Tokenizer:
    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


def test_a_tokenizer_smaller_than_the_model_warns_then_refuses_ids_without_text():
    """Real T5 checkpoints pad their embedding past the tokenizer: streaming warns at
    start, runs while every id has text, and names the first id that has none."""
    model = build("gpt2")
    generated = generate(model, PROMPTS[:1], max_new_tokens=3)[0]
    top = int(max(generated))
    assert top < V - 1, "the check needs a generated id below the model's last"
    with pytest.warns(
        UserWarning,
        match=rf"tokenizer's vocabulary \({top + 1} tokens\) is "
        rf"smaller than the model's \({V}\)",
    ):
        pieces = list(stream_generate(model, PROMPTS[:1], _Tokenizer(top + 1), max_new_tokens=3))
    assert len(pieces) == 3
    steps = stream_generate(model, PROMPTS[:1], _Tokenizer(top), max_new_tokens=3)
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=rf"generated id {top}, which the"),
    ):
        list(steps)
    pieces = list(stream_generate(model, PROMPTS[:1], _Tokenizer(V), max_new_tokens=3))
    assert len(pieces) == 3 and all(len(p) == 1 for p in pieces)
