"""`TokenizerBase`: the encode / truncate / batch logic shared by every tokenizer.

Subclasses provide the vocabulary (`token_to_id`, `id_to_token`, `vocab_size`) and one of:

* `_tokenize(text)` -> tokens (the bert4keras hook), and
* `_tokenize_with_offsets(text)` -> (tokens, [(start, end)]) for character offsets, and
  optionally `_encode_text(text)` -> (ids, offsets), a faster path straight to ids.

Offsets are character offsets into the text as given (before any normalisation), `end`
exclusive; start/end special tokens get ``(0, 0)``, the convention of HF ``offset_mapping``.
"""

import gc
import operator
import warnings


def _is_string(s):
    return isinstance(s, str)


def truncation_plan(lengths, maxlen):
    """How many elements `truncate_sequences` pops from each sequence.

    `truncate_sequences` repeatedly pops from the longest sequence (the first one on ties)
    until the total length is at most `maxlen`.  This returns the pop counts without popping.
    """
    lengths = list(lengths)
    excess = sum(lengths) - maxlen
    counts = [0] * len(lengths)
    if excess <= 0:
        return counts
    if len(lengths) == 1:
        counts[0] = excess
        return counts
    if len(lengths) == 2:
        a, b = lengths
        if a >= b:
            t = min(excess, a - b)
            counts[0] += t
        else:
            t = min(excess, b - a)
            counts[1] += t
        excess -= t
        counts[0] += (excess + 1) // 2
        counts[1] += excess // 2
        return counts
    while excess > 0:  # three or more sequences: rare, simulate
        i = max(range(len(lengths)), key=lambda j: (lengths[j], -j))
        lengths[i] -= 1
        counts[i] += 1
        excess -= 1
    return counts


def pop_slice(length, index, count):
    """The slice that `count` successive ``list.pop(index)`` remove, or None if they fail."""
    if count == 0:
        return slice(0, 0)
    if index >= 0:
        if index + count > length:
            return None
        return slice(index, index + count)
    stop = length + index + 1
    start = stop - count
    if start < 0 or stop > length:
        return None
    return slice(start, stop)


def apply_pops(parallel, index, count):
    """Pop `count` times at `index` from each list in `parallel` (lists of equal length)."""
    if count <= 0:
        return
    s = pop_slice(len(parallel[0]), index, count)
    if s is None:
        try:
            for _ in range(count):
                for seq in parallel:
                    seq.pop(index)
        except IndexError:
            raise ValueError(
                "cannot truncate: maxlen is smaller than the tokens that "
                "truncation keeps (pop index %r)" % (index,)
            ) from None
    else:
        for seq in parallel:
            del seq[s]


def join_words(text, words):
    """Join pre-tokenized `words` with spaces (as bert4keras does before SentencePiece/BPE).

    Returns ``(joined, index)`` where ``index[j]`` is the position in `text` that character
    `j` of `joined` comes from (words are looked up in order; a joining space points at the
    position where the next word is searched from).
    """
    joined, index, cursor = [], [], 0
    for k, word in enumerate(words):
        if k:
            joined.append(" ")
            index.append(min(cursor, max(len(text) - 1, 0)))
        pos = text.find(word, cursor)
        if pos < 0:  # the pre-tokenizer changed the text: no span to point at
            index.extend([min(cursor, max(len(text) - 1, 0))] * len(word))
        else:
            index.extend(range(pos, pos + len(word)))
            cursor = pos + len(word)
        joined.append(word)
    return "".join(joined), index


def map_offsets(offsets, index, length):
    """Map ``(start, end)`` offsets in a derived text back through ``index`` (see
    `join_words`) into a text of `length` characters; empty spans stay empty."""
    out = []
    for s, e in offsets:
        if e > s:
            out.append((min(index[s], length), min(index[e - 1] + 1, length)))
        else:
            p = index[s] if s < len(index) else (index[-1] + 1 if index else 0)
            p = min(p, length)
            out.append((p, p))
    return out


class TokenizerBase:
    """Shared encode logic: special tokens, truncation, pairs, offsets, batches.

    Args:
        token_start: the token put first (``'[CLS]'``), or None for none.
        token_end: the token put last (``'[SEP]'``), or None for none.
        pre_tokenize: optional ``text -> list of words`` (e.g. `jieba.lcut`) applied first.
        token_translate: optional dict mapping tokens to other tokens after tokenization.
        token_pad, token_unk, token_mask: names of the pad / unknown / mask tokens.
        bert4keras_maxlen: reproduce bert4keras's pair truncation, which with
            ``token_start=None`` and ``pattern='S*E*E'`` returns up to ``maxlen + 1`` tokens
            (it always allowed one for the start token that the second text drops).  By
            default every encoding has at most `maxlen` tokens.

    Special ids are public attributes: `start_id`, `end_id`, `pad_id`, `unk_id`,
    `mask_id`, also under the bert4keras names `_token_start_id`, `_token_end_id`,
    `_token_pad_id`, `_token_unk_id`, `_token_mask_id`.  The tokens a tokenizer puts into
    encodings (`token_start`, `token_end`; WordPiece also needs `token_unk`) must be in the
    vocabulary, or construction raises a `ValueError` naming them (pass None for none);
    the pad and mask ids are None where the vocabulary lacks the token.

    Ids passed to `id_to_token`, `ids_to_tokens` and `decode` must be integers in
    ``0 <= id < vocab_size`` that have a token, or they raise a `ValueError` naming the id
    (a `TypeError` for a non-integer).
    """

    def __init__(
        self,
        token_start="[CLS]",
        token_end="[SEP]",
        pre_tokenize=None,
        token_translate=None,
        token_pad="[PAD]",
        token_unk="[UNK]",
        token_mask="[MASK]",
        bert4keras_maxlen=False,
    ):
        self._bert4keras_maxlen = bool(bert4keras_maxlen)
        self._token_pad = token_pad
        self._token_unk = token_unk
        self._token_mask = token_mask
        self._token_start = token_start
        self._token_end = token_end
        self._pre_tokenize = pre_tokenize
        self._token_translate = dict(token_translate or {})
        self._token_translate_inv = {v: k for k, v in self._token_translate.items()}

    # -- special tokens -------------------------------------------------------------------
    def _resolve_special_ids(self, required=("start", "end")):
        """Look the special tokens up; call at the end of a subclass's ``__init__``.

        The `required` ones (named, not None) must be in the vocabulary: a `ValueError`
        names every missing one at once."""
        missing = []
        for name in ("pad", "unk", "mask", "start", "end"):
            token = getattr(self, "_token_%s" % name)
            token_id = self._special_id(token) if token is not None else None
            if token is not None and token_id is None and name in required:
                missing.append("token_%s=%r" % (name, token))
            setattr(self, "_token_%s_id" % name, token_id)
        if missing:
            raise ValueError(
                "%s: the vocabulary has no %s; add the token%s to the vocabulary "
                "or pass None for none"
                % (type(self).__name__, ", ".join(missing), "s" if len(missing) > 1 else "")
            )
        self._vocab_size = self.vocab_size

    def _special_id(self, token):
        """Id of a special token, or None if the vocabulary does not have it."""
        raise NotImplementedError

    start_id = property(lambda self: self._token_start_id, doc="Id of `token_start` or None.")
    end_id = property(lambda self: self._token_end_id, doc="Id of `token_end` or None.")
    pad_id = property(lambda self: self._token_pad_id, doc="Id of the pad token or None.")
    unk_id = property(lambda self: self._token_unk_id, doc="Id of the unknown token or None.")
    mask_id = property(lambda self: self._token_mask_id, doc="Id of the mask token or None.")
    cls_id = start_id
    sep_id = end_id
    token_start = property(lambda self: self._token_start)
    token_end = property(lambda self: self._token_end)

    @property
    def vocab_size(self):
        raise NotImplementedError

    def __len__(self):
        return self.vocab_size

    # -- vocabulary -----------------------------------------------------------------------
    def token_to_id(self, token):
        raise NotImplementedError

    def id_to_token(self, i):
        raise NotImplementedError

    def tokens_to_ids(self, tokens):
        """``[token_to_id(t) for t in tokens]``."""
        return [self.token_to_id(token) for token in tokens]

    def ids_to_tokens(self, ids):
        """``[id_to_token(i) for i in ids]``."""
        return [self.id_to_token(i) for i in ids]

    def _bad_id(self, i):
        """The error for an id `i` that has no token: `TypeError` for a non-integer,
        `ValueError` naming the id otherwise."""
        try:
            i = operator.index(i)
        except TypeError:
            return TypeError("token ids must be integers, got %r (%s)" % (i, type(i).__name__))
        size = self.vocab_size
        if not 0 <= i < size:
            return ValueError(
                "token id %d is out of range: %s has ids 0..%d (vocab_size %d)"
                % (i, type(self).__name__, size - 1, size)
            )
        return ValueError(
            "token id %d has no token in this vocabulary (a token listed twice "
            "leaves its earlier id unused)" % i
        )

    # -- hooks ----------------------------------------------------------------------------
    def _tokenize(self, text):
        """Tokens of `text`, without start/end tokens and before `token_translate`."""
        return self._tokenize_with_offsets(text)[0]

    def _tokenize_with_offsets(self, text):
        """(tokens, offsets) of `text`; subclasses that know offsets override this."""
        raise NotImplementedError

    def _translate(self, tokens):
        if not self._token_translate:
            return tokens
        get = self._token_translate.get
        return [get(t) or t for t in tokens]

    def _encode_text(self, text):
        """(ids, offsets) of `text` without start/end tokens; `token_translate` applied."""
        tokens, offsets = self._tokenize_with_offsets(text)
        return self.tokens_to_ids(self._translate(tokens)), offsets

    # -- public API -----------------------------------------------------------------------
    def tokenize(self, text, maxlen=None):
        """Tokens of `text` with the start and end tokens; truncated (keeping the end token)
        to at most `maxlen` tokens.
        """
        tokens = self._translate(self._tokenize(text))
        if self._token_start is not None:
            tokens.insert(0, self._token_start)
        if self._token_end is not None:
            tokens.append(self._token_end)
        if maxlen is not None:
            index = -int(self._token_end is not None) - 1
            apply_pops([tokens], index, truncation_plan([len(tokens)], maxlen)[0])
        return tokens

    def tokenize_with_offsets(self, text, maxlen=None):
        """Like `tokenize`, also returning the ``(start, end)`` character span of each token."""
        tokens, offsets = self._tokenize_with_offsets(text)
        tokens = self._translate(tokens)
        offsets = list(offsets)
        if self._token_start is not None:
            tokens.insert(0, self._token_start)
            offsets.insert(0, (0, 0))
        if self._token_end is not None:
            tokens.append(self._token_end)
            offsets.append((0, 0))
        if maxlen is not None:
            index = -int(self._token_end is not None) - 1
            apply_pops([tokens, offsets], index, truncation_plan([len(tokens)], maxlen)[0])
        return tokens, offsets

    def _truncate_index(self, truncate_from):
        if truncate_from == "right":
            return -int(self._token_end is not None) - 1
        if truncate_from == "left":
            return int(self._token_start is not None)
        if isinstance(truncate_from, int):
            return truncate_from
        raise ValueError(
            "truncate_from must be 'right', 'left' or an int, got %r" % (truncate_from,)
        )

    def _encode_into(self, text, ids, offsets):
        """Append the ids (and offsets, unless `offsets` is None) of `text` to the lists."""
        text_ids, text_offsets = self._encode_text(text)
        ids.extend(text_ids)
        if offsets is not None:
            offsets.extend(text_offsets)

    def _with_specials(self, text, need_offsets):
        """(ids, offsets or None) of one text or pre-tokenized token list, with specials."""
        if not _is_string(text):
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            else:
                if need_offsets:
                    raise ValueError("return_offsets=True needs text, not pre-tokenized tokens")
                return self.tokens_to_ids(list(text)), None
        if self._token_start is not None:
            ids = [self._token_start_id]
            offsets = [(0, 0)] if need_offsets else None
        else:
            ids = []
            offsets = [] if need_offsets else None
        self._encode_into(text, ids, offsets)
        if self._token_end is not None:
            ids.append(self._token_end_id)
            if need_offsets:
                offsets.append((0, 0))
        return ids, offsets

    def encode(
        self,
        first_text,
        second_text=None,
        maxlen=None,
        pattern="S*E*E",
        truncate_from="right",
        return_offsets=False,
    ):
        """Token ids and segment ids of a text or a text pair.

        Args:
            first_text, second_text: strings, or lists of tokens (as from `tokenize`).
            maxlen: maximum total length; the longer sequence is truncated first.
            pattern: ``'S*E*E'`` gives ``[CLS] A [SEP] B [SEP]``; any other value keeps the
                second start token: ``[CLS] A [SEP] [CLS] B [SEP]``.
            truncate_from: ``'right'`` (drop before the end token), ``'left'`` (drop after
                the start token) or an int index to pop at.
            return_offsets: also return the ``(start, end)`` character span of every token
                in its own text (``(0, 0)`` for start/end tokens).

        Returns:
            ``(token_ids, segment_ids)``, or ``(token_ids, segment_ids, offsets)``.
        """
        index = self._truncate_index(truncate_from) if maxlen is not None else None
        first_ids, first_offsets = self._with_specials(first_text, return_offsets)
        if second_text is None:
            if maxlen is not None:
                count = truncation_plan([len(first_ids)], maxlen)[0]
                apply_pops(
                    [first_ids, first_offsets] if return_offsets else [first_ids], index, count
                )
            if return_offsets:
                return first_ids, [0] * len(first_ids), first_offsets
            return first_ids, [0] * len(first_ids)

        second_ids, second_offsets = self._with_specials(second_text, return_offsets)
        if maxlen is not None:
            # 'S*E*E' drops the second text's start token after truncation: allow for it
            # (bert4keras did so even without a start token, giving maxlen + 1 tokens)
            if pattern == "S*E*E" and (self._token_start is not None or self._bert4keras_maxlen):
                maxlen += 1
            sequences = [(first_ids, first_offsets), (second_ids, second_offsets)]
            # bert4keras ignores empty sequences when truncating
            sequences = [s for s in sequences if s[0]]
            counts = truncation_plan([len(s[0]) for s in sequences], maxlen)
            for (ids, offsets), count in zip(sequences, counts):
                apply_pops([ids, offsets] if return_offsets else [ids], index, count)
        if pattern == "S*E*E":
            skip = int(bool(self._token_start))
            second_ids = second_ids[skip:]
            if return_offsets:
                second_offsets = second_offsets[skip:]
        token_ids = first_ids + second_ids
        segment_ids = [0] * len(first_ids) + [1] * len(second_ids)
        if return_offsets:
            return token_ids, segment_ids, first_offsets + second_offsets
        return token_ids, segment_ids

    def encode_batch(
        self,
        first_texts,
        second_texts=None,
        maxlen=None,
        pattern="S*E*E",
        truncate_from="right",
        return_offsets=False,
    ):
        """`encode` over many texts (or pairs): returns lists ``(batch_token_ids,
        batch_segment_ids[, batch_offsets])``, ready for `sequence_padding`.

        Example:
            >>> from kerasformers.tokenizers import Tokenizer
            >>> tokenizer = Tokenizer({'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, '好': 3})
            >>> tokenizer.encode_batch(['好', '好好'])
            ([[1, 3, 2], [1, 3, 3, 2]], [[0, 0, 0], [0, 0, 0, 0]])
        """
        first_texts = list(first_texts)
        if second_texts is not None:
            second_texts = list(second_texts)
            if len(first_texts) != len(second_texts):
                raise ValueError(
                    "first_texts and second_texts differ in length: %d != %d"
                    % (len(first_texts), len(second_texts))
                )
        # Encoding allocates millions of small acyclic objects; the cyclic garbage collector
        # would traverse them again and again (a third of the time on big batches).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if second_texts is None:
                return self._encode_batch_single(first_texts, maxlen, truncate_from, return_offsets)
            encode = self.encode
            results = [
                encode(a, b, maxlen, pattern, truncate_from, return_offsets)
                for a, b in zip(first_texts, second_texts)
            ]
        finally:
            if gc_was_enabled:
                gc.enable()
        n = 3 if return_offsets else 2
        if not results:
            return tuple([] for _ in range(n))
        return tuple(list(col) for col in zip(*results))

    def _encode_batch_single(self, texts, maxlen, truncate_from, return_offsets):
        """`encode_batch` without second texts: `encode` inlined (the hot path)."""
        index = self._truncate_index(truncate_from) if maxlen is not None else None
        with_specials = self._with_specials
        batch_ids, batch_segments = [], []
        batch_offsets = [] if return_offsets else None
        for text in texts:
            ids, offsets = with_specials(text, return_offsets)
            if maxlen is not None and len(ids) > maxlen:
                count = truncation_plan([len(ids)], maxlen)[0]
                apply_pops([ids, offsets] if return_offsets else [ids], index, count)
            batch_ids.append(ids)
            batch_segments.append([0] * len(ids))
            if return_offsets:
                batch_offsets.append(offsets)
        if return_offsets:
            return batch_ids, batch_segments, batch_offsets
        return batch_ids, batch_segments

    def decode(self, ids):
        raise NotImplementedError

    def rematch(self, text, tokens):
        """Character indices of `text` covered by each token (``[]`` for start/end tokens).

        The bert4keras offset mapping: ``mapping[i]`` lists the positions in `text` that token
        `i` came from, e.g. ``start = mapping[i][0]``, ``end = mapping[i][-1] + 1``.  `tokens`
        must be this tokenizer's tokens of `text` (as from `tokenize`, possibly truncated).
        """
        own_tokens, own_offsets = self._tokenize_with_offsets(text)
        own_tokens = self._translate(own_tokens)
        first, last = 0, len(tokens)
        if tokens and self._token_start is not None and tokens[0] == self._token_start:
            first = 1
        if last > first and self._token_end is not None and tokens[-1] == self._token_end:
            last -= 1
        mapping = [[] for _ in tokens]
        n = last - first
        given = list(tokens[first:last])
        if own_tokens[:n] == given:
            offsets = own_offsets[:n]
        elif n and own_tokens[-n:] == given:
            offsets = own_offsets[-n:]
        else:
            raise ValueError("tokens are not a tokenization of text by this tokenizer")
        for i, (s, e) in zip(range(first, last), offsets):
            mapping[i] = list(range(s, e))
        return mapping

    @staticmethod
    def offsets_to_mapping(offsets):
        """Turn ``(start, end)`` offsets into rematch-style index lists (``[]`` when empty)."""
        return [list(range(s, e)) for s, e in offsets]


class DictVocabTokenizer(TokenizerBase):
    """A tokenizer whose vocabulary is a ``{token: id}`` dict (``self._token_dict``, with
    its inverse ``self._token_dict_inv``): WordPiece and byte-level BPE.

    Ids need not be contiguous: `vocab_size` is the largest id + 1 (the embedding rows the
    vocabulary needs), and an id no token has raises in `id_to_token`."""

    def _set_vocab(self, token_dict):
        """Take ``{token: id}``: ids must be integers >= 0; two tokens sharing an id are
        warned about (the last one is what `id_to_token` returns, as in bert4keras)."""
        token_dict = dict(token_dict)
        if not all(v.__class__ is int for v in token_dict.values()):
            for token, v in token_dict.items():
                try:
                    token_dict[token] = operator.index(v)
                except TypeError:
                    raise TypeError(
                        "the id of token %r is %r, not an integer" % (token, v)
                    ) from None
        inv = {v: k for k, v in token_dict.items()}
        if token_dict and min(inv) < 0:
            raise ValueError("token %r has a negative id %d" % (inv[min(inv)], min(inv)))
        if len(inv) != len(token_dict):
            shared = {}
            for token, v in token_dict.items():
                shared.setdefault(v, []).append(token)
            shared = [(v, ts) for v, ts in shared.items() if len(ts) > 1]
            warnings.warn(
                "%d id(s) are shared by several tokens (%s); each decodes to the "
                "last token listed"
                % (
                    len(shared),
                    "; ".join("%d: %s" % (v, ", ".join(map(repr, ts))) for v, ts in shared[:5]),
                ),
                UserWarning,
                stacklevel=3,
            )
        self._token_dict = token_dict
        self._token_dict_inv = inv
        self._dict_vocab_size = max(inv) + 1 if inv else 0

    @property
    def vocab_size(self):
        return self._dict_vocab_size

    @property
    def token_dict(self):
        """The ``{token: id}`` vocabulary (a copy)."""
        return dict(self._token_dict)

    def _special_id(self, token):
        return self._token_dict.get(token)

    def token_to_id(self, token):
        """Id of `token`; unknown tokens map to the unknown token's id."""
        token_id = self._token_dict.get(token)
        if token_id is None:
            token_id = self._token_unk_id
            if token_id is None:
                raise KeyError(
                    "%r is not in the vocabulary, which has no %r token" % (token, self._token_unk)
                )
        return token_id

    def id_to_token(self, i):
        """The token of id `i` (a `ValueError` naming `i` if no token has it)."""
        if i.__class__ is not int:  # numpy / tensor integers; floats are refused
            try:
                i = operator.index(i)
            except TypeError:
                raise self._bad_id(i) from None
        token = self._token_dict_inv.get(i)
        if token is None:
            raise self._bad_id(i)
        return token
