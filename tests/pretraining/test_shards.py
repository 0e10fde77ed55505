"""Writing shards: contents read back through grain, parallel = serial, resuming after a kill,
and the errors (empty corpus, other tokenizer or sequence length, bad arguments)."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from kerasformers.pretraining.corpus import document_instances, split_sentences
from kerasformers.pretraining.records import decode_record
from kerasformers.pretraining.shards import (
    MANIFEST,
    read_manifest,
    tokenizer_info,
    vocab_hash,
    write_shards,
)
from kerasformers.tokenizers import Tokenizer
from tests.pretraining.test_corpus import VOCAB, peoples_daily, reviews, tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def counting_segment(text):
    """jieba, and a SIGKILL of this process on call number $KF_KILL_AFTER (if set)."""
    import jieba

    counting_segment.calls = getattr(counting_segment, "calls", 0) + 1
    if counting_segment.calls == int(os.environ.get("KF_KILL_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return jieba.lcut(text)


def documents():
    return peoples_daily(150) + reviews(150)


def files(directory):
    """{name: bytes} of every file in `directory` (hidden sidecars included)."""
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def inodes(directory):
    """{name: (inode, mtime)}: changes when a file is rewritten (an inode alone can be reused)."""
    stats = {n: os.stat(os.path.join(directory, n)) for n in os.listdir(directory)}
    return {n: (s.st_ino, s.st_mtime_ns) for n, s in stats.items()}


def write(corpus, out, **kwargs):
    options = dict(sequence_length=128, documents_per_shard=100, progress=False)
    options.update(kwargs)
    return write_shards(corpus, str(out), tokenizer(), **options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run over 300 documents (3 shards), with `counting_segment`."""
    out = tmp_path_factory.mktemp("reference")
    manifest = write(iter(documents()), out, word_segment=counting_segment)
    return out, manifest, files(out)


def test_records_are_the_packed_documents_read_back_with_grain(reference):
    import grain

    out, manifest, _ = reference
    tok = tokenizer()
    expected = [i for d in documents() for i in document_instances(tok, d, 128, "jieba")]
    assert manifest["instances"] == len(expected)
    assert manifest["tokens"] == sum(len(ids) for ids, _ in expected)
    assert manifest["documents"] == 300
    source = grain.sources.ArrayRecordDataSource(
        [os.path.join(out, shard["file"]) for shard in manifest["shards"]]
    )
    assert len(source) == len(expected)
    order = list(range(len(source)))
    random.Random(0).shuffle(order)
    for i in order:  # random access
        ids, starts = decode_record(source[i])
        assert (ids.tolist(), starts.astype(int).tolist()) == expected[i]
        assert len(ids) <= 128 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id


def test_manifest(reference):
    out, manifest, _ = reference
    assert read_manifest(out) == manifest
    tok = tokenizer()
    assert manifest["format_version"] == 1 and manifest["sequence_length"] == 128
    assert manifest["word_segment"] == "tests.pretraining.test_shards.counting_segment"
    assert manifest["tokenizer"] == tokenizer_info(tok)
    assert manifest["tokenizer"]["class"] == "kerasformers.tokenizers.wordpiece.Tokenizer"
    assert manifest["tokenizer"]["do_lower_case"] is True
    assert manifest["tokenizer"]["vocab_size"] == 21128
    assert manifest["tokenizer"]["special_ids"] == {
        "cls": 101,
        "sep": 102,
        "pad": 0,
        "unk": 100,
        "mask": 103,
    }
    assert [s["file"] for s in manifest["shards"]] == [
        "shard-00000.array_record",
        "shard-00001.array_record",
        "shard-00002.array_record",
    ]
    assert [s["documents"] for s in manifest["shards"]] == [100, 100, 100]
    for key in ("instances", "tokens"):
        assert sum(s[key] for s in manifest["shards"]) == manifest[key]
    assert sorted(os.listdir(out)) == [
        ".shard-00000.json",
        ".shard-00001.json",
        ".shard-00002.json",
        MANIFEST,
    ] + [s["file"] for s in manifest["shards"]]
    sidecar = json.load(open(os.path.join(out, ".shard-00001.json")))
    assert sidecar["instances"] == manifest["shards"][1]["instances"]
    assert sidecar["file_bytes"] == os.path.getsize(os.path.join(out, "shard-00001.array_record"))


def test_vocab_hash():
    tok = tokenizer()
    tokens = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert vocab_hash(tok) == hashlib.sha256("".join(t + "\n" for t in tokens).encode()).hexdigest()
    assert vocab_hash(tok) == vocab_hash(tok.token_dict)
    small = {"[PAD]": 0, "[UNK]": 1, "a": 2}
    assert vocab_hash(small) == hashlib.sha256(b"[PAD]\n[UNK]\na\n").hexdigest()
    assert vocab_hash(Tokenizer(VOCAB)) == vocab_hash(tok)  # lower-casing is not the vocab


def test_two_workers_write_the_same_bytes(reference, tmp_path):
    manifest = write(iter(documents()), tmp_path, word_segment=counting_segment, workers=2)
    assert manifest == reference[1]
    assert files(tmp_path) == reference[2]


def test_rerun_skips_complete_shards_and_rewrites_damaged_ones(reference, tmp_path):
    write(iter(documents()), tmp_path, word_segment=counting_segment)
    before = inodes(tmp_path)
    write(iter(documents()), tmp_path, word_segment=counting_segment)
    after = inodes(tmp_path)
    for name in before:
        if name.startswith("shard-"):
            assert after[name] == before[name], name  # skipped: not rewritten
    assert files(tmp_path) == reference[2]

    os.remove(tmp_path / ".shard-00000.json")  # as if killed between shard and sidecar
    with open(tmp_path / "shard-00001.array_record", "r+b") as f:
        f.truncate(100)  # damaged after the fact
    (tmp_path / ".shard-00002.array_record.tmp").write_bytes(b"partial")
    write(iter(documents()), tmp_path, word_segment=counting_segment)
    again = inodes(tmp_path)
    assert again["shard-00000.array_record"] != before["shard-00000.array_record"]
    assert again["shard-00001.array_record"] != before["shard-00001.array_record"]
    assert again["shard-00002.array_record"] == before["shard-00002.array_record"]
    assert files(tmp_path) == reference[2]  # the temporary file is gone too


def test_resume_after_a_kill_gives_the_uninterrupted_result(reference, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(documents()) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    # the segmenter runs once per sentence: kill the writer inside the third shard
    sentences_before_shard_2 = sum(len(split_sentences(d)) for d in documents()[:200])
    script = (
        "import sys; from kerasformers.pretraining.shards import write_shards; "
        "from tests.pretraining.test_shards import counting_segment, tokenizer; "
        "write_shards(sys.argv[1], sys.argv[2], tokenizer(), sequence_length=128, "
        "documents_per_shard=100, progress=False, word_segment=counting_segment)"
    )
    env = dict(os.environ, KF_KILL_AFTER=str(sentences_before_shard_2 + 20))
    done = subprocess.run(
        [sys.executable, "-c", script, str(corpus), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = sorted(os.listdir(out))
    assert left == [
        ".shard-00000.json",
        ".shard-00001.json",
        ".shard-00002.array_record.tmp",
        "shard-00000.array_record",
        "shard-00001.array_record",
    ]
    before = inodes(out)

    manifest = write(str(corpus), out, word_segment=counting_segment)
    assert manifest == reference[1]
    assert files(out) == reference[2]
    assert inodes(out)["shard-00000.array_record"] == before["shard-00000.array_record"]


def test_stale_shards_are_removed_and_resume_false_starts_over(tmp_path):
    texts = reviews(60)
    write(iter(texts), tmp_path, word_segment=None, documents_per_shard=20)
    assert len(read_manifest(tmp_path)["shards"]) == 3
    manifest = write(iter(texts[:30]), tmp_path, word_segment=None, documents_per_shard=20)
    assert len(manifest["shards"]) == 2
    assert sorted(n for n in os.listdir(tmp_path) if "shard" in n) == [
        ".shard-00000.json",
        ".shard-00001.json",
        "shard-00000.array_record",
        "shard-00001.array_record",
    ]
    before = inodes(tmp_path)
    write(iter(texts[:30]), tmp_path, word_segment=None, documents_per_shard=20, resume=False)
    assert inodes(tmp_path)["shard-00000.array_record"] != before["shard-00000.array_record"]


def test_resume_refuses_other_settings(tmp_path):
    texts = reviews(30)
    write(iter(texts), tmp_path, word_segment=None)
    other = Tokenizer(VOCAB, do_lower_case=False)
    with pytest.raises(
        ValueError,
        match=r"other settings .*do_lower_case=True.*this run has .*"
        r"do_lower_case=False",
    ):
        write_shards(
            iter(texts),
            str(tmp_path),
            other,
            sequence_length=128,
            word_segment=None,
            progress=False,
        )
    smaller = Tokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])})
    with pytest.raises(
        ValueError,
        match=r"21128 tokens, vocab sha256 .*this run has .*"
        r"4 tokens, vocab sha256",
    ):
        write_shards(
            iter(texts),
            str(tmp_path),
            smaller,
            sequence_length=128,
            word_segment=None,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"sequence_length=128.*this run has sequence_length=64"):
        write(iter(texts), tmp_path, word_segment=None, sequence_length=64)
    with pytest.raises(ValueError, match=r"word_segment='none'.*this run has .*'jieba'"):
        write(iter(texts), tmp_path, word_segment="jieba")
    # the sidecars alone are enough to refuse (a run killed before its manifest)
    os.remove(tmp_path / MANIFEST)
    with pytest.raises(
        ValueError,
        match=r"\.shard-00000\.json.*sequence_length=128.*"
        r"this run has sequence_length=64",
    ):
        write(iter(texts), tmp_path, word_segment=None, sequence_length=64)
    manifest = write(iter(texts), tmp_path, word_segment=None, sequence_length=64, resume=False)
    assert manifest["sequence_length"] == 64


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="an iterable of documents .* holds no non-empty"):
        write(iter(["", "  \n"]), tmp_path / "a", word_segment=None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt'.* holds no non-empty document"):
        write(str(empty), tmp_path / "b", word_segment=None)
    with pytest.raises(ValueError, match="gave no token"):
        write(iter(["\u200b"]), tmp_path / "c", word_segment=None)  # zero-width space only
    with pytest.raises(ValueError, match=r"sequence_length must be at least 3 \(\[CLS\]"):
        write(iter(["好"]), tmp_path / "d", sequence_length=2)
    with pytest.raises(TypeError, match="sequence_length must be an int"):
        write(iter(["好"]), tmp_path / "d", sequence_length=128.0)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        write(iter(["好"]), tmp_path / "d", workers=0)
    with pytest.raises(ValueError, match="documents_per_shard must be at least 1"):
        write(iter(["好"]), tmp_path / "d", documents_per_shard=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'seq_len'"):
        write(iter(["好"]), tmp_path / "d", seq_len=128)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        write([str(tmp_path / "missing.txt")], tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="write_shards has not finished"):
        read_manifest(tmp_path)


def test_jsonl_corpus_with_a_progress_bar(tmp_path, capfd):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in reviews(40)),
        encoding="utf-8",
    )
    manifest = write(
        str(corpus),
        tmp_path / "out",
        word_segment=None,
        text_field="content",
        progress=True,
        documents_per_shard=15,
    )
    assert manifest["documents"] == 40 and len(manifest["shards"]) == 3
    assert "write_shards" in capfd.readouterr().err


def test_errors_in_worker_processes_reach_the_caller(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    good = "".join(json.dumps({"text": t}) + "\n" for t in reviews(30))
    corpus.write_text(good + '{"txt": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus.jsonl:31: the object has no 'text' field"):
        write(str(corpus), tmp_path / "a", word_segment=None, workers=2, documents_per_shard=5)

    def failing(text):
        raise RuntimeError("the segmenter failed")

    with pytest.raises(RuntimeError, match="the segmenter failed"):
        write(
            iter(reviews(30)),
            tmp_path / "b",
            word_segment=failing,
            workers=2,
            documents_per_shard=5,
        )

    def dying(text):
        os._exit(3)

    with pytest.raises(RuntimeError, match="a write_shards worker process died"):
        write(
            iter(reviews(30)), tmp_path / "c", word_segment=dying, workers=2, documents_per_shard=5
        )


def test_spawned_workers_write_the_same_bytes(tmp_path):
    texts = reviews(40)
    write(iter(texts), tmp_path / "fork", word_segment="jieba", documents_per_shard=10)
    write(
        iter(texts),
        tmp_path / "spawn",
        word_segment="jieba",
        documents_per_shard=10,
        workers=2,
        start_method="spawn",
    )  # the tokenizer is pickled to each process
    assert files(tmp_path / "spawn") == files(tmp_path / "fork")
