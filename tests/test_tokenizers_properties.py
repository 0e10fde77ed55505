"""Property tests on arbitrary Unicode: control characters, combining marks, emoji, lone
surrogates, empty and very long strings.  Nothing crashes, offsets are always valid, maxlen
is always respected with the end token kept, the fast path equals the exact path, and on
valid UTF-8 the ids and offsets equal transformers'."""

import functools
import os
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerasformers.tokenizers import Tokenizer, load_vocab
from kerasformers.tokenizers._unicode import tables
from tests.test_tokenizers import check_offsets, chinese_vocab, reference
from tests.tokenizer_data import minilm_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIAL_CHARS = list(
    "的一是中\u3000，。！？\u0301\u0308\u0345\u20dd\u200b\u200d\ufeff\x00\x85\x0b\ufffd\ue000"
    "\U000f0000\u2028\u2029 \t\r\n😀👍🏽\U0001f1e8\U0001f1f3ΣσςİıﬁẞßǅＡ１한글\u0e01\u0e34"
    "\U00020000\uf900\ud800\udfff\udbff"
) + ["hello", "Playing", "unaffable", "##", "[UNK]", "[CLS]", "  ", "e\u0301", "1.5", "it's"]
texts = st.lists(
    st.one_of(
        st.characters(blacklist_categories=()),  # anything, surrogates too
        st.sampled_from(SPECIAL_CHARS),
    ),
    max_size=60,
).map("".join)


def stable(text):
    """Characters whose Unicode category is the same in Unicode 3.2 and in this Python.

    HF's tokenizer classifies characters with old Unicode tables (see
    scripts/survey_hf_unicode.py); on characters whose category never changed, both agree.
    """
    return all(
        c in STABLE_EXTRA
        or (
            unicodedata.category(c) not in ("Cn", "Cs")
            and unicodedata.ucd_3_2_0.category(c) == unicodedata.category(c)
        )
        for c in text
    )


STABLE_EXTRA = set("😀👍🏽\U0001f1e8\U0001f1f3\ue000\U000f0000")  # emoji, private use
valid_texts = (
    st.lists(
        st.one_of(
            st.characters(blacklist_categories=("Cs", "Cn")).filter(stable),
            st.sampled_from([c for c in SPECIAL_CHARS if stable(c)]),
        ),
        max_size=60,
    )
    .map("".join)
    .filter(
        # transformers matches its special tokens inside text; bert4keras (and we) do not
        lambda text: not any(s in text for s in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    )
)
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@functools.lru_cache(maxsize=None)
def tokenizer(lower, rules, vocab="chinese", **kwargs):
    vocab = (
        chinese_vocab()
        if vocab == "chinese"
        else load_vocab(os.path.join(minilm_dir(), "vocab.txt"))
    )
    return Tokenizer(vocab, do_lower_case=lower, unicode_rules=rules, **dict(kwargs))


def assert_valid(t, text, ids, segments, offsets, maxlen=None):
    assert len(ids) == len(segments) == len(offsets)
    if maxlen is not None:
        assert len(ids) <= maxlen
    if maxlen is None or maxlen >= 2:
        assert ids[0] == t.start_id and ids[-1] == t.end_id
        assert offsets[0] == offsets[-1] == (0, 0)
    inner = offsets[1:-1]
    previous = 0
    for s, e in inner:
        assert 0 <= s < e <= len(text), (text, s, e)
        assert s >= previous
        previous = s


@pytest.mark.parametrize("rules", ["hf", "bert4keras"])
@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
@SETTINGS
@given(text=texts, maxlen=st.one_of(st.none(), st.integers(2, 40)))
def test_wordpiece_properties(lower, rules, text, maxlen):
    t = tokenizer(lower, rules)
    ids, segments, offsets = t.encode(text, maxlen=maxlen, return_offsets=True)
    assert_valid(t, text, ids, segments, offsets, maxlen)
    assert (ids, segments) == t.encode(text, maxlen=maxlen)
    assert t.encode_batch([text], maxlen=maxlen, return_offsets=True) == (
        [ids],
        [segments],
        [offsets],
    )
    tokens, spans = t.tokenize_with_offsets(text, maxlen=maxlen)
    assert t.tokens_to_ids(tokens) == ids and spans == offsets
    if rules == "hf":  # per-character normalisation: every span gives back its token
        check_offsets(t, text, tokens[1:-1], spans[1:-1])
    mapping = t.rematch(text, tokens)
    assert mapping[0] == mapping[-1] == []
    for m, (s, e) in zip(mapping[1:-1], spans[1:-1]):
        assert m and all(s <= i < e for i in m)
    assert isinstance(t.decode(ids), str)

    # the fast path and the exact path agree
    normalized, index = t._normalize_exact(text)
    exact_ids, exact_offsets = [], []
    t._encode_normalized(normalized, tables(rules).token_re, exact_ids, exact_offsets)
    full_ids, full_offsets = t._encode_text(text)
    assert exact_ids == full_ids
    assert t._remap(exact_offsets, index) == full_offsets


@SETTINGS
@given(
    first=texts,
    second=texts,
    maxlen=st.integers(3, 30),
    truncate_from=st.sampled_from(["right", "left", 1, -2]),
)
def test_pairs_respect_maxlen(first, second, maxlen, truncate_from):
    t = tokenizer(True, "hf")
    ids, segments, offsets = t.encode(
        first, second, maxlen=maxlen, truncate_from=truncate_from, return_offsets=True
    )
    assert len(ids) <= maxlen
    assert ids[0] == t.start_id and ids[-1] == t.end_id
    assert segments == sorted(segments)
    assert ids.count(t.start_id) == 1 and ids.count(t.end_id) == 2
    cut = segments.index(1) if 1 in segments else len(ids)
    for text, part in ((first, offsets[:cut]), (second, offsets[cut:])):
        for s, e in part:
            assert 0 <= s <= e <= len(text)


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
@pytest.mark.parametrize("vocab", ["chinese", "minilm"])
@SETTINGS
@given(text=valid_texts)
def test_random_text_matches_transformers(vocab, lower, text):
    """Same ids and offsets on valid UTF-8 (transformers cannot take lone surrogates) made
    of characters both Unicode tables agree on."""
    t = tokenizer(lower, "hf", vocab)
    expected = reference(vocab, lower)(text, return_offsets_mapping=True)
    ids, _, offsets = t.encode(text, return_offsets=True)
    assert ids == expected["input_ids"]
    assert offsets == [tuple(o) for o in expected["offset_mapping"]]


def test_empty_and_whitespace_only():
    t = tokenizer(True, "hf")
    for text in ("", " ", "\t\n\r", "\x00\u200b", "\u0301"):
        assert t.encode(text, return_offsets=True) == ([101, 102], [0, 0], [(0, 0), (0, 0)])
        assert t.tokenize(text) == ["[CLS]", "[SEP]"]
        assert t.rematch(text, t.tokenize(text)) == [[], []]


def test_very_long_input():
    t = tokenizer(True, "hf")
    text = ("我们今天去公园散步, and then we played football! 😀 " * 20000)[:1_000_003]
    ids, segments, offsets = t.encode(text, return_offsets=True)
    assert len(ids) > 400_000
    assert_valid(t, text, ids, segments, offsets)
    ids, segments, offsets = t.encode(text, maxlen=512, return_offsets=True)
    assert len(ids) == 512 and ids[-1] == t.end_id
    ids, _, offsets = t.encode(text, maxlen=512, truncate_from="left", return_offsets=True)
    assert ids[0] == t.start_id and offsets[-2][1] == len(text.rstrip())
    long_word = "x" * 250  # longer than word_maxlen: one unknown token spanning it all
    assert t.encode(long_word, return_offsets=True)[::2] == (
        [101, 100, 102],
        [(0, 0), (0, 250), (0, 0)],
    )
