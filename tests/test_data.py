"""Data utilities: padding, truncation, segmentation, parallel map, indexed files, text helpers,
and `DataGenerator` with `model.fit` / `evaluate` / `predict` on every Keras backend."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kerasformers import data
from kerasformers.data import (
    IndexedTextFile,
    longest_common_subsequence,
    longest_common_substring,
    parallel_apply,
    parallel_apply_generator,
    sequence_padding,
    strQ2B,
    text_segmentate,
    to_array,
    truncate_sequences,
)

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the original bert4keras 0.11.5 implementations, as oracles ------------------------------
def original_sequence_padding(inputs, length=None, value=0, seq_dims=1, mode="post"):
    if length is None:
        length = np.max([np.shape(x)[:seq_dims] for x in inputs], axis=0)
    elif not hasattr(length, "__getitem__"):
        length = [length]
    slices = [np.s_[: length[i]] for i in range(seq_dims)]
    slices = tuple(slices) if len(slices) > 1 else slices[0]
    pad_width = [(0, 0) for _ in np.shape(inputs[0])]
    outputs = []
    for x in inputs:
        x = x[slices]
        for i in range(seq_dims):
            if mode == "post":
                pad_width[i] = (0, length[i] - np.shape(x)[i])
            else:
                pad_width[i] = (length[i] - np.shape(x)[i], 0)
        x = np.pad(x, pad_width, "constant", constant_values=value)
        outputs.append(x)
    return np.array(outputs)


def original_truncate_sequences(maxlen, indices, *sequences):
    sequences = [s for s in sequences if s]
    if not isinstance(indices, (list, tuple)):
        indices = [indices] * len(sequences)
    while True:
        lengths = [len(s) for s in sequences]
        if sum(lengths) > maxlen:
            i = np.argmax(lengths)
            sequences[i].pop(indices[i])
        else:
            return sequences


def original_lcs_substring(source, target):
    c, length, span = defaultdict(int), 0, (0, 0, 0, 0)
    for i, si in enumerate(source, 1):
        for j, tj in enumerate(target, 1):
            if si == tj:
                c[i, j] = c[i - 1, j - 1] + 1
                if c[i, j] > length:
                    length = c[i, j]
                    span = (i - length, i, j - length, j)
    return length, span


def original_lcs_subsequence(source, target):
    c = defaultdict(int)
    for i, si in enumerate(source, 1):
        for j, tj in enumerate(target, 1):
            if si == tj:
                c[i, j] = c[i - 1, j - 1] + 1
            elif c[i, j - 1] > c[i - 1, j]:
                c[i, j] = c[i, j - 1]
            else:
                c[i, j] = c[i - 1, j]
    length, mapping = c[len(source), len(target)], []
    i, j = len(source) - 1, len(target) - 1
    while len(mapping) < length:
        if source[i] == target[j]:
            mapping.append((i, j))
            i, j = i - 1, j - 1
        elif c[i + 1, j] > c[i, j + 1]:
            j = j - 1
        else:
            i = i - 1
    return length, mapping[::-1]


# -- padding and truncation ------------------------------------------------------------------
def test_sequence_padding_examples():
    assert sequence_padding([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert sequence_padding([[1, 2, 3], [4]], length=2).tolist() == [[1, 2], [4, 0]]
    assert sequence_padding([[1, 2, 3], [4]], mode="pre", value=-1).tolist() == [
        [1, 2, 3],
        [-1, -1, 4],
    ]
    labels = [np.ones((2, 3, 3)), np.ones((2, 1, 1))]  # GlobalPointer [heads, n, n]
    out = sequence_padding(labels, seq_dims=3)
    assert out.shape == (2, 2, 3, 3) and out[1].sum() == 2
    assert sequence_padding([[1, 2], [3]]).dtype == np.int64
    assert sequence_padding([[1, 2], []]).dtype == np.int64  # empty rows do not make floats
    assert sequence_padding([[0.5], [1]]).dtype == np.float64
    assert sequence_padding([[1]], dtype="int32").dtype == np.int32
    assert sequence_padding([]).shape == (0,)
    with pytest.raises(ValueError):
        sequence_padding([[1]], mode="middle")
    with pytest.raises(ValueError):
        sequence_padding([np.ones((2, 2)), np.ones((2, 3))])  # trailing shapes differ


@SETTINGS
@given(
    rows=st.lists(st.lists(st.integers(-5, 5), max_size=8), min_size=1, max_size=6),
    length=st.one_of(st.none(), st.integers(1, 10)),
    mode=st.sampled_from(["post", "pre"]),
    value=st.integers(-3, 3),
)
def test_sequence_padding_matches_original(rows, length, mode, value):
    rows = [np.array(r, dtype=np.int64) for r in rows]
    if length is None and max(len(r) for r in rows) == 0:
        return  # the original cannot build a zero-width batch from empty rows either
    expected = original_sequence_padding(rows, length, value, 1, mode)
    np.testing.assert_array_equal(sequence_padding(rows, length, value, 1, mode), expected)


@SETTINGS
@given(
    shapes=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=4),
    length=st.one_of(st.none(), st.tuples(st.integers(1, 5), st.integers(1, 5))),
    mode=st.sampled_from(["post", "pre"]),
)
def test_sequence_padding_two_dims_matches_original(shapes, length, mode):
    rng = np.random.RandomState(0)
    rows = [rng.randint(1, 9, size=s + (2,)) for s in shapes]
    if length is None and (max(s[0] for s in shapes) == 0 or max(s[1] for s in shapes) == 0):
        return
    expected = original_sequence_padding(rows, length, 0, 2, mode)
    np.testing.assert_array_equal(sequence_padding(rows, length, 0, 2, mode), expected)


@SETTINGS
@given(
    seqs=st.lists(st.lists(st.integers(), max_size=12), min_size=1, max_size=3),
    maxlen=st.integers(1, 20),
    index=st.sampled_from([-1, -2, 0, 1, 2]),
)
def test_truncate_sequences_matches_original(seqs, maxlen, index):
    ours_in = [list(s) for s in seqs]
    theirs_in = [list(s) for s in seqs]
    try:
        expected = original_truncate_sequences(maxlen, index, *theirs_in)
    except IndexError:
        with pytest.raises(ValueError):
            truncate_sequences(maxlen, index, *ours_in)
        return
    assert truncate_sequences(maxlen, index, *ours_in) == expected
    assert ours_in == theirs_in  # in place, like the original


def test_truncate_sequences_examples():
    a, b = [1, 2, 3, 4, 5], [6, 7]
    assert truncate_sequences(4, -1, a, b, None) == [[1, 2], [6, 7]] and a == [1, 2]
    a, b = ["[CLS]", 1, 2, 3, "[SEP]"], ["[CLS]", 4, "[SEP]"]
    truncate_sequences(6, [-2, 1], a, b)
    assert a == ["[CLS]", 1, "[SEP]"] and b == ["[CLS]", 4, "[SEP]"]


def test_to_array():
    a, b = to_array([1, 2], [[3]])
    assert a.tolist() == [1, 2] and b.shape == (1, 1)
    assert to_array([1]).tolist() == [1]


# -- text ------------------------------------------------------------------------------------
def test_text_segmentate():
    text = "今天天气很好。我们去公园吧！好的"
    assert text_segmentate(text, 8, seps="。！") == ["今天天气很好。", "我们去公园吧！", "好的"]
    assert text_segmentate(text, 100, seps="。！") == [text]
    long = "第一句很长很长很长，第二句。第三句！" * 3
    pieces = text_segmentate(long, 12, seps="。！，", strips="。！，")
    assert all(len(p) <= 12 for p in pieces)
    assert "".join(pieces) == long.replace("。", "").replace("！", "").replace("，", "") or len(
        "".join(pieces)
    ) < len(long)
    assert text_segmentate("  a\nb  ", 1) == ["a", "b"]
    assert text_segmentate("a\n \na", 2, seps="\n") == ["a", "", "a"]  # as the original


@SETTINGS
@given(text=st.text(st.sampled_from("ab。！，\n "), max_size=60), maxlen=st.integers(2, 12))
def test_text_segmentate_keeps_text(text, maxlen):
    pieces = text_segmentate(text, maxlen, seps="\n。！，")
    assert "".join(pieces).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace(
        "\n", ""
    )
    # pieces are stripped; a chunk of only whitespace between separators gives an empty
    # piece, exactly as bert4keras 0.11.5 does (see test_text_segmentate)
    assert all(p == p.strip() for p in pieces)


def test_strq2b():
    assert strQ2B("ＡＢＣ，１２３　！～") == "ABC,123 !~"
    assert strQ2B("中文。") == "中文。"


@SETTINGS
@given(a=st.text("abc", max_size=12), b=st.text("abc", max_size=12))
def test_longest_common_matches_original(a, b):
    assert longest_common_substring(a, b) == original_lcs_substring(a, b)
    assert longest_common_subsequence(a, b) == original_lcs_subsequence(a, b)


# -- parallel map ----------------------------------------------------------------------------
def square(x):
    return x * x


def seeded_draw(_):
    return int(np.random.randint(1 << 30))


def fail_on_three(x):
    if x == 3:
        raise KeyError("three")
    return x


@pytest.mark.parametrize("dummy", [True, False], ids=["threads", "processes"])
def test_parallel_apply(dummy):
    items = list(range(50))
    assert sorted(parallel_apply(square, items, 2, 4, dummy=dummy)) == [x * x for x in items]
    assert parallel_apply(square, items, 3, 2, dummy=dummy, unordered=False) == [
        x * x for x in items
    ]
    got = []
    assert parallel_apply(square, iter(items), 2, 4, callback=got.append, dummy=dummy) is None
    assert sorted(got) == [x * x for x in items]
    pairs = sorted(parallel_apply_generator(square, items, 2, 4, dummy=dummy))
    assert pairs == [(i, i * i) for i in items]
    assert parallel_apply(square, [], 2, 4, dummy=dummy) == []


def test_parallel_apply_closures():
    offset = 7
    assert parallel_apply(lambda x: x + offset, range(10), 2, 4, unordered=False) == list(
        range(7, 17)
    )


def test_parallel_apply_seeds_and_errors():
    # both workers are seeded with 1: the draws are the seeded sequence, split between them
    draws = sorted(parallel_apply(seeded_draw, range(6), 2, 1, random_seeds=[1, 1]))
    stream = np.random.RandomState(1)
    sequence = [int(stream.randint(1 << 30)) for _ in range(6)]
    assert any(draws == sorted(sequence[:k] + sequence[: 6 - k]) for k in range(7))
    with pytest.raises(RuntimeError, match="three"):
        parallel_apply(fail_on_three, range(6), 2, 2)
    with pytest.raises(RuntimeError, match="three"):
        parallel_apply(fail_on_three, range(6), 2, 2, dummy=True)


# -- files -----------------------------------------------------------------------------------
def test_indexed_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = ["第一行\n", "second line\n", "\n", "last without newline"]
    path.write_text("".join(lines), encoding="utf-8")
    index = tmp_path / "index.json"
    with data.open(str(path), encoding="utf-8", indexable=str(index)) as f:
        assert len(f) == 4 and f[1] == lines[1] and f[-1] == lines[-1]
        assert list(f) == lines
    assert json.loads(index.read_text()) == [0, 10, 22, 23]
    with IndexedTextFile(str(path), index_path=str(index)) as f:  # reads the cached index
        assert [f[i] for i in (3, 0)] == [lines[3], lines[0]]
    with data.open(str(path), encoding="utf-8") as f:  # plain open
        assert f.read() == "".join(lines)
    with data.open(str(path), "rb", indexable=True) as f:
        assert f[0] == lines[0].encode("utf-8")


# -- DataGenerator on every backend ----------------------------------------------------------
SCRIPT = r'''
import json, sys, threading
import numpy as np
import keras
from keras import ops
from kerasformers.data import DataGenerator, sequence_padding
from kerasformers.layers import Loss

keras.utils.set_random_seed(0)
lock = threading.Lock()


class Batches(DataGenerator):
    """bert4keras-style: variable-length rows padded per batch, labels, sample ids."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = []  # the sample ids of every batch __iter__ produced

    def __iter__(self, random=False):
        xs, ys, ids = [], [], []
        for is_end, (i, x, y) in self.sample(random):
            xs.append(x)
            ys.append(y)
            ids.append(i)
            if len(xs) == self.batch_size or is_end:
                with lock:
                    self.log.append(ids)
                yield sequence_padding(xs, length=6).astype('float32'), np.array(ys, 'float32')
                xs, ys, ids = [], [], []


rng = np.random.RandomState(0)
samples = [(i, rng.rand(rng.randint(1, 7)).tolist(), [float(i % 2)]) for i in range(50)]
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation='relu'),
                          keras.layers.Dense(1)])
model.compile('adam', 'mse')
out = {}

gen = Batches(samples, batch_size=8, shuffle=True, seed=1)
out['len'] = len(gen)
history = model.fit(gen, epochs=3, verbose=0)
out['epochs'] = len(history.history['loss'])
out['served'] = gen.log

test = Batches(samples, batch_size=8)
predicted = model.predict(test, verbose=0)
direct = model.predict(sequence_padding([x for _, x, _ in samples], length=6).astype('float32'),
                       verbose=0)
out['predict_shape'] = list(predicted.shape)
out['predict_max_diff'] = float(np.abs(predicted - direct).max())
out['predict_again_diff'] = float(np.abs(model.predict(test, verbose=0) - direct).max())
out['evaluate'] = float(model.evaluate(test, verbose=0))

# validation data, and worker threads prefetching
threaded = Batches(samples, batch_size=8, shuffle=True, seed=2, workers=2)
valid = Batches(samples, batch_size=16)
model.fit(threaded, validation_data=valid, epochs=2, verbose=0)
out['threaded_served'] = threaded.log
out['valid_served'] = valid.log


class Stream:
    """An iterable without a length (e.g. lines of a huge file)."""

    def __iter__(self):
        return iter(samples)


stream = Batches(Stream(), batch_size=8, buffer_size=20, shuffle=True, seed=3)
out['stream_num_batches'] = stream.num_batches
model.fit(stream, steps_per_epoch=4, epochs=2, verbose=0)
out['stream_served'] = stream.log

plain = Batches(samples, batch_size=8)
model.fit(plain.forfit(), steps_per_epoch=7, epochs=1, verbose=0)
out['forfit_served'] = plain.log
first_inputs = next(Batches(samples, batch_size=8).fortest())
out['fortest_shape'] = list(first_inputs.shape)


class ListBatches(Batches):
    """bert4keras' habit: inputs as a list, [token_ids, segment_ids], labels."""

    def __iter__(self, random=False):
        for x, y in super().__iter__(random):
            yield [x, x * 0], y


a, b = keras.Input((6,)), keras.Input((6,))
two = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
two.compile('adam', 'mse')
out['list_inputs_epochs'] = len(two.fit(ListBatches(samples, batch_size=8), epochs=2,
                                        verbose=0).history['loss'])

# bert4keras' dynamic padding: each batch padded to its longest row; in data order the
# first two batches share a length (TensorFlow fixes the shapes it reads first)
lengths = [2, 3] * 8 + [2, 5] * 4 + [3, 4] * 4
tokens = [(rng.randint(1, 20, n).tolist(), [i % 2]) for i, n in enumerate(lengths)]


class Tokens(DataGenerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = []

    def __iter__(self, random=False):
        xs, ss, ys = [], [], []
        for is_end, (x, y) in self.sample(random):
            xs.append(x)
            ss.append([0] * len(x))
            ys.append(y)
            if len(xs) == self.batch_size or is_end:
                xs, ss = sequence_padding(xs), sequence_padding(ss)
                with lock:
                    self.lengths.append(xs.shape[1])
                yield [xs, ss], np.array(ys)
                xs, ss, ys = [], [], []


class NoTargets(Tokens):
    def __iter__(self, random=False):
        for x, _ in super().__iter__(random):
            yield x, None


t, s = keras.Input((None,), dtype='int32'), keras.Input((None,), dtype='int32')
h = keras.layers.Embedding(20, 4)(t) + keras.layers.Embedding(2, 4)(s)
probs = keras.layers.Dense(2, activation='softmax')(keras.layers.GlobalAveragePooling1D()(h))
seq = keras.Model([t, s], probs)
seq.compile('adam', 'sparse_categorical_crossentropy')
direct = np.concatenate([seq.predict_on_batch(x) for x, _ in Tokens(tokens, 8)])
out['variable_predict_diff'] = float(np.abs(seq.predict(Tokens(tokens, 8), verbose=0)
                                            - direct).max())
out['variable_fortest_diff'] = float(np.abs(seq.predict(Tokens(tokens, 8).fortest(), steps=4,
                                                        verbose=0) - direct).max())
variable = Tokens(tokens, 8)
seq.fit(variable, epochs=2, verbose=0)
out['variable_fit_lengths'] = variable.lengths
variable = Tokens(tokens, 8)
seq.fit(variable.forfit(random=False), steps_per_epoch=4, epochs=2, verbose=0)
out['variable_forfit_lengths'] = variable.lengths[:8]
bucketed = Tokens(tokens, 8, buckets=4)
seq.fit(bucketed.forfit(random=False), steps_per_epoch=4, epochs=1, verbose=0)
out['bucketed_forfit_lengths'] = bucketed.lengths[:4]
bucketed = Tokens(tokens, 8, buckets=[4, 8])
seq.fit(bucketed, epochs=1, verbose=0)
out['bucketed_fit_lengths'] = bucketed.lengths


class MeanLoss(Loss):
    def compute_loss(self, inputs, mask=None):
        return ops.mean(inputs)


no_targets = keras.Model([t, s], MeanLoss()(probs))
no_targets.compile('adam')
out['no_targets_fit'] = no_targets.fit(NoTargets(tokens, 8), epochs=1, verbose=0).history['loss']
out['no_targets_forfit'] = no_targets.fit(NoTargets(tokens, 8).forfit(), steps_per_epoch=4,
                                          epochs=1, verbose=0).history['loss']
print('RESULT ' + json.dumps(out))
'''


def run_backend(backend):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def passes(served, steps):
    return [
        sorted(i for ids in served[k : k + steps] for i in ids)
        for k in range(0, len(served), steps)
    ]


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_data_generator_with_keras(backend):
    out = run_backend(backend)
    everything = list(range(50))
    assert out["len"] == 7 and out["epochs"] == 3
    # each epoch is one full shuffled pass: every sample exactly once, no batch wasted on
    # Keras looking at the first batches to infer shapes
    assert len(out["served"]) == 21
    assert passes(out["served"], 7) == [everything] * 3
    orders = [[i for ids in out["served"][k : k + 7] for i in ids] for k in (0, 7, 14)]
    assert orders[0] != everything and orders[0] != orders[1]  # shuffled, differently
    # predict follows the data order (shuffle off), twice in a row
    assert out["predict_shape"] == [50, 1]
    assert out["predict_max_diff"] < 1e-5 and out["predict_again_diff"] < 1e-5
    assert np.isfinite(out["evaluate"])
    assert passes(out["threaded_served"], 7) == [everything] * 2
    assert passes(out["valid_served"], 4) == [everything] * 2
    assert out["stream_num_batches"] is None
    # a stream is not cut into epochs: 8 steps draw at least 8 batches (Keras probes one
    # batch for shapes, and TensorFlow's tf.data prefetches a few more, a number that
    # varies with thread timing); a shuffle buffer of 20 cannot move a sample more than 20
    # places ahead
    assert 8 <= len(out["stream_served"]) <= 8 + 4
    first_pass = [i for ids in out["stream_served"][:7] for i in ids]
    assert sorted(first_pass) == everything and first_pass != everything
    assert all(i <= position + 20 for position, i in enumerate(first_pass))
    # (Keras reads ahead from a plain generator: more than 7 batches may have been made)
    assert passes(out["forfit_served"][:7], 7) == [everything]
    assert out["fortest_shape"] == [8, 6]
    assert out["list_inputs_epochs"] == 2  # list batches work (TensorFlow needs tuples)
    # variable lengths, the first two batches of one length: served in order, every batch
    # once per epoch (TensorFlow's shape probe sees the padded axes open), same predictions
    assert out["variable_predict_diff"] < 1e-6 and out["variable_fortest_diff"] < 1e-6
    assert out["variable_fit_lengths"] == [3, 3, 5, 4] * 2
    assert out["variable_forfit_lengths"] == [3, 3, 5, 4] * 2
    assert out["bucketed_forfit_lengths"] == [4, 4, 8, 4]  # buckets=4: multiples of 4
    assert out["bucketed_fit_lengths"] == [4, 4, 8, 4]  # buckets=[4, 8]
    # (x, None) batches train a model whose loss is a Loss layer
    assert all(np.isfinite(out["no_targets_fit"] + out["no_targets_forfit"]))


class Plain(data.DataGenerator):
    def __iter__(self, random=False):
        batch = []
        for is_end, item in self.sample(random):
            batch.append(item)
            if len(batch) == self.batch_size or is_end:
                yield np.array(batch), np.array(batch)
                batch = []


def test_data_generator_bert4keras_api():
    gen = Plain(list(range(10)), batch_size=4, seed=0)
    assert len(gen) == 3 and gen.num_batches == 3
    assert [b[0].tolist() for b in gen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(gen.sample()) == [(False, i) for i in range(9)] + [(True, 9)]
    shuffled = [x for _, x in gen.sample(random=True)]
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert shuffled == [x for _, x in Plain(list(range(10)), 4, seed=0).sample(True)]
    forever = gen.forfit()
    assert sum(len(next(forever)[0]) for _ in range(6)) == 20  # two passes
    assert list(Plain([], 4).sample()) == []
    with pytest.raises(ValueError):
        next(Plain([], 4).forfit())
    stream = Plain(iter(range(10)), batch_size=4, buffer_size=3, seed=0)
    assert stream.num_batches is None
    with pytest.raises(TypeError):
        len(stream)
    assert sorted(x for _, x in stream.sample(random=True)) == list(range(10))
    with pytest.raises(ValueError):
        Plain(list(range(10)), 4, use_multiprocessing=True, workers=2)
    with pytest.raises(NotImplementedError):
        next(iter(data.DataGenerator(list(range(3)))))


def test_data_generator_shuffles_as_bert4keras():
    """seed=None draws from NumPy's global state exactly as bert4keras 0.11.5's `sample`:
    one ``np.random.permutation(len(data))`` per pass of sized data, and for a stream a
    buffer of `buffer_size` from which ``np.random.randint(len(buffer))`` picks."""
    data = list(range(30))
    np.random.seed(7)
    ours = [x for _, x in Plain(data, 4).sample(random=True)]
    np.random.seed(7)
    assert ours == [data[i] for i in np.random.permutation(30)]
    np.random.seed(7)
    forfit = Plain(data, 4).forfit()  # random=True by default, as bert4keras
    batches = [next(forfit)[0].tolist() for _ in range(8)]  # one pass of 30 in batches of 4
    np.random.seed(7)
    expected = [data[i] for i in np.random.permutation(30)]
    assert sum(batches, []) == expected
    np.random.seed(7)
    ours = [x for _, x in Plain(iter(data), 4, buffer_size=5).sample(random=True)]
    np.random.seed(7)
    buffer, expected = [], []
    for x in data:  # the original's buffer: fill to 5, then draw one per new sample
        buffer.append(x)
        if len(buffer) > 5:
            expected.append(buffer.pop(np.random.randint(len(buffer))))
    while buffer:
        expected.append(buffer.pop(np.random.randint(len(buffer))))
    assert ours == expected
    fortest = Plain(data, 4).fortest()  # data order by default; the inputs only
    assert next(fortest).tolist() == [0, 1, 2, 3]


def test_sequence_padding_buckets():
    rows = [[1, 2, 3], [4]]
    assert data.sequence_padding(rows, buckets=4).tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert data.sequence_padding(rows, buckets=[2, 5, 9]).shape == (2, 5)
    assert data.sequence_padding(rows, buckets=[2]).shape == (2, 3)  # beyond the last: as is
    assert data.sequence_padding(rows, length=3, buckets=4).shape == (2, 3)  # length wins
    assert data.sequence_padding([[1, 2], [3, 4]], buckets=4).shape == (2, 2)  # no axis varies
    # GlobalPointer labels [heads, n, n]: the heads axis is the same in every row
    labels = [np.ones((2, 3, 3)), np.ones((2, 5, 5))]
    assert data.sequence_padding(labels, seq_dims=3, buckets=8).shape == (2, 2, 8, 8)
    assert data.bucket_length(0, 8) == 0 and data.bucket_length(9, 8) == 16
    for bad in (0, -4, [], [0, 8], "8", 2.5, True):
        with pytest.raises(ValueError, match="buckets"):
            data.sequence_padding(rows, buckets=bad)
        with pytest.raises(ValueError, match="buckets"):
            Plain(rows, 2, buckets=bad)


def test_data_generator_to_dataset():
    class Samples(data.DataGenerator):
        def __iter__(self, random=False):
            for _, x in self.sample(random):
                yield [x] * (x + 1), x

    import tensorflow as tf

    gen = Samples(list(range(5)), batch_size=2)
    dataset = gen.to_dataset(types=("int32", "int32"), shapes=([None], []), padded_batch=True)
    x, y = next(iter(dataset))  # forfit: shuffled samples, padded per batch
    assert x.shape[0] == 2 and x.shape[1] == max(y.numpy()) + 1
    for row, label in zip(x.numpy().tolist(), y.numpy().tolist()):
        assert row == [label] * (label + 1) + [0] * (len(row) - label - 1)
    named = gen.to_dataset(
        types=("int32", "int32"), shapes=([None], []), names=("tokens", "label"), padded_batch=True
    )
    batch = next(iter(named))
    assert set(batch) == {"tokens", "label"} and isinstance(batch["label"], tf.Tensor)
