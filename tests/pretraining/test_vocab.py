"""Vocabularies: one built from a desensitized corpus, and bert-base-chinese shrunk to a corpus."""

import pytest

from kerasformers.pretraining.vocab import build_vocab, corpus_vocab
from kerasformers.tokenizers import Tokenizer, load_vocab
from tests.pretraining.test_corpus import VOCAB, peoples_daily, reviews, tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def desensitized(texts):
    """Real reviews with every jieba word replaced by a numeric id, space separated."""
    import jieba

    ids = {}
    return [
        " ".join(str(ids.setdefault(w, 1000 + 7 * len(ids))) for w in jieba.lcut(t) if w.strip())
        for t in texts
    ]


def test_build_vocab_on_a_desensitized_corpus():
    texts = desensitized(reviews(200))
    token_dict = build_vocab(texts)
    assert list(token_dict)[:5] == SPECIALS
    assert list(token_dict.values()) == list(range(len(token_dict)))
    words = [w for t in texts for w in t.split()]
    assert len(token_dict) == len(set(words)) + 5
    counts = [words.count(t) for t in list(token_dict)[5:]]
    assert counts == sorted(counts, reverse=True)  # most frequent first
    tok = Tokenizer(token_dict)
    for text in texts[:50]:
        ids = tok.encode(text)[0]
        assert tok.ids_to_tokens(ids[1:-1]) == text.split()  # one token per id


def test_build_vocab_order_and_limits():
    texts = ["5 3 3 4", "4 9", "[MASK] 3 x"]
    assert list(build_vocab(texts)) == SPECIALS + ["3", "4", "5", "9", "x"]  # ties: first seen
    assert list(build_vocab(texts, min_count=2)) == SPECIALS + ["3", "4"]
    assert list(build_vocab(texts, max_size=6)) == SPECIALS + ["3"]
    assert list(build_vocab(texts, special_tokens=["[UNK]"], split=list))[:3] == ["[UNK]", " ", "3"]
    tok = Tokenizer(build_vocab(texts, min_count=2))
    assert tok.ids_to_tokens(tok.encode("3 4 5")[0]) == ["[CLS]", "3", "4", "[UNK]", "[SEP]"]
    with pytest.raises(ValueError, match="max_size=3 is smaller than the 5 special tokens"):
        build_vocab(texts, max_size=3)
    with pytest.raises(ValueError, match="min_count must be an int >= 1, got 0"):
        build_vocab(texts, min_count=0)
    with pytest.raises(ValueError, match="special_tokens repeat a token"):
        build_vocab(texts, special_tokens=["[PAD]", "[PAD]"])
    with pytest.raises(TypeError, match="text 1 is a bytes"):
        build_vocab(["1", b"2"])


def test_corpus_vocab_tokenizes_the_corpus_as_the_full_vocabulary():
    texts = reviews(150) + peoples_daily(150)
    token_dict, keep_tokens = corpus_vocab(VOCAB, texts)
    full = load_vocab(VOCAB)
    assert list(token_dict)[:5] == SPECIALS
    assert keep_tokens[:5] == [full[t] for t in SPECIALS] == [0, 100, 101, 102, 103]
    assert 1000 < len(token_dict) < 5000
    assert len(keep_tokens) == len(token_dict) and keep_tokens[5:] == sorted(keep_tokens[5:])
    inverse = {i: t for t, i in full.items()}
    for token, new_id in token_dict.items():  # new id i <- old id keep_tokens[i]
        assert inverse[keep_tokens[new_id]] == token
    small = Tokenizer(token_dict, do_lower_case=True)
    big = tokenizer()
    for text in texts:
        assert [keep_tokens[i] for i in small.encode(text)[0]] == big.encode(text)[0]


def test_corpus_vocab_min_count_and_errors():
    texts = reviews(100)
    token_dict, keep_tokens = corpus_vocab(VOCAB, texts, min_count=5)
    assert len(token_dict) < len(corpus_vocab(VOCAB, texts)[0])
    assert list(token_dict)[:5] == SPECIALS
    with pytest.raises(ValueError, match=r"special tokens \['<s>'\] are not in .*vocab.txt"):
        corpus_vocab(VOCAB, texts, special_tokens=["[PAD]", "<s>"])
    with pytest.raises(ValueError, match="min_count must be an int >= 1"):
        corpus_vocab(VOCAB, texts, min_count=0.5)
