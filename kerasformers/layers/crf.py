"""Sequence tagging heads: linear-chain CRF, bidirectional MEMM and Viterbi decoding.

Both layers are "loss layers": `call` returns the emission scores unchanged
(keeping their padding mask) and the layer owns the transition weights that its
`sparse_loss` / `dense_loss` / `sparse_accuracy` / `dense_accuracy` methods use.

Masks. The methods take the padding mask from the emissions' Keras mask (an
`Embedding(mask_zero=True)` upstream provides it), or from an explicit
`mask=` argument ([batch, seq], True / 1 = real token), else every position is
a real token. Padding may sit anywhere: it is removed and the chain links each
real token to the previous real one. In `compile` Keras cannot pass `mask=`;
when your mask is a model input rather than a Keras mask, attach it to the
emissions first (a layer whose `compute_mask` returns it), or override
`compute_loss` of your `keras.Model` subclass:
`return crf.sparse_loss(y, y_pred, mask=x["padding_mask"])`.
Both layers compute in float32 by default (even under a mixed-precision
policy): the log-partition needs the range, and a float32 output keeps its Keras
mask when Keras hands it to the loss (a cast would drop it).

Losses return a scalar (mean negative log-likelihood per sequence for the CRF,
mean token cross-entropy for the MEMM). Accuracies return per-token hits
[batch, seq] that Keras weights with the output mask, or, given `mask=`, the
masked mean. On JAX, Keras does not pass output masks to *metrics* during
`fit` (it does in `evaluate` and for losses), so the training accuracy
counts padding there.

Saving: a model compiled with these bound methods saves fine, but Keras cannot
deserialise them: load with `keras.models.load_model(path, compile=False)` and
compile again with the loaded layer's methods.

>>> import keras, numpy as np
>>> from kerasformers.layers import ConditionalRandomField
>>> ids = keras.Input((None,), dtype="int32")
>>> x = keras.layers.Embedding(20, 8, mask_zero=True)(ids)
>>> crf = ConditionalRandomField()
>>> model = keras.Model(ids, crf(keras.layers.Dense(3)(x)))
>>> model.compile("adam", loss=crf.sparse_loss, metrics=[crf.sparse_accuracy])
>>> tokens = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])
>>> labels = np.array([[0, 1, 2, 0], [1, 2, 0, 0]])
>>> _ = model.fit(tokens, labels, epochs=1, verbose=0)
>>> paths = keras.ops.convert_to_numpy(crf.decode(model(tokens)))   # Viterbi
>>> paths.shape, paths[1, 2:].tolist()     # padding positions get label 0
((2, 4), [0, 0])
"""

import warnings

import keras
import numpy as np
from keras import ops

from kerasformers.losses import _sparse_labels, _token_reduce, get_keras_mask
from kerasformers.saving import register

_NEG = -1e30


def _scaled_glorot(multiplier):
    """glorot_uniform divided by `multiplier` (the stored half of the lr reparametrisation)."""

    def initializer(shape, dtype=None):
        return keras.initializers.GlorotUniform()(shape, dtype=dtype) / multiplier

    return initializer


def _resolve_mask(y_pred, mask):
    """Bool [batch, seq] mask: explicit, else y_pred's Keras mask, else None (all real)."""
    if mask is None:
        mask = get_keras_mask(y_pred)
    return None if mask is None else ops.cast(mask, "bool")


def _compaction(mask):
    """Gather indices moving each row's real tokens to the front (order kept), their
    inverse, and the row lengths. Positions are distinct, so argsort needs no stability."""
    mask_i = ops.cast(mask, "int32")
    lengths = ops.sum(mask_i, axis=1)
    real_rank = ops.cumsum(mask_i, axis=1) - 1
    pad_rank = lengths[:, None] + ops.cumsum(1 - mask_i, axis=1) - 1
    position = ops.where(mask, real_rank, pad_rank)  # new index of each old index
    order = ops.cast(ops.argsort(position, axis=1), "int32")
    return order, position, lengths


def _gather_time(x, index):
    if len(x.shape) == 3:
        index = index[:, :, None]
    return ops.take_along_axis(x, index, axis=1)


class _Compacted:
    """Real tokens first: `prefix` is the [batch, seq] bool mask of the compacted rows."""

    def __init__(self, mask, seq_len):
        self.mask = mask
        if mask is None:
            self.prefix = None
            return
        self.order, self.position, self.lengths = _compaction(mask)
        self.prefix = ops.arange(seq_len)[None, :] < self.lengths[:, None]

    def forward(self, x):
        return x if self.mask is None else _gather_time(x, self.order)

    def backward(self, x):
        return x if self.mask is None else _gather_time(x, self.position)


def _steps(nodes, mask):
    """Time-major scan input [n, b, L + 2]: emissions, mask and is-first-step channels.

    All steps (the first is told apart by a flag) in one tensor: Keras' TensorFlow
    scan fails on several inputs, or on none, when the length is unknown
    (variable-length batches), so the scan is never empty nor a tuple."""
    first = ops.arange(ops.shape(nodes)[1])[None, :, None] == 0
    first = ops.broadcast_to(first, ops.shape(nodes)[:2] + (1,))
    packed = ops.concatenate(
        [nodes, ops.cast(mask[..., None], nodes.dtype), ops.cast(first, nodes.dtype)], axis=-1
    )
    return ops.moveaxis(packed, 1, 0)


def _unpack_step(inputs):
    """x_t [b, L], is-real m_t [b, 1], is-first f_t [b, 1]."""
    return inputs[..., :-2], inputs[..., -2:-1] > 0.5, inputs[..., -1:] > 0.5


def _batch_major(ys, reference):
    """Scan outputs [n, b, ...] -> [b, n, ...] (TensorFlow may lose their rank)."""
    ys = ops.reshape(ys, (-1,) + tuple(ops.shape(reference)))
    return ops.moveaxis(ys, 0, 1)


def _crf_nll(y_true, y_pred, trans, prefix):
    """-log p(y | x) per sequence. y_true one-hot (float), y_pred [b, n, L] float32,
    real tokens a prefix of each row (`prefix` [b, n] bool or None)."""
    step_mask = ops.ones(ops.shape(y_pred)[:2], "bool") if prefix is None else prefix
    step_f = ops.cast(step_mask, "float32")
    point = ops.sum(ops.sum(y_true * y_pred, axis=-1) * step_f, axis=1)
    pair = ops.einsum("bni,ij,bnj->bn", y_true[:, :-1], trans, y_true[:, 1:])
    target = point + ops.sum(pair * step_f[:, 1:], axis=1)

    def step(alpha, inputs):
        # alpha_t(j) = log sum over paths ending in label j at t (logsumexp recursion)
        x_t, m_t, f_t = _unpack_step(inputs)
        new = ops.logsumexp(alpha[:, :, None] + trans[None], axis=1) + x_t
        new = ops.where(f_t, x_t, new)
        return ops.where(m_t, new, alpha), None

    alpha, _ = ops.scan(step, ops.zeros_like(y_pred[:, 0]), _steps(y_pred, step_mask))
    log_z = ops.logsumexp(alpha, axis=-1)
    return ops.where(step_mask[:, 0], log_z - target, 0.0)


def _label_bias(labels, num_labels):
    """0 for the allowed labels, a large negative for the others (None: all allowed)."""
    if labels is None:
        return None
    bias = np.full((num_labels,), _NEG, "float32")
    bias[list(labels)] = 0.0
    return ops.convert_to_tensor(bias)


def viterbi_decode(emissions, trans, mask=None, starts=None, ends=None):
    """Batched Viterbi decoding on device: the best label path of a linear-chain CRF.

    emissions [batch, seq, num_labels], trans [num_labels, num_labels]
    (trans[i, j] scores label i followed by j), mask [batch, seq] (True = real
    token; default: the emissions' Keras mask, else all real). `starts` / `ends`:
    labels allowed at the first / last real token (None: any).
    Returns int32 [batch, seq]; padding positions get label 0.

    >>> import keras, numpy as np
    >>> trans = np.array([[0.0, -9.0], [-9.0, 0.0]])   # switching labels is costly
    >>> nodes = np.array([[[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    >>> keras.ops.convert_to_numpy(viterbi_decode(nodes, trans)).tolist()
    [[0, 0, 0]]
    """
    mask = _resolve_mask(emissions, mask)
    emissions = ops.cast(emissions, "float32")
    trans = ops.cast(trans, "float32")
    num_labels = emissions.shape[-1]
    labels_range = ops.arange(num_labels, dtype="int32")
    compact = _Compacted(mask, ops.shape(emissions)[1])
    nodes = compact.forward(emissions)
    prefix = compact.prefix
    if prefix is None:
        prefix = ops.ones(ops.shape(nodes)[:2], "bool")
    start_bias = _label_bias(starts, num_labels)
    end_bias = _label_bias(ends, num_labels)

    def forward(carry, inputs):
        # TensorFlow's scan wants outputs shaped like the carry: carry both
        delta, _ = carry
        x_t, m_t, f_t = _unpack_step(inputs)
        scores = delta[:, :, None] + trans[None]  # [b, from, to]
        best = ops.cast(ops.argmax(scores, axis=1), "int32")
        new = ops.max(scores, axis=1) + x_t
        new = ops.where(f_t, x_t if start_bias is None else x_t + start_bias, new)
        best = ops.where(ops.logical_and(m_t, ops.logical_not(f_t)), best, labels_range[None])
        carry = [ops.where(m_t, new, delta), best]
        return carry, carry

    def backward(label, backpointer):
        previous = ops.take_along_axis(backpointer, label[:, None], axis=1)[:, 0]
        return previous, label

    init = [ops.zeros_like(nodes[:, 0]), ops.zeros(ops.shape(nodes[:, 0]), "int32")]
    (delta, _), (_, backpointers) = ops.scan(forward, init, _steps(nodes, prefix))
    if end_bias is not None:
        delta = delta + end_bias
    last = ops.cast(ops.argmax(delta, axis=-1), "int32")
    backpointers = ops.reshape(backpointers, (-1,) + tuple(ops.shape(delta)))
    _, path = ops.scan(backward, last, backpointers, reverse=True)
    path = _batch_major(path, last)
    path = compact.backward(path)
    if mask is not None:
        path = ops.where(mask, path, 0)
    return path


class ViterbiDecoder:
    """NumPy Viterbi decoding of one sequence (bert4keras `snippets.ViterbiDecoder`).

    `trans` [num_labels, num_labels] (e.g. `keras.ops.convert_to_numpy(crf.trans)`);
    `starts` / `ends`: labels allowed first / last (None: any). Subclass it for
    task decoders (e.g. an entity recogniser that maps the path to spans).

    >>> import numpy as np
    >>> decoder = ViterbiDecoder(np.zeros((3, 3)), starts=[0], ends=[2])
    >>> decoder.decode(np.array([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]])).tolist()
    [0, 2]
    """

    def __init__(self, trans, starts=None, ends=None):
        self.trans = np.asarray(trans)
        self.num_labels = len(self.trans)
        self.non_starts = (
            [] if starts is None else [i for i in range(self.num_labels) if i not in starts]
        )
        self.non_ends = [] if ends is None else [i for i in range(self.num_labels) if i not in ends]

    def decode(self, nodes):
        """nodes: emission scores [seq_len, num_labels] -> best label path [seq_len]."""
        nodes = np.array(nodes, dtype="float64")  # a copy: bert4keras edited the caller's array
        nodes[0, self.non_starts] -= np.inf
        nodes[-1, self.non_ends] -= np.inf
        labels = np.arange(self.num_labels).reshape((1, -1))
        scores = nodes[0].reshape((-1, 1))
        paths = labels
        for t in range(1, len(nodes)):
            candidates = scores + self.trans + nodes[t].reshape((1, -1))
            best = candidates.argmax(0)
            scores = candidates.max(0).reshape((-1, 1))
            paths = np.concatenate([paths[:, best], labels], 0)
        return paths[:, scores[:, 0].argmax()]


class _TaggingHead(keras.layers.Layer):
    """Shared plumbing: float32 by default, identity call that keeps the mask,
    `lr_multiplier` reparametrisation (stored = value / m, used = m * stored,
    so gradient steps on the used value are m times larger with Adam)."""

    def __init__(self, lr_multiplier=1, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.lr_multiplier = lr_multiplier
        self.supports_masking = True

    def _add_scaled_weight(self, name, shape):
        return self.add_weight(
            name=name, shape=shape, initializer=_scaled_glorot(self.lr_multiplier)
        )

    def _scaled(self, weight):
        value = ops.convert_to_tensor(weight)
        return value if self.lr_multiplier == 1 else value * self.lr_multiplier

    def call(self, inputs, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def dense_loss(self, y_true, y_pred, mask=None):
        """`sparse_loss` for one-hot y_true [batch, seq, num_labels]."""
        return self.sparse_loss(ops.argmax(y_true, axis=-1), y_pred, mask)

    def dense_accuracy(self, y_true, y_pred, mask=None):
        """`sparse_accuracy` for one-hot y_true."""
        return self.sparse_accuracy(ops.argmax(y_true, axis=-1), y_pred, mask)

    def get_config(self):
        config = super().get_config()
        config["lr_multiplier"] = self.lr_multiplier
        return config


@register
class ConditionalRandomField(_TaggingHead):
    """Linear-chain CRF over the emission scores [batch, seq, num_labels] it is called on.

    Weight `trans` [num_labels, num_labels] scores label i followed by label j
    (read the effective matrix from the `trans` property; with `lr_multiplier`
    m the stored variable holds trans / m). `sparse_loss(y_true, y_pred, mask=None)`
    is the mean over sequences of -log p(labels | emissions), the log-partition
    computed with a logsumexp recursion (`keras.ops.scan`); `dense_loss` takes
    one-hot labels. `sparse_accuracy` / `dense_accuracy` score the per-token
    argmax of the emissions (a cheap training signal; decode with `decode`,
    `viterbi_decode` or `ViterbiDecoder`). See the module docstring for masks.
    """

    def build(self, input_shape):
        num_labels = input_shape[-1]
        self._trans = self._add_scaled_weight("trans", (num_labels, num_labels))

    @property
    def trans(self):
        return self._scaled(self._trans)

    def negative_log_likelihood(self, y_true, y_pred, mask=None):
        """-log p(y_true | y_pred) per sequence [batch] (y_true integer labels)."""
        mask = _resolve_mask(y_pred, mask)
        y_pred = ops.cast(y_pred, "float32")
        y_true = _sparse_labels(y_true, y_pred)
        compact = _Compacted(mask, ops.shape(y_pred)[1])
        y_true = ops.one_hot(compact.forward(y_true), y_pred.shape[-1], dtype="float32")
        return _crf_nll(
            y_true, compact.forward(y_pred), ops.cast(self.trans, "float32"), compact.prefix
        )

    def sparse_loss(self, y_true, y_pred, mask=None):
        """Mean negative log-likelihood per sequence (scalar); y_true integer labels [b, n]."""
        return ops.mean(self.negative_log_likelihood(y_true, y_pred, mask))

    def sparse_accuracy(self, y_true, y_pred, mask=None):
        """Per-token accuracy of argmax(emissions) (see the module docstring for masks)."""
        labels = _sparse_labels(y_true, y_pred)
        hits = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels)
        return _token_reduce(ops.cast(hits, "float32"), mask)

    def decode(self, emissions, mask=None, starts=None, ends=None):
        """Best label paths [batch, seq] for these emissions (`viterbi_decode` with `trans`)."""
        return viterbi_decode(emissions, self.trans, mask, starts, ends)


@register
class MaximumEntropyMarkovModel(_TaggingHead):
    """Bidirectional maximum-entropy Markov model: a cheaper CRF alternative.

    Each token is classified by softmax((emission + trans[previous label]) / 2)
    with the true previous label; the loss averages this forward cross-entropy
    and the backward one (trans[:, next label]). The first token of the forward
    pass (last of the backward) uses its emission alone. `hidden_dim` factorises
    trans = l_trans @ r_trans^T (weights `l_trans`, `r_trans` [num_labels,
    hidden_dim]); otherwise the weight is `trans`. The `trans` property gives the
    effective matrix either way (e.g. for `ViterbiDecoder`). Losses and
    accuracies use the true neighbouring labels (teacher forcing), averaged over
    both directions (but see `sparse_accuracy` on JAX). See the module
    docstring for masks.
    """

    def __init__(self, lr_multiplier=1, hidden_dim=None, **kwargs):
        super().__init__(lr_multiplier=lr_multiplier, **kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        num_labels = input_shape[-1]
        if self.hidden_dim is None:
            self._trans = self._add_scaled_weight("trans", (num_labels, num_labels))
        else:
            self._l_trans = self._add_scaled_weight("l_trans", (num_labels, self.hidden_dim))
            self._r_trans = self._add_scaled_weight("r_trans", (num_labels, self.hidden_dim))

    @property
    def trans(self):
        if self.hidden_dim is None:
            return self._scaled(self._trans)
        return ops.matmul(self.l_trans, ops.transpose(self.r_trans))

    @property
    def l_trans(self):
        return self._scaled(self._l_trans)

    @property
    def r_trans(self):
        return self._scaled(self._r_trans)

    def _history(self, labels, forward):
        """[b, n, L] transition scores from each token's label: trans[y] or trans[:, y]."""
        if self.hidden_dim is None:
            trans = ops.cast(self.trans, "float32")
            return ops.take(trans if forward else ops.transpose(trans), labels, axis=0)
        near, far = (self.l_trans, self.r_trans) if forward else (self.r_trans, self.l_trans)
        near, far = ops.cast(near, "float32"), ops.cast(far, "float32")
        return ops.einsum("bnd,kd->bnk", ops.take(near, labels, axis=0), far)

    def _directional_logits(self, y_true, y_pred, mask):
        """Forward and backward logits [b, n, L] in compacted order, and the helper."""
        mask = _resolve_mask(y_pred, mask)
        y_pred = ops.cast(y_pred, "float32")
        labels = _sparse_labels(y_true, y_pred)
        compact = _Compacted(mask, ops.shape(y_pred)[1])
        labels, nodes = compact.forward(labels), compact.forward(y_pred)
        prefix = compact.prefix
        if prefix is None:
            prefix = ops.ones(ops.shape(labels), "bool")
        history = self._history(labels, forward=True)
        history = ops.concatenate([nodes[:, :1], history[:, :-1]], axis=1)
        future = self._history(labels, forward=False)
        # the last real token (next one is padding or the end) has no future label
        has_next = ops.concatenate([prefix[:, 1:], ops.zeros_like(prefix[:, :1])], axis=1)
        future = ops.concatenate([future[:, 1:], nodes[:, -1:]], axis=1)
        future = ops.where(has_next[..., None], future, nodes)
        return (nodes + history) / 2, (nodes + future) / 2, labels, prefix, compact

    def sparse_loss(self, y_true, y_pred, mask=None):
        """Mean over real tokens of the forward and backward cross-entropies (scalar)."""
        forward, backward, labels, prefix, _ = self._directional_logits(y_true, y_pred, mask)
        losses = [
            ops.logsumexp(z, axis=-1) - ops.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
            for z in (forward, backward)
        ]
        weights = ops.cast(prefix, "float32")
        per_direction = [ops.divide_no_nan(ops.sum(l * weights), ops.sum(weights)) for l in losses]
        return (per_direction[0] + per_direction[1]) / 2

    def _weights_readable(self):
        """False while Keras' JAX trainer runs metrics: it purges the weights' values
        then (`fit` and `evaluate`), so no metric can read them."""
        try:
            ops.convert_to_tensor(self.weights[0])
        except TypeError:
            return False
        return True

    def sparse_accuracy(self, y_true, y_pred, mask=None):
        """Per-token accuracy with the true neighbouring labels, both directions averaged.

        Where the weights cannot be read (metrics in `fit`/`evaluate` on JAX) it
        falls back, with a warning, to the argmax of the emissions alone.
        """
        if not self._weights_readable():
            if not getattr(self, "_warned_unreadable", False):
                self._warned_unreadable = True
                warnings.warn(
                    f"{self.name}: Keras' JAX trainer hides layer weights from metrics, so "
                    "sparse_accuracy reports the argmax of the emissions alone here; call it "
                    "directly (e.g. on model(x)) for the teacher-forced MEMM accuracy.",
                    stacklevel=2,
                )
            labels = _sparse_labels(y_true, y_pred)
            hits = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels)
            return _token_reduce(ops.cast(hits, "float32"), mask)
        forward, backward, labels, _, compact = self._directional_logits(y_true, y_pred, mask)
        hits = [
            ops.cast(ops.equal(ops.cast(ops.argmax(z, axis=-1), "int32"), labels), "float32")
            for z in (forward, backward)
        ]
        return _token_reduce(compact.backward((hits[0] + hits[1]) / 2), mask)

    def get_config(self):
        config = super().get_config()
        config["hidden_dim"] = self.hidden_dim
        return config
