"""CRF, MEMM and Viterbi decoding against brute force / independent NumPy formulas."""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from kerasformers.layers import (
    ConditionalRandomField,
    MaximumEntropyMarkovModel,
    ViterbiDecoder,
    viterbi_decode,
)
from tests.utils import to_numpy

L = 3  # labels
# real tokens: a full row, right padding, padding anywhere (gaps), one token, none
MASK = np.array(
    [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 0, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], bool
)


def data(seed=0, scale=2.0):
    rng = np.random.RandomState(seed)
    emissions = (scale * rng.normal(size=MASK.shape + (L,))).astype("float32")
    labels = rng.randint(0, L, MASK.shape).astype("int32")
    trans = rng.normal(size=(L, L)).astype("float32")
    return emissions, labels, trans


def logsumexp(x):
    m = max(x)
    return m + np.log(sum(np.exp(v - m) for v in x))


def path_score(nodes, trans, path):
    return sum(nodes[t, y] for t, y in enumerate(path)) + sum(
        trans[a, b] for a, b in zip(path[:-1], path[1:])
    )


def brute_nll(nodes, trans, labels):
    """-log p(labels) by enumerating every label path of the real tokens."""
    if len(nodes) == 0:
        return 0.0
    scores = [path_score(nodes, trans, p) for p in itertools.product(range(L), repeat=len(nodes))]
    return logsumexp(scores) - path_score(nodes, trans, labels)


def brute_best(nodes, trans, starts=None, ends=None):
    paths = [
        p
        for p in itertools.product(range(L), repeat=len(nodes))
        if (starts is None or p[0] in starts) and (ends is None or p[-1] in ends)
    ]
    return list(max(paths, key=lambda p: path_score(nodes, trans, p)))


def crf_with(trans, lr_multiplier=1):
    crf = ConditionalRandomField(lr_multiplier=lr_multiplier)
    crf.build((None, None, L))
    crf._trans.assign(trans / lr_multiplier)
    return crf


@pytest.mark.parametrize("lr_multiplier", [1, 10])
def test_crf_nll_equals_brute_force(lr_multiplier):
    emissions, labels, trans = data()
    crf = crf_with(trans, lr_multiplier)
    np.testing.assert_allclose(to_numpy(crf.trans), trans, rtol=1e-6)
    ours = to_numpy(crf.negative_log_likelihood(labels, emissions, mask=MASK))
    ref = [brute_nll(e[m], trans, y[m]) for e, y, m in zip(emissions, labels, MASK)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    loss = to_numpy(crf.sparse_loss(labels, emissions, mask=MASK))
    np.testing.assert_allclose(loss, np.mean(ref), rtol=1e-5)
    one_hot = np.eye(L, dtype="float32")[labels]
    np.testing.assert_allclose(
        to_numpy(crf.dense_loss(one_hot, emissions, mask=MASK)), loss, rtol=1e-6
    )


def test_crf_without_mask_counts_every_position():
    emissions, labels, trans = data(1)
    crf = crf_with(trans)
    ours = to_numpy(crf.negative_log_likelihood(labels, emissions))
    ref = [brute_nll(e, trans, y) for e, y in zip(emissions, labels)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_crf_reads_the_keras_mask_and_keeps_it():
    emissions, labels, trans = data(2)
    crf = crf_with(trans)
    out = crf(emissions, mask=MASK)
    np.testing.assert_array_equal(to_numpy(out), emissions)  # emissions unchanged
    from kerasformers.losses import get_keras_mask

    np.testing.assert_array_equal(to_numpy(get_keras_mask(out)), MASK)
    np.testing.assert_allclose(
        to_numpy(crf.sparse_loss(labels, out)),
        to_numpy(crf.sparse_loss(labels, emissions, mask=MASK)),
        rtol=1e-6,
    )
    # accuracy: per-token hits for Keras to weight, or the masked mean given mask=
    hits = emissions.argmax(-1) == labels
    np.testing.assert_array_equal(to_numpy(crf.sparse_accuracy(labels, out)), hits)
    np.testing.assert_allclose(
        to_numpy(crf.sparse_accuracy(labels, emissions, mask=MASK)), hits[MASK].mean(), rtol=1e-6
    )


def test_crf_stable_with_large_scores():
    emissions, labels, trans = data(3, scale=1e4)
    crf = crf_with(trans * 1e3)
    ours = to_numpy(crf.negative_log_likelihood(labels, emissions, mask=MASK))
    ref = [
        brute_nll(e[m].astype("float64"), trans * 1e3, y[m])
        for e, y, m in zip(emissions, labels, MASK)
    ]
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1.0)


@pytest.mark.parametrize("constraints", [(None, None), ([0, 1], [1, 2])])
def test_viterbi_on_device_and_numpy_equal_brute_force(constraints):
    starts, ends = constraints
    emissions, _, trans = data(4)
    paths = to_numpy(viterbi_decode(emissions, trans, MASK, starts, ends)).astype(int)
    decoder = ViterbiDecoder(trans, starts, ends)
    for e, m, path in zip(emissions, MASK, paths):
        if not m.any():
            assert (path == 0).all()
            continue
        best = brute_best(e[m], trans, starts, ends)
        assert path[m].tolist() == best
        assert (path[~m] == 0).all()
        nodes = e[m].copy()
        assert decoder.decode(nodes).tolist() == best
        np.testing.assert_array_equal(nodes, e[m])  # the caller's array is left alone


def test_viterbi_full_rows_single_token_and_layer_method():
    emissions, _, trans = data(5)
    crf = crf_with(trans)
    paths = to_numpy(crf.decode(emissions)).astype(int)
    decoder = ViterbiDecoder(trans)
    assert [p.tolist() for p in paths] == [decoder.decode(e).tolist() for e in emissions]
    one = to_numpy(viterbi_decode(emissions[:, :1], trans)).astype(int)
    assert one[:, 0].tolist() == emissions[:, 0].argmax(-1).tolist()


def numpy_memm_loss(emissions, labels, trans, lengths):
    """bert4keras' formula: reverse_sequence + transposed trans for the backward pass."""

    def one_direction(x, y, t):
        total, count = 0.0, 0
        for e, l, n in zip(x, y, lengths):
            for i in range(n):
                logits = e[i] if i == 0 else (e[i] + t[l[i - 1]]) / 2
                logits = logits.astype("float64")
                total += logsumexp(list(logits)) - logits[l[i]]
                count += 1
        return total / count

    def reverse(a):
        return np.stack([np.concatenate([r[:n][::-1], r[n:]]) for r, n in zip(a, lengths)])

    forward = one_direction(emissions, labels, trans)
    backward = one_direction(reverse(emissions), reverse(labels), trans.T)
    return (forward + backward) / 2


@pytest.mark.parametrize("hidden_dim", [None, 2])
def test_memm_loss_equals_numpy_formula(hidden_dim):
    emissions, labels, _ = data(6)
    lengths = [5, 3, 4, 1, 2]
    mask = np.arange(5)[None] < np.array(lengths)[:, None]
    memm = MaximumEntropyMarkovModel(lr_multiplier=4, hidden_dim=hidden_dim)
    memm.build((None, None, L))
    trans = to_numpy(memm.trans)
    loss = to_numpy(memm.sparse_loss(labels, emissions, mask=mask))
    np.testing.assert_allclose(loss, numpy_memm_loss(emissions, labels, trans, lengths), rtol=1e-5)
    if hidden_dim:
        low_rank = to_numpy(memm.l_trans) @ to_numpy(memm.r_trans).T
        np.testing.assert_allclose(trans, low_rank, rtol=1e-5)
        assert to_numpy(memm._l_trans).std() < to_numpy(memm.l_trans).std() / 3
    # padding anywhere = the same sequences compacted
    gappy = np.zeros_like(emissions)
    gappy_labels = np.zeros_like(labels)
    gappy_mask = np.zeros_like(mask)
    for i, n in enumerate(lengths):
        where = np.sort(np.random.RandomState(i).choice(5, n, replace=False))
        gappy[i, where], gappy_labels[i, where], gappy_mask[i, where] = (
            emissions[i, :n],
            labels[i, :n],
            True,
        )
    np.testing.assert_allclose(
        to_numpy(memm.sparse_loss(gappy_labels, gappy, mask=gappy_mask)), loss, rtol=1e-5
    )


def test_memm_accuracy_uses_true_neighbours():
    emissions, labels, trans = data(7)
    mask = np.ones(labels.shape, bool)
    memm = MaximumEntropyMarkovModel()
    memm.build((None, None, L))
    memm._trans.assign(trans)
    forward = np.concatenate([emissions[:, :1], (emissions[:, 1:] + trans[labels[:, :-1]]) / 2], 1)
    backward = np.concatenate(
        [(emissions[:, :-1] + trans[:, labels[:, 1:]].transpose(1, 2, 0)) / 2, emissions[:, -1:]], 1
    )
    hits = ((forward.argmax(-1) == labels) * 1.0 + (backward.argmax(-1) == labels)) / 2
    np.testing.assert_allclose(to_numpy(memm.sparse_accuracy(labels, emissions)), hits)
    np.testing.assert_allclose(
        to_numpy(memm.dense_accuracy(np.eye(L)[labels], emissions, mask=mask)),
        hits.mean(),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (ConditionalRandomField, {"lr_multiplier": 3}),
        (MaximumEntropyMarkovModel, {"hidden_dim": 2}),
    ],
)
def test_get_config_round_trip(cls, kwargs):
    layer = cls(name="tagger", **kwargs)
    config = layer.get_config()
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is cls and clone.get_config() == config
    assert config["dtype"]["config"]["name"] == "float32"


def parity_task(n=256, length=8, seed=0):
    """Tokens 1..9; even -> O (0); odd after odd -> I (2); other odd -> B (1).

    One token's embedding cannot tell B from I: the transitions must."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, 10, (n, length))
    lengths = rng.randint(min(3, length), length + 1, n)
    tokens[np.arange(length)[None] >= lengths[:, None]] = 0
    odd = tokens % 2 == 1
    prev_odd = np.concatenate([np.zeros((n, 1), bool), odd[:, :-1]], 1)
    labels = np.where(odd, np.where(prev_odd, 2, 1), 0)
    return tokens.astype("int32"), labels.astype("int32"), tokens > 0


def test_tiny_tagger_learns_transitions_with_fit():
    keras.utils.set_random_seed(0)
    tokens, labels, mask = parity_task()
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
    crf = ConditionalRandomField(lr_multiplier=2)
    model = keras.Model(ids, crf(keras.layers.Dense(L)(x)))
    model.compile(keras.optimizers.Adam(0.05), loss=crf.sparse_loss, metrics=[crf.sparse_accuracy])
    before = to_numpy(crf.trans)
    model.fit(tokens, labels, batch_size=32, epochs=12, verbose=0)
    assert np.abs(to_numpy(crf.trans) - before).max() > 0.5  # transitions do train
    test_tokens, test_labels, test_mask = parity_task(64, seed=1)
    emissions = model(test_tokens)
    paths = to_numpy(crf.decode(emissions)).astype(int)
    assert (paths == test_labels)[test_mask].mean() > 0.98
    loss, accuracy = model.evaluate(test_tokens, test_labels, verbose=0)
    argmax = to_numpy(emissions).argmax(-1) == test_labels
    np.testing.assert_allclose(accuracy, argmax[test_mask].mean(), rtol=1e-5)  # padding excluded
    np.testing.assert_allclose(
        loss, to_numpy(crf.sparse_loss(test_labels, emissions, mask=test_mask)), rtol=1e-4
    )


def test_lr_multiplier_scales_the_adam_step():
    """Adam's first step moves each stored entry by ~lr; trans = m * stored moves m times more."""
    emissions, labels, trans = data(8)
    steps = []
    for m in (1, 10):
        crf = crf_with(trans, m)
        inputs = keras.Input((None, L))
        model = keras.Model(inputs, crf(inputs))
        model.compile(keras.optimizers.Adam(1e-3), loss=crf.sparse_loss)
        model.train_on_batch(emissions, labels)
        steps.append(np.abs(to_numpy(crf.trans) - trans).max())
    np.testing.assert_allclose(steps, [1e-3, 1e-2], rtol=0.05)


@pytest.mark.filterwarnings("ignore:.*hides layer weights from metrics")
@pytest.mark.parametrize("cls", [ConditionalRandomField, MaximumEntropyMarkovModel])
def test_mixed_bfloat16_masks_give_no_nan(cls):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        tokens, labels, _ = parity_task(16)
        ids = keras.Input((None,), dtype="int32")
        x = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
        head = cls()
        out = head(keras.layers.Dense(L)(x))
        assert head.compute_dtype == "float32"
        model = keras.Model(ids, out)
        model.compile(
            keras.optimizers.Adam(0.01), loss=head.sparse_loss, metrics=[head.sparse_accuracy]
        )
        history = model.fit(tokens, labels, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"]).all()
        assert np.isfinite(to_numpy(head.trans)).all()
        loss, _ = model.evaluate(tokens, labels, verbose=0)
        emissions = ops.cast(model(tokens), "float32")
        explicit = to_numpy(head.sparse_loss(labels, emissions, mask=tokens > 0))
        np.testing.assert_allclose(loss, explicit, rtol=1e-3)  # the mask reached the loss
    finally:
        keras.config.set_dtype_policy(previous)


class Batches(keras.utils.PyDataset):
    """Batches of different lengths (1 included), as a padding-per-batch generator gives."""

    def __init__(self, lengths):
        super().__init__()
        self.batches = []
        for i, n in enumerate(lengths):
            tokens, labels, _ = parity_task(4, n, seed=i)
            tokens[:, 0] = np.maximum(tokens[:, 0], 1)  # at least one real token
            self.batches.append((tokens, labels))

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def test_variable_length_batches_and_unknown_length_graphs():
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    crf = ConditionalRandomField()
    x = keras.layers.Embedding(10, 4, mask_zero=True)(ids)
    model = keras.Model(ids, crf(keras.layers.Dense(L)(x)))
    model.compile("adam", loss=crf.sparse_loss, metrics=[crf.sparse_accuracy])
    history = model.fit(Batches([1, 3, 3, 1]), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    if keras.backend.backend() == "tensorflow":  # length unknown while tracing
        import tensorflow as tf

        spec = tf.TensorSpec([None, None, L])
        decode = tf.function(lambda e: crf.decode(e), input_signature=[spec])
        nll = tf.function(
            lambda y, e: crf.negative_log_likelihood(y, e),
            input_signature=[tf.TensorSpec([None, None], tf.int32), spec],
        )
        for n in (1, 3):
            emissions, labels, _ = data(n)
            emissions, labels = emissions[:, :n], labels[:, :n]
            np.testing.assert_array_equal(
                to_numpy(decode(emissions)), to_numpy(crf.decode(emissions))
            )
            np.testing.assert_allclose(
                to_numpy(nll(labels, emissions)),
                to_numpy(crf.negative_log_likelihood(labels, emissions)),
                rtol=1e-6,
            )


class MaskInputTagger(keras.Model):
    """The documented recipe when the padding mask is a model input, not a Keras mask."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.get_layer("crf").sparse_loss(y, y_pred, mask=x["padding_mask"])


def test_mask_as_model_input_via_compute_loss():
    keras.utils.set_random_seed(0)
    tokens, labels, mask = parity_task(8)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding = keras.Input((None,), dtype="bool", name="padding_mask")
    emissions = keras.layers.Dense(L)(keras.layers.Embedding(10, 4)(token_ids))
    model = MaskInputTagger(
        {"token_ids": token_ids, "padding_mask": padding},
        ConditionalRandomField(name="crf")(emissions),
    )
    model.compile("adam")
    x = {"token_ids": tokens, "padding_mask": mask}
    loss = model.evaluate(x, labels, verbose=0)
    crf = model.get_layer("crf")
    expected = to_numpy(crf.sparse_loss(labels, model(x), mask=mask))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert abs(loss - to_numpy(crf.sparse_loss(labels, model(x)))) > 1e-3  # padding mattered


def test_save_and_load_keras_file(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(ids)
    crf = ConditionalRandomField(lr_multiplier=10)
    model = keras.Model(ids, crf(keras.layers.Dense(L)(x)))
    model.compile("adam", loss=crf.sparse_loss)
    path = str(tmp_path / "tagger.keras")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(to_numpy(loaded.layers[-1].trans), to_numpy(crf.trans))
    tokens, _, _ = parity_task(4)
    np.testing.assert_array_equal(
        to_numpy(loaded.layers[-1].decode(loaded(tokens))), to_numpy(crf.decode(model(tokens)))
    )
