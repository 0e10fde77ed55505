"""WordPiece `Tokenizer`: exact ids and offsets against transformers on real corpora, and the
bert4keras API (encode patterns, truncation, decode, rematch, pre_tokenize, translate)."""

import functools
import os
import unicodedata

import pytest

from kerasformers.tokenizers import (
    Tokenizer,
    TokenizerBase,
    from_pretrained,
    load_vocab,
    save_vocab,
)
from kerasformers.tokenizers._unicode import DROP, tables
from kerasformers.tokenizers.vocab import stem
from tests.tokenizer_data import CORPORA, chinese_vocab_path, minilm_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXPECTED_LINES = {"reviews": 35124, "daily": 19484}


@functools.lru_cache(maxsize=None)
def chinese_vocab():
    return load_vocab(chinese_vocab_path())


@functools.lru_cache(maxsize=None)
def minilm_vocab():
    return load_vocab(os.path.join(minilm_dir(), "vocab.txt"))


@functools.lru_cache(maxsize=None)
def ours(vocab_name, lower, rules="hf"):
    vocab = chinese_vocab() if vocab_name == "chinese" else minilm_vocab()
    return Tokenizer(vocab, do_lower_case=lower, unicode_rules=rules)


@functools.lru_cache(maxsize=None)
def reference(vocab_name, lower):
    from transformers import BertTokenizer

    # transformers 5 ignores vocab_file= (all [UNK]); vocab= is the working spelling
    vocab = chinese_vocab() if vocab_name == "chinese" else minilm_vocab()
    return BertTokenizer(vocab=vocab, do_lower_case=lower)


def normalizer(tokenizer):
    """What the tokenizer makes of one original character (to map spans back)."""
    flags = tables(tokenizer._unicode_rules).flags

    @functools.lru_cache(maxsize=None)
    def norm(ch):
        if tokenizer.do_lower_case:
            ch = "".join(
                c
                for c in unicodedata.normalize("NFD", ch.lower())
                if unicodedata.category(c) != "Mn"
            )
        return "".join(c for c in ch if flags[ord(c)] != DROP)

    return norm


def check_offsets(tokenizer, text, tokens, offsets):
    """Spans lie in the text, do not go backwards, and give back each token's text (or,
    when one character normalises to several tokens, e.g. a Hangul syllable into jamo,
    contain it)."""
    norm = normalizer(tokenizer)
    previous = 0
    for token, (s, e) in zip(tokens, offsets):
        assert 0 <= s < e <= len(text), (text, token, s, e)
        assert s >= previous, (text, token, s, previous)
        previous = s
        span = "".join(map(norm, text[s:e]))
        assert span == stem(token) or stem(token) in span, (text, token, text[s:e])


def compare_with_transformers(vocab_name, lower, lines):
    tokenizer, ref = ours(vocab_name, lower), reference(vocab_name, lower)
    ids, segments, offsets = tokenizer.encode_batch(lines, return_offsets=True)
    expected = ref(list(lines), return_offsets_mapping=True)
    for k, line in enumerate(lines):
        assert ids[k] == expected["input_ids"][k], (k, line)
        assert offsets[k] == [tuple(o) for o in expected["offset_mapping"][k]], (k, line)
        assert segments[k] == [0] * len(ids[k])
    tokens_checked = 0
    unk = tokenizer.unk_id
    for line, line_ids, line_offsets in zip(lines, ids, offsets):
        tokens = tokenizer.ids_to_tokens(line_ids[1:-1])
        spans = line_offsets[1:-1]
        known = [(t, o) for t, i, o in zip(tokens, line_ids[1:-1], spans) if i != unk]
        check_offsets(tokenizer, line, [t for t, _ in known], [o for _, o in known])
        for i, (s, e) in zip(line_ids[1:-1], spans):  # [UNK] spans: inside, non-empty
            assert i != unk or 0 <= s < e <= len(line)
        tokens_checked += len(tokens)
    return tokens_checked


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
@pytest.mark.parametrize("corpus", ["reviews", "daily"])
def test_chinese_corpus_matches_transformers(corpus, lower):
    """Every line: ids and offsets identical to transformers' BertTokenizer
    (bert-base-chinese vocab), and every span gives back its token."""
    lines = CORPORA[corpus]()
    assert len(lines) == EXPECTED_LINES[corpus]
    tokens = compare_with_transformers("chinese", lower, lines)
    assert tokens > 40 * len(lines)


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
def test_english_and_mixed_text_match_transformers(lower):
    """The uncased MiniLM vocab on English (standard-library source lines) and on the mixed
    Chinese/English reviews, where most Chinese characters are [UNK]."""
    lines = CORPORA["english"]() + CORPORA["reviews"]()[:5000]
    assert len(lines) > 20000
    compare_with_transformers("minilm", lower, lines)


def test_from_pretrained_matches_auto_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(minilm_dir())
    assert isinstance(tokenizer, Tokenizer) and tokenizer.do_lower_case
    ref = AutoTokenizer.from_pretrained(minilm_dir())
    lines = list(CORPORA["english"]()[:3000]) + ["Héllo WORLD, naïve café!", "你好 ok"]
    expected = ref(lines, return_offsets_mapping=True)
    ids, _, offsets = tokenizer.encode_batch(lines, return_offsets=True)
    assert ids == expected["input_ids"]
    assert offsets == [[tuple(o) for o in line] for line in expected["offset_mapping"]]
    # a single file works too, and so do the tokenizer.json / classmethod spellings
    for built in (
        from_pretrained(os.path.join(minilm_dir(), "vocab.txt")),
        from_pretrained(os.path.join(minilm_dir(), "tokenizer.json")),
        Tokenizer.from_pretrained(minilm_dir()),
    ):
        assert built.encode_batch(lines)[0] == ids


def test_fast_and_exact_paths_agree_on_corpus_lines():
    """The exact path (per-character normalisation) gives what the fast path gives."""
    for lower in (False, True):
        tokenizer = ours("chinese", lower)
        for line in CORPORA["reviews"]()[:3000:7] + CORPORA["english"]()[:3000:7]:
            normalized, index = tokenizer._normalize_exact(line)
            ids, offsets = [], []
            tokenizer._encode_normalized(normalized, tables().token_re, ids, offsets)
            offsets = tokenizer._remap(offsets, index)
            assert (ids, offsets) == tokenizer._encode_text(line), line


# -- vocabulary ------------------------------------------------------------------------------
def test_load_and_save_vocab(tmp_path):
    vocab = chinese_vocab()
    assert len(vocab) == 21128
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [
        0,
        100,
        101,
        102,
        103,
    ]
    assert sorted(vocab.values()) == list(range(21128))
    path = tmp_path / "vocab.txt"
    save_vocab(str(path), vocab)
    assert load_vocab(str(path)) == vocab

    simplified, keep = load_vocab(
        chinese_vocab_path(), simplified=True, startswith=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    assert keep[:4] == [0, 100, 101, 102]
    assert list(simplified)[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    assert len(simplified) == len(keep) == 13584
    inverse = {v: k for k, v in vocab.items()}
    assert all(inverse[old] == token for token, old in zip(simplified, keep))
    assert "##的" not in simplified and "的" in simplified and "##ing" in simplified


def test_vocab_lines_with_spaces_and_blank_lines(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("[PAD]\na 1\n\n##b\n", encoding="utf-8")
    assert load_vocab(str(path)) == {"[PAD]": 0, "a": 1, "": 2, "##b": 3}


# -- API -------------------------------------------------------------------------------------
SMALL = {
    "[PAD]": 0,
    "[UNK]": 1,
    "[CLS]": 2,
    "[SEP]": 3,
    "[MASK]": 4,
    "我": 5,
    "爱": 6,
    "keras": 7,
    "play": 8,
    "##ing": 9,
    "!": 10,
    "un": 11,
    "##aff": 12,
    "##able": 13,
    ",": 14,
    "it": 15,
    "'": 16,
    "s": 17,
    "1": 18,
    ".": 19,
    "5": 20,
    "##5": 21,
}


def test_special_ids_are_public():
    t = Tokenizer(SMALL)
    assert (t.pad_id, t.unk_id, t.start_id, t.end_id, t.mask_id) == (0, 1, 2, 3, 4)
    assert (t.cls_id, t.sep_id) == (2, 3)
    assert (
        t._token_pad_id,
        t._token_unk_id,
        t._token_start_id,
        t._token_end_id,
        t._token_mask_id,
        t._vocab_size,
    ) == (0, 1, 2, 3, 4, len(SMALL))
    assert t.vocab_size == len(t) == len(SMALL)
    no_mask = Tokenizer({k: v for k, v in SMALL.items() if k != "[MASK]"})
    assert no_mask.mask_id is None


def test_token_id_conversions():
    t = Tokenizer(SMALL)
    assert t.token_to_id("keras") == 7 and t.token_to_id("nope") == 1
    assert t.tokens_to_ids(["我", "nope", "##ing"]) == [5, 1, 9]
    assert t.id_to_token(9) == "##ing"
    assert t.ids_to_tokens([2, 5, 3]) == ["[CLS]", "我", "[SEP]"]
    with pytest.raises(ValueError, match=r"no token_unk='\[UNK\]'"):
        Tokenizer({"[CLS]": 0, "[SEP]": 1, "a": 2})
    no_unk = Tokenizer({"[CLS]": 0, "[SEP]": 1, "a": 2}, token_unk=None)  # explicitly none
    with pytest.raises(KeyError):
        no_unk.tokens_to_ids(["b"])


def test_tokenize_and_encode():
    t = Tokenizer(SMALL, do_lower_case=True)
    assert t.tokenize("我爱Keras!") == ["[CLS]", "我", "爱", "keras", "!", "[SEP]"]
    assert t.tokenize("Playing unaffable") == [
        "[CLS]",
        "play",
        "##ing",
        "un",
        "##aff",
        "##able",
        "[SEP]",
    ]
    # an unknown word stays whole as a token (bert4keras) and maps to [UNK]
    assert t.tokenize("zzz") == ["[CLS]", "zzz", "[SEP]"]
    assert t.encode("zzz") == ([2, 1, 3], [0, 0, 0])
    assert t.encode("我爱", "keras") == ([2, 5, 6, 3, 7, 3], [0, 0, 0, 0, 1, 1])
    assert t.encode("我爱", "keras", pattern="S*ES*E") == (
        [2, 5, 6, 3, 2, 7, 3],
        [0, 0, 0, 0, 1, 1, 1],
    )
    # pre-tokenized input
    assert t.encode(["[CLS]", "我", "[SEP]"], ["keras", "[SEP]"], pattern="x") == (
        [2, 5, 3, 7, 3],
        [0, 0, 0, 1, 1],
    )
    assert t.encode(b"\xe6\x88\x91") == ([2, 5, 3], [0, 0, 0])


def test_truncation():
    t = Tokenizer(SMALL)
    assert t.tokenize("我爱我爱我", maxlen=4) == ["[CLS]", "我", "爱", "[SEP]"]
    assert t.encode("我爱我爱我", maxlen=4) == ([2, 5, 6, 3], [0] * 4)
    assert t.encode("我爱我爱我", maxlen=4, truncate_from="left")[0] == [2, 6, 5, 3]
    assert t.encode("我爱我爱我", maxlen=4, truncate_from=1)[0] == [2, 6, 5, 3]
    # pairs: the longer one loses tokens first; S*E*E counts one start token less
    ids, segments = t.encode("我爱我爱我", "爱爱", maxlen=7)
    assert ids == [2, 5, 6, 3, 6, 6, 3]
    assert segments == [0, 0, 0, 0, 1, 1, 1]
    ids, segments, offsets = t.encode("我爱我爱我", "爱爱", maxlen=7, return_offsets=True)
    assert offsets == [(0, 0), (0, 1), (1, 2), (0, 0), (0, 1), (1, 2), (0, 0)]
    with pytest.raises(ValueError):
        t.encode("我爱", maxlen=0)
    with pytest.raises(ValueError):
        t.encode("我爱", maxlen=3, truncate_from="middle")


def test_offsets_and_unk_spans():
    t = Tokenizer(SMALL, do_lower_case=True)
    text = "我 ☃☃ Playing! é"
    ids, _, offsets = t.encode(text, return_offsets=True)
    assert t.ids_to_tokens(ids) == ["[CLS]", "我", "[UNK]", "play", "##ing", "!", "[UNK]", "[SEP]"]
    assert offsets == [(0, 0), (0, 1), (2, 4), (5, 9), (9, 12), (12, 13), (14, 15), (0, 0)]
    assert t.rematch(text, t.tokenize(text)) == [
        [],
        [0],
        [2, 3],
        [5, 6, 7, 8],
        [9, 10, 11],
        [12],
        [14],
        [],
    ]
    # ids_to_tokens gives '[UNK]': it still gets the characters it stands for
    assert t.rematch(text, t.ids_to_tokens(ids)) == [
        [],
        [0],
        [2, 3],
        [5, 6, 7, 8],
        [9, 10, 11],
        [12],
        [14],
        [],
    ]
    # truncated token lists (either side) and foreign lists
    tokens = t.tokenize(text, maxlen=4)
    assert t.rematch(text, tokens) == [[], [0], [2, 3], []]
    # not our own tokens: searched in order, like the original ('play' after '!': absent)
    assert t.rematch(text, ["[CLS]", "!", "play", "[SEP]"]) == [[], [12], [], []]


def test_decode():
    vocab = chinese_vocab()
    t = Tokenizer(vocab, do_lower_case=True)
    text = "今天天气很好，我们去公园吧！"
    assert t.decode(t.encode(text)[0]) == text
    assert t.decode(t.encode("It's 1.5 miles, unbelievable!")[0]) == "it's 1.5 miles, unbelievable!"
    assert t.decode(t.encode("我喜欢Keras和JAX")[0]) == "我喜欢keras和jax"


def test_token_translate():
    t = Tokenizer(SMALL, token_translate={"!": "un"})
    assert t.tokenize("我!") == ["[CLS]", "我", "un", "[SEP]"]
    assert t.encode("我!") == ([2, 5, 11, 3], [0, 0, 0, 0])
    assert t.encode("我!", return_offsets=True)[2] == [(0, 0), (0, 1), (1, 2), (0, 0)]
    assert t.decode([5, 11]) == "我!"
    assert t.rematch("我!", t.tokenize("我!")) == [[], [0], [1], []]


def test_pre_tokenize_keeps_vocabulary_words():
    import jieba

    jieba.setLogLevel(60)
    vocab = dict(chinese_vocab())
    for word in ("今天天气", "我们", "公园"):
        vocab[word] = len(vocab)
    t = Tokenizer(vocab, pre_tokenize=jieba.lcut)
    text = "今天天气很好，我们去公园吧"
    tokens, offsets = t.tokenize_with_offsets(text)
    assert tokens[1:-1] == ["今天天气", "很", "好", "，", "我们", "去", "公园", "吧"]
    assert offsets[1:4] == [(0, 4), (4, 5), (5, 6)]
    check_offsets(t, text, tokens[1:-1], offsets[1:-1])
    assert t.encode(text, return_offsets=True)[2] == offsets
    assert t.rematch(text, tokens)[1] == [0, 1, 2, 3]
    # without the pre-tokenizer the words are split into characters
    assert Tokenizer(vocab).tokenize(text)[1:3] == ["今", "天"]


def test_encode_batch_equals_encode():
    t = ours("chinese", True)
    lines = list(CORPORA["reviews"]()[:200])
    seconds = list(CORPORA["daily"]()[:200])
    for kwargs in (dict(), dict(maxlen=32), dict(maxlen=32, truncate_from="left")):
        batch = t.encode_batch(lines, return_offsets=True, **kwargs)
        assert list(zip(*batch)) == [t.encode(x, return_offsets=True, **kwargs) for x in lines]
        batch = t.encode_batch(lines, seconds, **kwargs)
        assert list(zip(*batch)) == [t.encode(a, b, **kwargs) for a, b in zip(lines, seconds)]
    assert t.encode_batch([]) == ([], [])
    with pytest.raises(ValueError):
        t.encode_batch(["a"], ["b", "c"])


def test_unicode_rules_differ_only_on_exotic_characters():
    hf, b4k = ours("chinese", False), ours("chinese", False, "bert4keras")
    assert hf.encode("早餐\ue139期")[0] == [101, 3193, 7623, 3309, 102]  # private use: dropped
    assert b4k.encode("早餐\ue139期")[0] == [101, 3193, 7623, 100, 3309, 102]  # kept: [UNK]
    # str.lower() of a whole word gives a final sigma; HF lower-cases per character
    greek = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "οδοσ": 3, "οδος": 4}
    assert Tokenizer(greek, do_lower_case=True).encode("ΟΔΟΣ")[0] == [1, 3, 2]
    assert Tokenizer(greek, do_lower_case=True, unicode_rules="bert4keras").encode("ΟΔΟΣ")[0] == [
        1,
        4,
        2,
    ]
    with pytest.raises(ValueError):
        Tokenizer(SMALL, unicode_rules="other")


def test_is_a_tokenizer_base():
    assert isinstance(ours("chinese", True), TokenizerBase)
    assert Tokenizer._is_cjk_character("中") and Tokenizer._is_punctuation("，")
    assert Tokenizer._is_redundant("##的") and not Tokenizer._is_redundant("##ing")
    assert Tokenizer.stem("##ing") == "ing" and Tokenizer._is_special("[CLS]")
