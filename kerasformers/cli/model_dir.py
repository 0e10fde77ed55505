"""Model directories as users have them, for the command line.

Two kinds are recognised by their files:

* HF: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, sharded
  ``*.index.json``), a tokenizer (``vocab.txt``, ``tokenizer.json``, ...);
* Google: ``bert_config.json`` (or another ``*config.json``) + a TF checkpoint
  (``bert_model.ckpt.index`` / ``.data-*``) + ``vocab.txt``.

The model key comes from the config's ``model_type`` (a Google config has none:
BERT) unless ``--model`` names it. Heads (MLM, pooler, NSP, discriminator) are
built when the checkpoint holds their weights, so a conversion keeps them.

>>> import tempfile
>>> open_model_dir(tempfile.mkdtemp())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
kerasformers.cli.model_dir.CLIError: PATH ...: no config file (config.json / bert_config.json) ...
"""

import contextlib
import glob
import os
from dataclasses import dataclass

from kerasformers import config as config_lib

#: layer-name prefix of a head's weights -> the builder argument that adds the head
HEAD_LAYERS = {
    "Pooler-": "with_pool",
    "NSP-": "with_nsp",
    "MLM-": "with_mlm",
    "Discriminator-": "with_discriminator",
}


class CLIError(Exception):
    """Bad input on the command line: printed as `kerasformers CMD: error: ...`, exit code 2."""


@dataclass
class ModelDir:
    """What a model directory holds: its kind, config, weights and model key."""

    path: str
    kind: str  # "hf" or "google"
    config_path: str
    checkpoint: str  # the directory (HF) or the TF checkpoint prefix (Google)
    config: dict
    model: str

    @property
    def vocab_path(self):
        path = os.path.join(self.path, "vocab.txt")
        return path if os.path.isfile(path) else None


def _google_prefix(path):
    found = sorted(glob.glob(os.path.join(glob.escape(path), "*.ckpt*.index")))
    return found[0][: -len(".index")] if found else None


def open_model_dir(path, model=None):
    """A `ModelDir` for `path`; CLIError naming the path and what is missing otherwise."""
    if not os.path.exists(path):
        raise CLIError(f"PATH {path!r} does not exist")
    if not os.path.isdir(path):
        raise CLIError(
            f"PATH {path!r} is not a directory (give the model directory: config.json + "
            "model.safetensors, or bert_config.json + bert_model.ckpt.*)"
        )
    config_path = config_lib.find_config(path)
    if config_path is None:
        raise CLIError(
            f"PATH {path!r}: no config file (config.json / bert_config.json) in this directory"
        )
    try:
        raw = config_lib.load_json(config_path)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not isinstance(raw, dict):
        raise CLIError(f"{config_path}: the config must be a JSON object")
    hf_weights = [
        name
        for name in (
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
        )
        if os.path.isfile(os.path.join(path, name))
    ]
    prefix = _google_prefix(path)
    if hf_weights:
        kind, checkpoint = "hf", path
    elif prefix is not None:
        kind, checkpoint = "google", prefix
    else:
        raise CLIError(
            f"PATH {path!r}: no weights (model.safetensors, pytorch_model.bin or "
            "bert_model.ckpt.index) in this directory"
        )
    if model is not None:
        model = model.lower()
    else:
        try:
            model = config_lib.detect_model(raw) or "bert"
        except ValueError as e:
            raise CLIError(f"{config_path}: {e}") from None
    return ModelDir(path, kind, config_path, checkpoint, raw, model)


def model_class(model_dir):
    from kerasformers.models import MODELS

    if model_dir.model not in MODELS:
        raise CLIError(
            f"--model {model_dir.model!r} is not known; choose one of {', '.join(sorted(MODELS))}"
        )
    return MODELS[model_dir.model]


def checkpoint_heads(model_dir, source=None):
    """{builder argument: True} for each head whose weights the checkpoint holds."""
    from kerasformers.checkpoints import loader
    from kerasformers.checkpoints.sources import open_checkpoint

    source = source or open_checkpoint(model_dir.checkpoint)
    with structure_only():
        base = build(model_dir, load=False)
    column = loader.naming_column(source.naming)
    built = base.variables()
    accepted = type(base).accepted_arguments()
    heads = {}
    for row in base.weight_table():
        key = loader.as_key(row[column])
        if key is None or row[0] in built:
            continue
        layer = row[0][len(base.prefix) :]
        for start, argument in HEAD_LAYERS.items():
            if (
                layer.startswith(start)
                and argument in accepted
                and loader.resolve(source, key.name, base.hf_prefixes)
            ):
                heads[argument] = True
    return heads


@contextlib.contextmanager
def structure_only():
    """Models built inside get variables without values (no random initialisation: its cost
    is most of building a real model); for names, shapes, parameter counts and loading."""
    from kerasformers.checkpoints import deferred

    created = []
    try:
        with deferred.deferred_build() as created:
            yield
    finally:
        deferred.forget(created)


def build(model_dir, load=True, application="encoder", **kwargs):
    """The Transformer object for `model_dir` (weights loaded unless load=False)."""
    from kerasformers.models import build_transformer_model

    model_class(model_dir)
    return build_transformer_model(
        model_dir.config_path,
        model_dir.checkpoint if load else None,
        model=model_dir.model,
        application=application,
        return_keras_model=False,
        **kwargs,
    )


def tokenizer(model_dir):
    """The tokenizer of `model_dir` (vocab.txt, tokenizer.json, BPE or SentencePiece files)."""
    from kerasformers.tokenizers import from_pretrained

    try:
        return from_pretrained(model_dir.path)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise CLIError(
            f"PATH {model_dir.path!r}: no usable tokenizer files (vocab.txt, tokenizer.json, "
            f"vocab.json + merges.txt, encoder.json + vocab.bpe or *.model): {e}"
        ) from None


def model_inputs(transformer, token_ids, segment_ids):
    """The model's inputs: token ids, plus segment ids if the model takes them."""
    if len(transformer.model.inputs) == 1:
        return [token_ids]
    return [token_ids, segment_ids]


def add_model_arguments(parser, model_option=True):
    """PATH and --model, shared by every command that reads a model directory."""
    parser.add_argument(
        "path",
        metavar="PATH",
        help="model directory: HF (config.json + model.safetensors/pytorch_model.bin) "
        "or Google (bert_config.json + bert_model.ckpt.*)",
    )
    if not model_option:
        return
    parser.add_argument(
        "--model",
        help="model key when the config does not say (a Google bert_config.json means "
        "bert): bert, roberta, albert, nezha, electra, roformer, roformer_v2, gpt, gpt2, "
        "gpt2_ml, ...",
    )


def load_report(transformer, model_dir):
    """Load `model_dir`'s checkpoint into `transformer`, returning the LoadReport even
    when some rows do not fit (those are skipped; nothing raises), warnings silenced."""
    import warnings

    from kerasformers.checkpoints import loader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loader.load_weights(
            transformer.variables(),
            transformer.weight_table(),
            model_dir.checkpoint,
            prefixes=transformer.hf_prefixes,
            vocab_fn=transformer.load_embeddings,
            vocab_paths=transformer.vocab_paths(),
            ignore_invalid_weights=True,
        )
