"""`Tokenizer`: the BERT WordPiece tokenizer with bert4keras semantics and exact offsets.

How it is fast (pure Python, no extension):

* Characters are classified once per process (`_unicode.tables()`), so a line is cut into
  "runs of single-character tokens" (CJK, punctuation) and "words" by one compiled regex.
  A run of Chinese text is a single regex match: its ids come from one C-level
  ``map(dict.__getitem__, run)`` and its offsets from a slice of a precomputed list.
* Words go through greedy longest-match-first WordPiece once; the result (ids and relative
  offsets) is cached per word.
* Normalisation only takes the exact (slower) path when it is not one character to one
  character: control characters to drop, lone combining marks, Hangul decomposition, ...
  Lines of ordinary text never do.

The exact path follows the original step by step and keeps, for every normalised character,
the index of the original character it came from, so offsets always point into the text as
given.

Memory stays bounded whatever the input: the word caches keep at most `_WORD_CACHE_LIMIT`
words (the older half is dropped when full; words longer than `word_maxlen` are not cached),
the character cache at most `_CHAR_CACHE_LIMIT` characters, and the shared table of offset
pairs covers the first `_OFFSETS_LIMIT` positions (further offsets are made per call and
belong to the result).
"""

import os
import re
import unicodedata
from itertools import islice, repeat

from kerasformers.tokenizers import _unicode
from kerasformers.tokenizers._unicode import DROP, tables
from kerasformers.tokenizers.base import DictVocabTokenizer
from kerasformers.tokenizers.hf_files import wordpiece_kwargs
from kerasformers.tokenizers.vocab import is_redundant, load_vocab, stem

# _OFFSETS[i] == (i, i + 1): offsets of a run of single-character tokens are a slice of it.
# It grows with the longest text seen, up to _OFFSETS_LIMIT positions (about 6 MB).
_OFFSETS = [(i, i + 1) for i in range(4096)]
_OFFSETS_LIMIT = 1 << 16
_WORD_CACHE_LIMIT = 1 << 16  # words per cache (two caches per tokenizer)
_CHAR_CACHE_LIMIT = 1 << 17  # characters in the character -> id cache


def _grow_offsets(n):
    n = min(2 * n + 1, _OFFSETS_LIMIT)
    if n > len(_OFFSETS):
        _OFFSETS.extend((i, i + 1) for i in range(len(_OFFSETS), n))


def _evict_half(cache):
    """Drop the older half of an insertion-ordered dict cache."""
    for key in list(islice(cache, len(cache) // 2)):
        del cache[key]


class _CharIds(dict):
    """char -> id of that single-character token, filled on first sight of each char."""

    __slots__ = ("_owner",)

    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    def __missing__(self, ch):
        token_id = self._owner._piece_ids(ch)
        token_id = token_id if isinstance(token_id, int) else token_id[0][0]
        if len(self) >= _CHAR_CACHE_LIMIT:
            self.clear()
        self[ch] = token_id
        return token_id


class Tokenizer(DictVocabTokenizer):
    """BERT WordPiece tokenizer (bert4keras semantics), with character offsets.

    Args:
        token_dict: ``{token: id}`` or the path of a ``vocab.txt``.
        do_lower_case: lower-case and strip accents (NFD, drop ``Mn``) first.
        word_maxlen: words longer than this become one unknown token (bert4keras: 200;
            HF's ``max_input_chars_per_word`` is 100).
        unicode_rules: ``'hf'`` (default) is what transformers and HF ``tokenizers`` do:
            private-use characters are dropped and lower-casing is per character.
            ``'bert4keras'`` reproduces the original exactly (private-use characters become
            ``[UNK]``; `str.lower` of the whole text, so a final sigma is ``ς``).  Ordinary
            text tokenizes the same under both.
        token_start, token_end, pre_tokenize, token_translate, token_pad, token_unk,
        token_mask: see `TokenizerBase`.

    Example:
        >>> tokenizer = Tokenizer({'[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, '我': 4,
        ...                        '爱': 5, 'keras': 6, 'play': 7, '##ing': 8, '!': 9},
        ...                       do_lower_case=True)
        >>> tokenizer.tokenize('我爱Keras!')
        ['[CLS]', '我', '爱', 'keras', '!', '[SEP]']
        >>> tokenizer.encode('我爱Keras!', 'Playing')
        ([2, 4, 5, 6, 9, 3, 7, 8, 3], [0, 0, 0, 0, 0, 0, 1, 1, 1])
        >>> ids, segments, offsets = tokenizer.encode('我爱 Keras!', return_offsets=True)
        >>> offsets
        [(0, 0), (0, 1), (1, 2), (3, 8), (8, 9), (0, 0)]
        >>> tokenizer.decode(ids)
        '我爱keras!'
    """

    def __init__(
        self, token_dict, do_lower_case=False, word_maxlen=200, unicode_rules="hf", **kwargs
    ):
        super().__init__(**kwargs)
        if isinstance(token_dict, (str, os.PathLike)):
            token_dict = load_vocab(token_dict)
        self._set_vocab(token_dict)
        self._do_lower_case = bool(do_lower_case)
        self._word_maxlen = word_maxlen
        self._max_token_len = max(map(len, self._token_dict), default=0)
        self._resolve_special_ids(required=("start", "end", "unk"))
        self._unicode_rules = unicode_rules
        self._tables = tables(unicode_rules)
        self._char_ids = _CharIds(self)
        self._word_ids = {}  # word -> id (one piece) or ((id, start, end), ...)
        self._word_tokens = {}  # word -> ((token, start, end), ...)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Build from an HF model directory (``vocab.txt`` or a WordPiece ``tokenizer.json``,
        with ``tokenizer_config.json`` for lower-casing and special tokens)."""
        options = wordpiece_kwargs(path)
        options.update(kwargs)
        return cls(**options)

    # -- vocabulary -----------------------------------------------------------------------
    @property
    def do_lower_case(self):
        return self._do_lower_case

    def tokens_to_ids(self, tokens):
        get, unk = self._token_dict.get, self._token_unk_id
        ids = [get(t, unk) for t in tokens]
        if unk is None and None in ids:
            for t in tokens:
                self.token_to_id(t)  # raises with the offending token
        return ids

    # -- WordPiece ------------------------------------------------------------------------
    def _wordpiece(self, word):
        """Greedy longest-match-first WordPiece: ``[(token, start, end)]`` within `word`.

        A word longer than `word_maxlen`, or one that cannot be fully matched, is returned
        whole (and maps to the unknown id), as in bert4keras.
        """
        n = len(word)
        if n > self._word_maxlen:
            return ((word, 0, n),)
        vocab, longest = self._token_dict, self._max_token_len
        pieces, start = [], 0
        while start < n:
            end = min(n, start + longest)
            while end > start:
                sub = word[start:end]
                if start > 0:
                    sub = "##" + sub
                if sub in vocab:
                    break
                end -= 1
            if end == start:
                return ((word, 0, n),)
            pieces.append((sub, start, end))
            start = end
        return tuple(pieces)

    def _word_pieces(self, word):
        pieces = self._word_tokens.get(word)
        if pieces is None:
            pieces = self._wordpiece(word)
            if len(word) <= self._word_maxlen:
                if len(self._word_tokens) >= _WORD_CACHE_LIMIT:
                    _evict_half(self._word_tokens)
                self._word_tokens[word] = pieces
        return pieces

    def _piece_ids(self, word):
        """Cached ids of a word: an int (one piece covering the word) or id triples."""
        translate = self._token_translate.get
        pieces = [
            (self.token_to_id(translate(t) or t), s, e) for t, s, e in self._word_pieces(word)
        ]
        if len(pieces) == 1 and pieces[0][1] == 0 and pieces[0][2] == len(word):
            value = pieces[0][0]
        else:
            value = tuple(pieces)
        if len(word) <= self._word_maxlen:
            if len(self._word_ids) >= _WORD_CACHE_LIMIT:
                _evict_half(self._word_ids)
            self._word_ids[word] = value
        return value

    # -- normalisation --------------------------------------------------------------------
    def _normalize(self, text):
        """(normalised text, index, token regex): ``index[j]`` is the original position of
        normalised character ``j``, or None when positions are unchanged.  Drops the
        characters the tokenizer ignores (NUL, U+FFFD, controls).
        """
        T = self._tables
        if self._do_lower_case:
            t = text.lower()
            if len(t) != len(text):
                return self._normalize_exact(text) + (T.token_re,)
            if not unicodedata.is_normalized("NFD", t):
                t = t.translate(T.strip1)
                if not unicodedata.is_normalized("NFD", t):
                    return self._normalize_exact(text) + (T.token_re,)
            if T.lower_complex_bmp_re.search(t) is None:
                return t, None, T.token_bmp_re
            if T.lower_complex_re.search(t) is None:
                return t, None, T.token_re
        else:
            if T.complex_bmp_re.search(text) is None:
                return text, None, T.token_bmp_re
            if T.complex_re.search(text) is None:
                return text, None, T.token_re
        return self._normalize_exact(text) + (T.token_re,)

    def _normalize_exact(self, text, drop=True):
        """The exact path: (normalised text, index map), character by character."""
        if self._do_lower_case:
            if self._unicode_rules == "hf":
                pieces = [_unicode.strip_accents(ch.lower()) for ch in text]
                normalized = "".join(pieces)
            else:
                # bert4keras lower-cases the whole string (final-sigma rule) and NFDs the
                # whole string (which can reorder combining marks; the kept characters are
                # the same multiset, so the index map below stays monotone and valid).
                lowered, pieces, pos = text.lower(), [], 0
                for ch in text:
                    k = len(ch.lower())
                    pieces.append(_unicode.strip_accents(lowered[pos : pos + k]))
                    pos += k
                normalized = _unicode.strip_accents(lowered)
            index = []
            for i, piece in enumerate(pieces):
                index.extend(repeat(i, len(piece)))
        else:
            normalized, index = text, list(range(len(text)))
        if drop:
            flags = self._tables.flags
            keep = [j for j, c in enumerate(normalized) if flags[ord(c)] != DROP]
            if len(keep) != len(normalized):
                normalized = "".join([normalized[j] for j in keep])
                index = [index[j] for j in keep]
        return normalized, index

    # -- tokenization ---------------------------------------------------------------------
    def _encode_normalized(self, text, token_re, ids, offsets):
        """Append ids (and offsets into `text`, unless `offsets` is None) of normalised
        `text` (no pre_tokenize).  The hot loop of the tokenizer."""
        char_id = self._char_ids.__getitem__
        word_ids, piece_ids = self._word_ids, self._piece_ids
        if offsets is None:
            for m in token_re.finditer(text):
                if m.lastindex:  # a run of single-character tokens
                    ids += map(char_id, m.group())
                else:
                    value = word_ids.get(m.group())
                    if value is None:
                        value = piece_ids(m.group())
                    if value.__class__ is int:
                        ids.append(value)
                    else:
                        ids += [v[0] for v in value]
            return
        if len(text) >= len(_OFFSETS):
            _grow_offsets(len(text))
        offs = _OFFSETS
        covered = len(offs)
        for m in token_re.finditer(text):
            s, e = m.span()
            if m.lastindex:
                ids += map(char_id, m.group())
                if e <= covered:
                    offsets += offs[s:e]
                else:  # past the shared table: this call's own pairs
                    offsets += zip(range(s, e), range(s + 1, e + 1))
            else:
                value = word_ids.get(m.group())
                if value is None:
                    value = piece_ids(m.group())
                if value.__class__ is int:
                    ids.append(value)
                    offsets.append((s, e))
                else:
                    for token_id, a, b in value:
                        ids.append(token_id)
                        offsets.append((s + a, s + b))

    def _tokens_normalized(self, text, token_re):
        """(tokens, offsets) of normalised `text` (no pre_tokenize, no token_translate)."""
        tokens, offsets = [], []
        for m in token_re.finditer(text):
            s, e = m.span()
            if m.lastindex:
                tokens.extend(m.group())
                offsets.extend((i, i + 1) for i in range(s, e))
            else:
                for token, a, b in self._word_pieces(m.group()):
                    tokens.append(token)
                    offsets.append((s + a, s + b))
        return tokens, offsets

    @staticmethod
    def _remap(offsets, index):
        return [(index[s], index[e - 1] + 1) for s, e in offsets]

    def _encode_text(self, text):
        ids, offsets = [], []
        self._encode_into(text, ids, offsets)
        return ids, offsets

    def _encode_into(self, text, ids, offsets):
        if self._pre_tokenize is not None:
            tokens, text_offsets = self._tokenize_with_offsets(text)
            ids.extend(self.tokens_to_ids(self._translate(tokens)))
            if offsets is not None:
                offsets.extend(text_offsets)
            return
        normalized, index, token_re = self._normalize(text)
        if offsets is not None and len(normalized) > _OFFSETS_LIMIT:
            # A long text: fill the caches first (an ids-only pass that keeps nothing else).
            # Otherwise new cache entries land between the millions of offset pairs made
            # below, and each pins a block of memory that freeing the result cannot return.
            self._encode_normalized(normalized, token_re, [], None)
        if index is None or offsets is None:
            self._encode_normalized(normalized, token_re, ids, offsets)
        else:
            own = []
            self._encode_normalized(normalized, token_re, ids, own)
            offsets.extend(self._remap(own, index))

    def _tokenize_with_offsets(self, text):
        if self._pre_tokenize is not None:
            return self._pre_tokenized_with_offsets(text)
        normalized, index, token_re = self._normalize(text)
        tokens, offsets = self._tokens_normalized(normalized, token_re)
        if index is not None:
            offsets = self._remap(offsets, index)
        return tokens, offsets

    def _pre_tokenized_with_offsets(self, text):
        """bert4keras: `pre_tokenize` runs on the normalised text; its words found whole in
        the vocabulary are kept, the others are tokenized without it."""
        if self._do_lower_case:
            normalized, index = self._normalize_exact(text, drop=False)
        else:
            normalized, index = text, None
        tokens, offsets, cursor = [], [], 0
        for word in self._pre_tokenize(normalized):
            if not word:
                continue
            pos = normalized.find(word, cursor)
            found = pos >= 0
            if not found:
                pos = cursor
            if word in self._token_dict:
                word_tokens, word_offsets = [word], [(0, len(word))]
            else:
                sub, sub_index, token_re = self._normalize(word)
                word_tokens, word_offsets = self._tokens_normalized(sub, token_re)
                if sub_index is not None:
                    word_offsets = self._remap(word_offsets, sub_index)
            if found:
                word_offsets = [(pos + s, pos + e) for s, e in word_offsets]
                cursor = pos + len(word)
            else:  # the pre-tokenizer changed the text: no span to point at
                word_offsets = [(pos, pos)] * len(word_tokens)
            tokens.extend(word_tokens)
            offsets.extend(word_offsets)
        if index is not None:
            index = index + [len(text)]
            offsets = [
                (index[s], index[e - 1] + 1) if e > s else (index[s], index[s]) for s, e in offsets
            ]
        return tokens, offsets

    # -- decoding and offsets -------------------------------------------------------------
    def decode(self, ids, tokens=None):
        """Readable text: special ``[xxx]`` tokens dropped, ``##`` pieces joined, no spaces
        between CJK characters (bert4keras's rules, including its punctuation clean-ups)."""
        tokens = tokens or self.ids_to_tokens(ids)
        inv = self._token_translate_inv
        if inv:
            tokens = [inv.get(t) or t for t in tokens]
        tokens = [token for token in tokens if not self._is_special(token)]

        text = ""
        for i, token in enumerate(tokens):
            if token[:2] == "##":
                text += token[2:]
            elif len(token) == 1 and self._is_cjk_character(token):
                text += token
            elif len(token) == 1 and self._is_punctuation(token):
                text += token
                text += " "
            elif i > 0 and self._is_cjk_character(text[-1]):
                text += token
            else:
                text += " "
                text += token

        text = re.sub(" +", " ", text)
        text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
        text = _DECODE_PUNCT_RE.sub("\\1", text)
        text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
        return text.strip()

    def rematch(self, text, tokens):
        """Character indices of `text` covered by each of `tokens` (bert4keras's mapping).

        `tokens` are usually ``tokenize(text)`` (possibly truncated) or ``ids_to_tokens``.
        A token maps to the positions of the characters it is made of (dropped control
        characters are not listed).  Start/end and other ``[xxx]`` tokens get ``[]``;
        unlike the original, ``[UNK]`` (and an unknown word) gets the characters it replaced.

        Example:
            >>> tokenizer = Tokenizer({'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, 'hi': 3})
            >>> text = 'hi ☃ hi'
            >>> tokenizer.rematch(text, tokenizer.tokenize(text))
            [[], [0, 1], [3], [5, 6], []]
        """
        unk = self._token_unk
        # kept: not a "[xxx]" token, or [UNK] (written inline: this runs per token)
        keep = [k for k, t in enumerate(tokens) if not (t[:1] == "[" and t[-1:] == "]") or t == unk]
        mapping = [[] for _ in tokens]
        own_tokens, own_maps = self._own_mapping(text)
        own = [
            (t, m)
            for t, m in zip(self._translate(own_tokens), own_maps)
            if not (t[:1] == "[" and t[-1:] == "]") or t == unk
        ]
        given = [tokens[k] for k in keep]
        own_tokens = [t for t, _ in own]
        n = len(given)

        def same(part):  # equal strings, or failing that equal ids
            return part == given or self.tokens_to_ids(part) == self.tokens_to_ids(given)

        if same(own_tokens[:n]):
            maps = [m for _, m in own[:n]]
        elif n and same(own_tokens[-n:]):
            maps = [m for _, m in own[-n:]]
        else:
            maps = self._search_mapping(text, given)
        for k, m in zip(keep, maps):
            mapping[k] = m
        return mapping

    def _own_mapping(self, text):
        """(tokens, per-token lists of original character indices) of our own tokenization."""
        if self._pre_tokenize is not None:
            tokens, offsets = self._pre_tokenized_with_offsets(text)
            flags = self._tables.flags
            return tokens, [
                [i for i in range(s, e) if flags[ord(text[i])] != DROP] for s, e in offsets
            ]
        normalized, index, token_re = self._normalize(text)
        tokens, offsets = self._tokens_normalized(normalized, token_re)
        if index is None:
            index = list(range(len(normalized)))  # slices of one list: faster than range()s
        return tokens, [index[s:e] for s, e in offsets]

    def _search_mapping(self, text, tokens):
        """The original's method for tokens that are not our own output: search each token's
        stem from a running position.  ``[UNK]`` tokens share out the text between their
        neighbours (one word or single-character token each when the counts agree)."""
        normalized, index = self._normalize_exact(text)
        spans, pending, offset = [], [], 0

        def settle(stop):
            if not pending:
                return
            units = [m.span() for m in self._tables.unit_re.finditer(normalized, offset, stop)]
            if len(units) == len(pending):
                for k, span in zip(pending, units):
                    spans[k] = span
            elif units:
                for k in pending:
                    spans[k] = (units[0][0], units[-1][1])
            else:
                for k in pending:
                    spans[k] = (offset, offset)
            pending.clear()

        inv = self._token_translate_inv
        for token in tokens:
            spans.append(None)
            if token == self._token_unk:
                pending.append(len(spans) - 1)
                continue
            piece = stem(inv.get(token) or token)
            start = normalized.find(piece, offset) if piece else -1
            if start < 0:  # not in the text (the original raises here)
                settle(offset)
                spans[-1] = (offset, offset)
                continue
            settle(start)
            spans[-1] = (start, start + len(piece))
            offset = start + len(piece)
        settle(len(normalized))
        return [index[s:e] for s, e in spans]

    # -- bert4keras static helpers --------------------------------------------------------
    stem = staticmethod(stem)
    _is_redundant = staticmethod(is_redundant)
    _is_space = staticmethod(_unicode.is_space)
    _is_punctuation = staticmethod(_unicode.is_punctuation)
    _is_cjk_character = staticmethod(_unicode.is_cjk_character)
    _is_control = staticmethod(_unicode.is_control)

    @staticmethod
    def _is_special(ch):
        """Whether a token looks like ``[xxx]``."""
        return bool(ch) and (ch[0] == "[") and (ch[-1] == "]")

    @staticmethod
    def _cjk_punctuation():
        return _CJK_PUNCTUATION


_CJK_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f\uff1a"
    "\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d"
    "\uff5e\uff5f\uff60\uff62\uff63\uff64\u3000\u3001\u3003\u3008\u3009\u300a\u300b\u300c"
    "\u300d\u300e\u300f\u3010\u3011\u3014\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c"
    "\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014\u2018\u2019\u201b\u201c\u201d\u201e"
    "\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7\uff01\uff1f\uff61\u3002"
)
_DECODE_PUNCT_RE = re.compile(
    "(%s) " % "|".join(re.escape(p) for p in _CJK_PUNCTUATION + "+-/={(<[")
)
