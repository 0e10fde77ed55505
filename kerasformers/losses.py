"""Losses and metrics for tagging, span extraction, similarity and seq2seq.

Every function uses `keras.ops` only and does its maths in float32, so
float16/bfloat16 predictions (mixed precision) neither overflow nor lose the
mask. All of them can be passed to `model.compile(loss=..., metrics=[...])`.

Masks. Token-level functions (`sequence_masked_*`) return one value per token
unless you pass `mask=`: inside `compile`, Keras weights those values with the
Keras mask of `y_pred` itself, so padding does not count. With an explicit
`mask=` ([batch, seq], True / 1 = real token) they return the masked mean
directly. Scores masked with -inf or a large negative (GlobalPointer) are
treated as "not a candidate" by the multi-label losses.

>>> import numpy as np
>>> from kerasformers.losses import multilabel_categorical_crossentropy
>>> y_true = np.array([[1.0, 0.0, 1.0]])
>>> y_pred = np.array([[20.0, -20.0, 20.0]])   # both positives > 0, negative < 0
>>> float(multilabel_categorical_crossentropy(y_true, y_pred)[0]) < 1e-6
True
>>> float(multilabel_categorical_crossentropy(y_true, -y_pred)[0]) > 20
True
"""

import keras
from keras import ops

from kerasformers.saving import register

_NEG = -1e30  # "minus infinity" that never turns into inf - inf = nan


def get_keras_mask(x):
    """The Keras mask attached to tensor `x` by the layer that produced it, or None.

    Keras 3 keeps masks as a tensor attribute (for JAX tracers, in a side table),
    with no public getter; this reads it the way Keras' own losses do.
    """
    try:
        from keras.src.backend.common.masking import get_keras_mask as _get
    except ImportError:  # pragma: no cover - a future Keras layout
        return getattr(x, "_keras_mask", None)
    return _get(x)


def masked_mean(values, mask=None):
    """Mean of `values` over the positions where `mask` is true (all if None); 0 if none."""
    values = ops.cast(values, "float32")
    if mask is None:
        return ops.mean(values)
    mask = ops.cast(ops.cast(mask, "bool"), "float32")
    mask = ops.broadcast_to(
        ops.reshape(mask, ops.shape(mask) + (1,) * (len(values.shape) - len(mask.shape))),
        ops.shape(values),
    )
    return ops.divide_no_nan(ops.sum(values * mask), ops.sum(mask))


def _token_reduce(values, mask):
    """Per-token values as Keras expects them, or their masked mean for an explicit mask."""
    return values if mask is None else masked_mean(values, mask)


def _sparse_labels(y_true, y_pred):
    """Integer labels shaped like y_pred without its last axis ([..., 1] is squeezed)."""
    return ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])


def _logsumexp_with_zero(x):
    """log(1 + sum(exp(x), -1)): the extra 0 logit is the multi-label threshold."""
    zeros = ops.zeros_like(x[..., :1])
    return ops.logsumexp(ops.concatenate([x, zeros], axis=-1), axis=-1)


@register
def multilabel_categorical_crossentropy(y_true, y_pred):
    """Softmax cross-entropy generalised to several positive classes (Su, 2020).

    loss = log(1 + sum_neg exp(s_i)) + log(1 + sum_pos exp(-s_j)): no sigmoid,
    the decision threshold is 0 (predict the classes with s > 0). `y_true` may
    hold soft labels in [0, 1] (weights log(1 - y) and log(y) enter the two
    sums). Logits equal to -inf are ignored. Reduces the last axis.

    >>> import numpy as np
    >>> y = multilabel_categorical_crossentropy(np.array([[0., 1.]]), np.array([[-1e4, 1e4]]))
    >>> float(y[0])
    0.0
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    valid = ops.greater(y_pred, float("-inf"))
    # where() first: -(-inf) would meet log(0) = -inf as inf - inf = nan
    y_neg = ops.where(valid, y_pred, float("-inf")) + ops.log(1.0 - y_true)
    y_pos = ops.where(valid, -y_pred, float("-inf")) + ops.log(y_true)
    return _logsumexp_with_zero(y_neg) + _logsumexp_with_zero(y_pos)


@register
def sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero=False):
    """`multilabel_categorical_crossentropy` with positives given as class indices.

    y_true: int [..., k] indices of the positive classes of y_pred [..., num_classes]
    (each index at most once). With `mask_zero=True`, index 0 pads y_true and
    class 0 takes no part in the loss (as in bert4keras, where GPLinker flattens
    spans so that index 0 is the never-used [CLS]-[CLS] span). The negatives'
    term is a logsumexp over the classes not listed, found by scattering a
    0/1 mask of y_pred's size (bert4keras subtracted the positives from the
    total instead, which cancels catastrophically once logits are large).

    >>> import numpy as np
    >>> y_pred = np.array([[3.0, -2.0, 1.0, -5.0]])
    >>> sparse = sparse_multilabel_categorical_crossentropy(np.array([[0, 2]]), y_pred)
    >>> dense = multilabel_categorical_crossentropy(np.array([[1., 0., 1., 0.]]), y_pred)
    >>> bool(abs(float(sparse[0]) - float(dense[0])) < 1e-5)
    True
    """
    y_pred = ops.cast(y_pred, "float32")
    batch_shape = ops.shape(y_pred)[:-1]
    num_classes, k = ops.shape(y_pred)[-1], ops.shape(y_true)[-1]
    scores = ops.reshape(y_pred, (-1, num_classes))
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1, k))
    is_pos = labels != 0 if mask_zero else ops.ones_like(labels, dtype="bool")
    rows = ops.broadcast_to(
        ops.arange(ops.shape(labels)[0], dtype="int32")[:, None], ops.shape(labels)
    )
    positive = ops.scatter_update(
        ops.zeros_like(scores),
        ops.stack([ops.reshape(rows, (-1,)), ops.reshape(labels, (-1,))], axis=1),
        ops.reshape(ops.cast(is_pos, "float32"), (-1,)),
    )
    excluded = positive > 0
    if mask_zero:
        excluded = ops.logical_or(excluded, (ops.arange(num_classes) == 0)[None])
    neg_loss = _logsumexp_with_zero(ops.where(excluded, _NEG, scores))
    y_pos = ops.take_along_axis(scores, labels, axis=-1)
    pos_loss = _logsumexp_with_zero(ops.where(is_pos, -y_pos, _NEG))
    return ops.reshape(neg_loss + pos_loss, batch_shape)


@register
def global_pointer_crossentropy(y_true, y_pred):
    """Span loss for GlobalPointer scores: multi-label CE over the n*n spans of each head.

    y_true, y_pred: [batch, heads, n, n] (y_true 0/1). Returns [batch]: the mean
    over heads, so Keras' batch mean equals bert4keras' mean over batch*heads.
    Masked spans (padding, lower triangle) carry a large negative score and
    a 0 label, so they add nothing.
    """
    shape = ops.shape(y_pred)
    flat = (shape[0], shape[1], -1)
    loss = multilabel_categorical_crossentropy(ops.reshape(y_true, flat), ops.reshape(y_pred, flat))
    return ops.mean(loss, axis=1)


@register
def sparse_global_pointer_crossentropy(y_true, y_pred, mask_zero=True, head_reduction="sum"):
    """GPLinker's sparse span loss: y_true [batch, heads, k, 2] holds (start, end) pairs.

    Spans are flattened to start * n + end; with `mask_zero` the pair (0, 0)
    pads y_true. Returns [batch]: the loss of each head summed over heads
    (`head_reduction="sum"`, the default), as GPLinker did
    (`task_relation_extraction_gplinker.py`: `K.mean(K.sum(loss, axis=1))`,
    with Keras' mean over the batch), so the entity output (2 heads) and the
    head / tail outputs (one head per relation) weigh what they weighed there.
    `head_reduction="mean"` averages over heads instead (this function's
    earlier default; it divides the loss, and its gradient, by the head count).
    Pass it to `compile` with `functools.partial` for the non-default.

    >>> import numpy as np
    >>> y_pred = np.full((1, 2, 3, 3), -5.0)
    >>> y_pred[0, :, 1, 2] = 5.0                   # each head scores span (1, 2)
    >>> spans = np.array([[[[1, 2]], [[1, 2]]]])   # and it is each head's label
    >>> summed = sparse_global_pointer_crossentropy(spans, y_pred)
    >>> mean = sparse_global_pointer_crossentropy(spans, y_pred, head_reduction="mean")
    >>> bool(abs(float(summed[0]) - 2 * float(mean[0])) < 1e-6)
    True
    """
    if head_reduction not in ("sum", "mean"):
        raise ValueError(f"head_reduction must be 'sum' or 'mean', got {head_reduction!r}")
    shape = ops.shape(y_pred)
    y_true = ops.cast(y_true, "int32")
    y_true = y_true[..., 0] * shape[2] + y_true[..., 1]
    y_pred = ops.reshape(y_pred, (shape[0], shape[1], -1))
    loss = sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero=mask_zero)
    return ops.sum(loss, axis=1) if head_reduction == "sum" else ops.mean(loss, axis=1)


@register
def global_pointer_f1(y_true, y_pred):
    """Batch F1 of the spans predicted with score > 0: 2|T∩P| / (|T| + |P|) (0 if both empty)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(ops.greater(ops.cast(y_pred, "float32"), 0.0), "float32")
    return ops.divide_no_nan(2.0 * ops.sum(y_true * y_pred), ops.sum(y_true + y_pred))


@register
def am_softmax_loss(y_true, y_pred, margin=0.35, scale=30.0):
    """Additive-margin softmax loss (AM-Softmax, Wang et al. 2018) on cosine logits.

    y_pred: cosine similarities [..., num_classes] (entries set to -inf or a large
    negative, e.g. a sentence's similarity with itself, are excluded);
    y_true: class ids [...] or [..., 1], or one-hot / soft targets shaped like
    y_pred. loss = CE(softmax(scale * (cos - margin * onehot)), onehot). Returns [...].

    >>> import numpy as np
    >>> cos = np.array([[0.9, 0.1, -0.2]])
    >>> loss = am_softmax_loss(np.array([0]), cos, margin=0.0, scale=1.0)
    >>> expected = -np.log(np.exp(0.9) / np.exp(cos).sum())
    >>> bool(abs(float(loss[0]) - expected) < 1e-5)
    True
    """
    y_pred = ops.cast(y_pred, "float32")
    sparse = len(y_true.shape) < len(y_pred.shape) or (
        y_true.shape[-1] == 1 and y_pred.shape[-1] != 1
    )
    if sparse:
        y_true = ops.one_hot(_sparse_labels(y_true, y_pred), ops.shape(y_pred)[-1])
    y_true = ops.cast(y_true, "float32")
    logits = scale * (y_pred - margin * y_true)
    # where(): 0 * -inf at excluded entries would be nan
    target = ops.sum(ops.where(y_true > 0, y_true * logits, 0.0), axis=-1)
    return ops.logsumexp(logits, axis=-1) * ops.sum(y_true, axis=-1) - target


@register
def sequence_masked_crossentropy(y_true, y_pred, mask=None, from_logits=False):
    """Token cross-entropy for seq2seq / LM heads: y_true ids [b, n], y_pred [b, n, vocab].

    y_pred holds probabilities (or logits with `from_logits=True`). Returns the
    per-token loss [b, n] (Keras applies y_pred's mask), or with an explicit
    `mask` [b, n] the mean over masked-in tokens. For UniLM-style training
    shift first: `y_true[:, 1:]`, `y_pred[:, :-1]`, `mask=segment_ids[:, 1:]`.

    >>> import numpy as np
    >>> p = np.array([[[0.5, 0.5], [0.9, 0.1]]])
    >>> loss = sequence_masked_crossentropy(np.array([[0, 1]]), p, mask=np.array([[1, 0]]))
    >>> round(float(loss), 4)   # only the first token counts: -log 0.5
    0.6931
    """
    y_pred = ops.cast(y_pred, "float32")
    labels = _sparse_labels(y_true, y_pred)[..., None]
    if from_logits:
        logp = ops.take_along_axis(y_pred, labels, axis=-1)[..., 0] - ops.logsumexp(y_pred, -1)
    else:
        p = ops.take_along_axis(y_pred, labels, axis=-1)[..., 0]
        p = ops.divide_no_nan(p, ops.sum(y_pred, axis=-1))
        eps = keras.config.epsilon()
        logp = ops.log(ops.clip(p, eps, 1.0 - eps))
    return _token_reduce(-logp, mask)


@register
def sequence_masked_accuracy(y_true, y_pred, mask=None):
    """Token accuracy of argmax(y_pred) vs ids y_true (masks as `sequence_masked_crossentropy`)."""
    labels = _sparse_labels(y_true, y_pred)
    hits = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels), "float32")
    return _token_reduce(hits, mask)
