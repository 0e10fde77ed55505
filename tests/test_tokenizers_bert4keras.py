"""Against the original bert4keras 0.11.5, recorded by scripts/make_tokenizer_fixtures.py
into tests/fixtures/tokenizers/bert4keras.json (CI does not need bert4keras itself).

With ``unicode_rules='bert4keras'`` our `Tokenizer` reproduces the original's ids and
`rematch` on every line of the corpora, `load_vocab(simplified=True)`, `encode` over a grid
of pairs / patterns / truncation sides / maxlen, `pre_tokenize`, and `decode`."""

import functools
import itertools

import pytest

from kerasformers.tokenizers import Tokenizer, load_vocab
from tests.tokenizer_data import CORPORA, chinese_vocab_path, load_fixture, reviews, sha

FIXTURE = load_fixture("bert4keras.json")
CHUNK = FIXTURE["chunk"]


@functools.lru_cache(maxsize=None)
def vocab():
    return load_vocab(chinese_vocab_path())


def chunk_mismatches(tokenizer, lines, record):
    """Indices of the CHUNK-line blocks whose ids or rematch hash differs."""
    ids, mappings = [], []
    for line in lines:
        tokens = tokenizer.tokenize(line)
        ids.append(tokenizer.tokens_to_ids(tokens))
        mappings.append(tokenizer.rematch(line, tokens))
    assert record["lines"] == len(lines)
    bad = []
    for k in range(0, len(lines), CHUNK):
        if sha(ids[k : k + CHUNK]) != record["ids"][k // CHUNK]:
            bad.append(("ids", k))
        if sha(mappings[k : k + CHUNK]) != record["rematch"][k // CHUNK]:
            bad.append(("rematch", k))
    return bad


def test_fixture_provenance():
    assert FIXTURE["bert4keras_version"] == "0.11.5"


def test_load_vocab_simplified_matches_original():
    v = FIXTURE["vocab"]
    token_dict = vocab()
    assert len(token_dict) == v["size"]
    assert sha(sorted(token_dict.items(), key=lambda x: x[1])) == v["sha256"]
    simplified, keep = load_vocab(chinese_vocab_path(), simplified=True, startswith=v["startswith"])
    assert len(simplified) == v["simplified_size"]
    assert keep[:20] == v["keep_tokens_head"]
    assert sha(keep) == v["keep_tokens_sha256"]
    assert sha(sorted(simplified.items(), key=lambda x: x[1])) == v["simplified_sha256"]


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
@pytest.mark.parametrize("corpus", ["reviews", "daily"])
def test_corpus_ids_and_rematch_match_original(corpus, lower):
    tokenizer = Tokenizer(vocab(), do_lower_case=lower, unicode_rules="bert4keras")
    record = FIXTURE["corpora"][corpus]["do_lower_case=%s" % lower]
    assert chunk_mismatches(tokenizer, CORPORA[corpus](), record) == []


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
def test_jieba_pre_tokenize_matches_original(lower):
    import jieba

    jieba.setLogLevel(60)
    record = FIXTURE["jieba"]
    assert FIXTURE["jieba_version"] == jieba.__version__
    extended = dict(vocab())
    for word in record["words"]:
        extended[word] = len(extended)
    tokenizer = Tokenizer(
        extended, do_lower_case=lower, pre_tokenize=jieba.lcut, unicode_rules="bert4keras"
    )
    lines = reviews()[: record["lines"]]
    assert chunk_mismatches(tokenizer, lines, record["do_lower_case=%s" % lower]) == []


# bert4keras's rematch lower-cases the whole text first and then uses positions in the
# lower-cased text: after 'İ' (which lower-cases to two characters) every index is off by one.
ORIGINAL_REMATCH_BUG = {"İstanbul ıi"}


@pytest.mark.parametrize(
    "case", FIXTURE["cases"], ids=lambda c: "%r-%s" % (c["text"][:12], c["do_lower_case"])
)
def test_cases_match_original(case):
    tokenizer = Tokenizer(vocab(), do_lower_case=case["do_lower_case"], unicode_rules="bert4keras")
    text = case["text"]
    tokens = tokenizer.tokenize(text)
    assert tokens == case["tokens"]
    assert tokenizer.tokens_to_ids(tokens) == case["ids"]
    assert tokenizer.decode(case["ids"]) == case["decode"]
    mapping = tokenizer.rematch(text, tokens)
    if text in ORIGINAL_REMATCH_BUG and case["do_lower_case"]:
        assert mapping != case["rematch"]
        spans = tokenizer.encode(text, return_offsets=True)[2]
        assert mapping == [list(range(s, e)) for s, e in spans]
        assert mapping[1][0] == 0 and mapping[-2][-1] == len(text) - 1
    else:
        assert mapping == case["rematch"]


def encode_cases():
    grid = FIXTURE["encode"]["grid"]
    keys = ("maxlen", "pattern", "truncate_from", "pair")
    for k, kwargs in enumerate(FIXTURE["encode"]["settings"]):
        for t, (first, second) in enumerate(FIXTURE["encode"]["texts"]):
            yield (
                k,
                kwargs,
                first,
                second,
                FIXTURE["encode"]["hashes"][k][t],
                list(itertools.product(*[grid[key] for key in keys])),
            )


@pytest.mark.parametrize(
    "k, kwargs, first, second, hashes, grid", list(encode_cases()), ids=lambda x: None
)
def test_encode_grid_matches_original(k, kwargs, first, second, hashes, grid):
    # bert4keras allows maxlen + 1 tokens for a pair with token_start=None and 'S*E*E' (room
    # for a start token that is not there): a bug (issue #18), kept behind bert4keras_maxlen.
    original = Tokenizer(vocab(), do_lower_case=True, bert4keras_maxlen=True, **kwargs)
    tokenizer = Tokenizer(vocab(), do_lower_case=True, **kwargs)
    assert len(hashes) == len(grid)
    for (maxlen, pattern, truncate_from, pair), expected in zip(grid, hashes):
        results = []
        for t in (original, tokenizer):
            try:
                results.append(
                    list(
                        t.encode(
                            first,
                            second if pair else None,
                            maxlen=maxlen,
                            pattern=pattern,
                            truncate_from=truncate_from,
                        )
                    )
                )
            except ValueError:  # the original raises IndexError where maxlen is too small
                results.append("error")
        result, ours = results
        assert sha(result)[:12] == expected, (
            kwargs,
            first,
            second,
            pair,
            maxlen,
            pattern,
            truncate_from,
            result,
        )
        if ours != "error" and maxlen is not None:
            assert len(ours[0]) <= maxlen
        if not (pair and pattern == "S*E*E" and kwargs.get("token_start", "") is None):
            assert ours == result


@pytest.mark.parametrize("k", range(len(FIXTURE["encode"]["settings"])))
def test_tokenize_maxlen_matches_original(k):
    tokenizer = Tokenizer(vocab(), do_lower_case=True, **FIXTURE["encode"]["settings"][k])
    got = [
        tokenizer.tokenize(text, maxlen=maxlen)
        for text in ("今天天气很好", "hello world again")
        for maxlen in (None, 1, 2, 3, 7)
    ]
    assert got == FIXTURE["encode"]["tokenize"][k]
