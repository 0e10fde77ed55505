"""The pretraining loss and accuracy: masked-token cross-entropy over labels != -100.

The objectives label only the tokens that take a loss (masked tokens for
MLM, next-token targets for LM and UniLM) and put ``-100`` elsewhere.
`MaskedLMLoss` is the sparse categorical cross-entropy from logits
``[batch, length, vocab]`` averaged over the labelled tokens of the batch
(0 when there are none), `MaskedAccuracy` the share of labelled tokens whose
argmax is right, accumulated over the epoch. Both compute in float32, so
``mixed_bfloat16`` logits neither overflow nor lose precision in the sum,
and accept labels of any integer dtype. They replace bert4keras' identity
losses on ``Lambda`` layers: pass them to ``model.compile``.

>>> import numpy as np
>>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]], "float32"))
>>> labels = np.array([[0, -100]])              # only the first token counts
>>> round(float(MaskedLMLoss()(labels, logits)), 4)  # -log(0.5)
0.6931
>>> accuracy = MaskedAccuracy()
>>> accuracy.update_state(labels, logits)
>>> float(accuracy.result())
1.0
"""

import keras
from keras import ops

from kerasformers.pretraining.objectives import IGNORE
from kerasformers.saving import register


def _labels_and_valid(y_true, y_pred):
    """Int32 labels shaped like `y_pred` without its last axis, and where they count."""
    labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
    valid = ops.not_equal(labels, IGNORE)
    return ops.where(valid, labels, 0), valid


def _token_weights(valid, sample_weight):
    """Float32 weight per token: 0 where ignored, else the (broadcast) sample weight."""
    weights = ops.cast(valid, "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        rank = len(weights.shape)
        while len(sample_weight.shape) < rank:
            sample_weight = ops.expand_dims(sample_weight, -1)
        weights = weights * sample_weight
    return weights


@register
class MaskedLMLoss(keras.losses.Loss):
    """Cross-entropy from logits, mean over the tokens whose label is not -100.

    ``loss = sum_t w_t * (logsumexp(logits_t) - logits_t[label_t]) / sum_t w_t``
    with ``w_t = 1`` on labelled tokens (times `sample_weight` when given, per
    example ``[batch]`` or per token ``[batch, length]``) and 0 elsewhere; a
    batch without labelled tokens gives 0, not NaN.

    >>> import numpy as np
    >>> float(MaskedLMLoss()(np.full((2, 3), -100), np.zeros((2, 3, 5), "float32")))
    0.0
    """

    def __init__(self, name="masked_lm_loss"):
        # no `reduction`: the mean over labelled tokens is this loss's own reduction
        super().__init__(name=name)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ would cast the labels to float and average per
        # element; this loss is already the mean over the labelled tokens.
        with keras.name_scope(self.name):
            logits = ops.cast(y_pred, "float32")
            labels, valid = _labels_and_valid(y_true, logits)
            picked = ops.take_along_axis(logits, ops.expand_dims(labels, -1), axis=-1)
            losses = ops.logsumexp(logits, axis=-1) - ops.squeeze(picked, -1)
            weights = _token_weights(valid, sample_weight)
            return ops.divide_no_nan(ops.sum(losses * weights), ops.sum(weights))

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def get_config(self):
        return {"name": self.name}


@register
class MaskedAccuracy(keras.metrics.Metric):
    """Share of labelled tokens (label != -100) whose argmax logit is the label.

    Correct and counted tokens are summed over every batch since the last
    ``reset_state()`` (a Keras epoch), so the result is per token, not a mean
    of batch means; 0 before any labelled token.

    >>> import numpy as np
    >>> metric = MaskedAccuracy()
    >>> metric.update_state(np.array([[0, 2, -100]]), np.eye(3, dtype="float32")[None])
    >>> float(metric.result())          # argmax 0, 1, 2: 1 right of the 2 labelled
    0.5
    """

    def __init__(self, name="masked_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.correct = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="correct"
        )
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        logits = ops.cast(y_pred, "float32")
        labels, valid = _labels_and_valid(y_true, logits)
        hits = ops.cast(
            ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), "float32"
        )
        weights = _token_weights(valid, sample_weight)
        self.correct.assign_add(ops.sum(hits * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
