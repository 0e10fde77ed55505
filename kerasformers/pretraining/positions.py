"""The MLM head only where a loss is taken: labelled positions in the batch, a model that gathers.

bert4keras (and transformers' ``BertForMaskedLM``) compute the MLM head -- a
dense layer, a LayerNorm and the ``[hidden, vocab]`` product -- at every
position, though MLM labels only ~15% of them: with a 21k vocabulary the head
is most of the step. Google's BERT gathers the masked positions first
(``masked_lm_positions``); this module does the same, without changing the
loss (the cross-entropy over labelled tokens is the same sum, so training is
the same up to float rounding):

* `label_positions(labels)`: ``[batch, length]`` labels (``-100`` where no loss)
  -> ``(positions, labels)`` of shape ``[batch, count]``: each row's labelled
  positions in order, padded with position 0 and label ``-100``. ``count`` is
  the batch's largest number of labels rounded up to a multiple of `multiple`
  (at most the length: a handful of shapes, so XLA compiles a handful of steps), or a fixed
  `count` -- then a row with more labels is an error, never cut.
* `masked_positions_model(model)`: the same weights as an MLM model with one
  more input, the positions, and logits ``[batch, count, vocab]`` at them.
  `PretrainingData(..., masked_positions=True)` yields the matching batches.

>>> import numpy as np
>>> positions, labels = label_positions(np.array([[-100, 7, -100, 9], [5, -100, -100, -100]]),
...                                     multiple=4)
>>> positions.tolist(), labels.tolist()
([[1, 3, 0, 0], [0, 0, 0, 0]], [[7, 9, -100, -100], [5, -100, -100, -100]])
"""

import numpy as np

from kerasformers.pretraining.objectives import IGNORE

POSITIONS_INPUT = "Input-Masked-Positions"


def label_positions(labels, count=None, multiple=8):
    """(positions, labels), int32 ``[batch, count]``, of the labelled tokens of each row.

    count: the width; None picks the batch's largest number of labels per row
        rounded up to a multiple of `multiple` (at least `multiple`, at most the
        length).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [batch, length], got shape {labels.shape}")
    valid = labels != IGNORE
    per_row = valid.sum(axis=1)
    most = int(per_row.max()) if per_row.size else 0
    if count is None:
        multiple = int(multiple)
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        count = min(max(multiple, -(-most // multiple) * multiple), labels.shape[1])
    elif most > int(count):
        row = int(per_row.argmax())
        raise ValueError(
            f"row {row} of the batch has {most} labelled tokens, more than "
            f"masked_positions={int(count)}: raise it (labels are never dropped)"
        )
    count = int(count)
    # stable sort puts each row's labelled positions first, in order
    order = np.argsort(~valid, axis=1, kind="stable")[:, :count]
    keep = np.take_along_axis(valid, order, axis=1)
    if count > order.shape[1]:  # wider than the rows: pad
        pad = ((0, 0), (0, count - order.shape[1]))
        order, keep = np.pad(order, pad), np.pad(keep, pad)
    positions = np.where(keep, order, 0).astype(np.int32)
    gathered = np.where(keep, np.take_along_axis(labels, order, axis=1), IGNORE)
    return positions, gathered.astype(np.int32)


def takes_positions(model):
    """Whether a Keras model has the positions input of `masked_positions_model`."""
    return any(
        getattr(t, "name", "").split(":")[0].endswith(POSITIONS_INPUT)
        for t in getattr(model, "inputs", None) or ()
    )


def masked_positions_model(model):
    """An MLM model that computes its head only at given positions; the same weights.

    model: built by ``build_transformer_model(..., with_mlm=...)`` (a BERT-family
        model: bert, roberta, albert, nezha, electra, roformer, ...; a Keras model
        or the `Transformer` of ``return_keras_model=False``).

    Returns a Keras model with inputs ``[*model.inputs, positions]`` (positions
    int32 ``[batch, count]``) and the head's output at those positions,
    ``[batch, count, vocab]``. Its layers are `model`'s own: training it trains
    `model`, which then saves, exports and predicts as before.

    >>> import numpy as np
    >>> from kerasformers import build_transformer_model
    >>> bert = build_transformer_model(None, model="bert", vocab_size=30, hidden_size=16,
    ...                                num_hidden_layers=1, num_attention_heads=2,
    ...                                intermediate_size=32, with_mlm="linear")
    >>> gathered = masked_positions_model(bert)
    >>> ids = np.array([[2, 5, 6, 7, 3]]); segments = np.zeros_like(ids)
    >>> full = np.asarray(bert.predict([ids, segments], verbose=0))
    >>> some = np.asarray(gathered.predict([ids, segments, np.array([[3, 1]])], verbose=0))
    >>> some.shape, bool(np.allclose(some[0], full[0, [3, 1]], atol=1e-5))
    ((1, 2, 30), True)
    """
    import keras

    from kerasformers.layers.core import TokenGather

    transformer = getattr(model, "_kerasformers_transformer", model)
    if not hasattr(transformer, "apply_mlm_head") or not getattr(transformer, "with_mlm", False):
        raise ValueError(
            "masked_positions_model needs a BERT-family model built with with_mlm=... "
            f"(got {type(transformer).__name__})"
        )
    keras_model = transformer.model
    head_input = keras_model.get_layer(transformer.prefixed("MLM-Dense")).input
    positions = keras.Input(
        shape=(None,), dtype="int32", name=transformer.prefixed(POSITIONS_INPUT)
    )
    gathered = transformer.apply(
        inputs=[head_input, positions], layer=TokenGather, name="MLM-Gather"
    )
    logits = transformer.apply_mlm_head(gathered)
    return keras.Model(
        [*keras_model.inputs, positions], logits, name=f"{keras_model.name}_masked_positions"
    )
