"""Model classes and `build_transformer_model`, the single entry point.

>>> from kerasformers import build_transformer_model
>>> model = build_transformer_model(None, model="bert", application="unilm", vocab_size=50,
...                                 hidden_size=16, num_hidden_layers=1,
...                                 num_attention_heads=2, intermediate_size=32)
>>> "Attention-UniLM-Mask" in [l.name for l in model.layers]
True
"""

import os

from kerasformers import config as config_lib
from kerasformers.checkpoints import deferred
from kerasformers.models.albert import ALBERT, ALBERT_Unshared
from kerasformers.models.base import Transformer
from kerasformers.models.bert import BERT
from kerasformers.models.electra import ELECTRA
from kerasformers.models.gau_alpha import GAU_alpha
from kerasformers.models.gpt import GPT, GPT2, GPT2_ML
from kerasformers.models.nezha import NEZHA
from kerasformers.models.outputs import layer_outputs
from kerasformers.models.roberta import RoBERTa
from kerasformers.models.roformer import RoFormer, RoFormerV2
from kerasformers.models.t5 import T5, T5_Decoder, T5_Encoder

MODELS = {
    "bert": BERT,
    "roberta": RoBERTa,
    "albert": ALBERT,
    "albert_unshared": ALBERT_Unshared,
    "nezha": NEZHA,
    "roformer": RoFormer,
    "roformer_v2": RoFormerV2,
    "gau_alpha": GAU_alpha,
    "electra": ELECTRA,
    "gpt": GPT,
    "gpt2": GPT2,
    "gpt2_ml": GPT2_ML,
    **{
        f"{version}{part}": cls
        for version in ("t5", "t5.1.0", "t5.1.1", "mt5.1.1")
        for part, cls in (("", T5), ("_encoder", T5_Encoder), ("_decoder", T5_Decoder))
    },
}


def _with_attention_mode(BaseModel, mode, suffix):
    """A subclass of BaseModel with another attention mask, and the MLM head on
    by default (the GPT family's output already is its LM head)."""

    class Extended(BaseModel):
        attention_mode = mode

        def __init__(self, *args, **kwargs):
            if not getattr(BaseModel, "tied_lm_output", False):
                kwargs.setdefault("with_mlm", True)
            super().__init__(*args, **kwargs)

    Extended.__name__ = Extended.__qualname__ = f"{BaseModel.__name__}_{suffix}"
    return Extended


def extend_with_language_model(BaseModel):
    """Causal (lower-triangular) attention + MLM head: BERT as a language model."""
    return _with_attention_mode(BaseModel, "lm", "LM")


def extend_with_unified_language_model(BaseModel):
    """UniLM seq2seq mask from segment ids + MLM head (source sees source,
    target sees source and earlier target)."""
    return _with_attention_mode(BaseModel, "unilm", "UniLM")


def _resolve_paths(config_path, checkpoint_path):
    """Given an HF/Google model directory as checkpoint_path, find its config."""
    if (
        config_path is None
        and checkpoint_path is not None
        and not isinstance(checkpoint_path, dict)
    ):
        folder = (
            checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(checkpoint_path)
        )
        if folder and os.path.isdir(folder):
            config_path = config_lib.find_config(folder)
    return config_path, checkpoint_path


#: bert4keras spellings of arguments, accepted as keywords (our name wins if both given)
KEYWORD_ALIASES = {
    "max_position_embeddings": "max_position",
    "hidden_dropout_prob": "dropout_rate",
    "attention_probs_dropout_prob": "attention_dropout_rate",
    "type_vocab_size": "segment_vocab_size",
}


def build_transformer_model(
    config_path=None,
    checkpoint_path=None,
    model=None,
    application="encoder",
    return_keras_model=True,
    **kwargs,
):
    """Build a Transformer from a config, optionally loading a checkpoint.

    config_path: Google `bert_config.json`, HF `config.json`, a directory, a dict,
        or None (everything from kwargs). Given an HF directory as checkpoint_path
        and no config_path, the config (and, if `model` is None, the model key)
        come from that directory. A config file's `model_type` picks the model
        (an unknown one is an error unless `model` is given; without one, BERT).
        Keys of a config file are used where they name a constructor argument
        of the model (`hidden_size`, `num_attention_heads`, `layer_norm_eps`,
        `pad_token_id`, ...) or have a known translation (HF/Google:
        max_position_embeddings, hidden_dropout_prob,
        attention_probs_dropout_prob, type_vocab_size; GPT-2's n_embd, n_layer,
        n_head, n_inner, n_positions, activation_function, layer_norm_epsilon,
        resid_pdrop, attn_pdrop; T5's d_model, d_ff, d_kv, num_layers,
        num_heads, feed_forward_proj, dropout_rate, layer_norm_epsilon); every
        other key (initializer_range, architectures, transformers_version, ...)
        is ignored. Used values are checked before anything is built.
    checkpoint_path: TF checkpoint prefix, `.safetensors`, `.bin`, a directory or a
        dict of arrays; weights are matched by name.
    model: 'bert' (default), 'roberta', 'albert', 'albert_unshared', 'nezha',
        'electra', 'roformer', 'roformer_v2', 'gau_alpha', 'gpt', 'gpt2', 'gpt2_ml' (causal LMs;
        `final_activation` 'softmax' or 'linear'), or a Transformer subclass.
        T5: 't5' / 't5.1.0', 't5.1.1', 'mt5.1.1' (the joint model; `.encoder`
        and `.decoder` on the object) and each with '_encoder' / '_decoder'.
    application: 'encoder', 'lm' (causal + MLM) or 'unilm' (seq2seq mask + MLM).
    kwargs override the config (heads: with_pool, with_nsp, with_mlm,
        with_discriminator; keep_tokens, compound_tokens, dropout_rate, ...).
        Unlike config-file keys, every keyword must be an argument of the
        model's constructor: anything else is a TypeError naming it and the
        closest valid name (bert4keras' attention_caches and
        autoresize_weights say "not supported yet").
        layer_norm_cond (a Keras tensor, e.g. an Embedding of a class-label
        Input), layer_norm_cond_hidden_size, layer_norm_cond_hidden_act and
        additional_input_layers (Inputs appended to the model's inputs): every
        LayerNorm conditional on it, as bert4keras (see `Transformer`).
        bert4keras' spellings max_position_embeddings, hidden_dropout_prob,
        attention_probs_dropout_prob and type_vocab_size are accepted.
        dtype: a Keras dtype policy for every layer, e.g. 'mixed_bfloat16'.
        remat=True: gradient checkpointing (bert4keras' RECOMPUTE=1). Every
        attention and feed-forward layer recomputes its inner activations in
        the backward pass instead of storing them (less memory, about one more
        forward pass of compute; same gradients). Stored in those layers'
        configs, so `.keras` files and `get_config` keep it.
    Returns the Keras model, or the Transformer object (`.model`,
    `.load_weights_from_checkpoint`, `.save_weights_as_checkpoint`) when
    return_keras_model=False.

    >>> build_transformer_model(None, vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                         num_attention_heads=2, intermediate_size=32,
    ...                         with_mlmm=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: build_transformer_model() got an unexpected keyword argument 'with_mlmm' (did ...
    """
    config_path, checkpoint_path = _resolve_paths(config_path, checkpoint_path)
    file_configs = {}
    if config_path is not None:
        raw = config_path if isinstance(config_path, dict) else config_lib.load_json(config_path)
        if model is None:
            model = config_lib.detect_model(raw)
        file_configs = config_lib.read_config(raw)
    if model is None:
        model = "bert"
    if isinstance(model, str):
        key = model.lower()
        if key not in MODELS:
            raise ValueError(
                f"Unknown model {model!r}; available: {', '.join(sorted(MODELS))} "
                "(or pass a Transformer subclass)"
            )
        MODEL = MODELS[key]
    elif isinstance(model, type) and issubclass(model, Transformer):
        MODEL, key = model, None
    else:
        raise TypeError(f"model must be a model name or a Transformer subclass, got {model!r}")

    accepted = MODEL.accepted_arguments()
    config_lib.refuse_unknown(kwargs, accepted | set(KEYWORD_ALIASES), "build_transformer_model()")
    for alias, ours in KEYWORD_ALIASES.items():
        if alias in kwargs:
            value = kwargs.pop(alias)
            kwargs.setdefault(ours, value)
    # config-file keys that are no argument of MODEL are tolerated (see above)
    configs = {k: v for k, v in file_configs.items() if k in accepted}
    configs.update(kwargs)
    if key is not None and key.startswith(("t5.1.1", "mt5.1.1")):  # these keys fix the version
        configs["version"] = key.split("_")[0]

    application = (application or "encoder").lower()
    if application not in ("encoder", "lm", "unilm"):
        raise ValueError(f"Unknown application {application!r}: use 'encoder', 'lm' or 'unilm'")
    if application != "encoder" and application not in MODEL.allowed_applications:
        raise ValueError(f"application={application!r} is not available for {MODEL.__name__}")
    if application == "lm":
        MODEL = extend_with_language_model(MODEL)
    elif application == "unilm":
        MODEL = extend_with_unified_language_model(MODEL)

    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
        if k not in configs
    ]
    if missing:
        raise ValueError(f"config is missing {', '.join(missing)} (config_path={config_path!r})")
    transformer = MODEL(**configs)
    if checkpoint_path is None:
        transformer.build()
    else:
        # weights wait for their first value: the checkpoint's, or (for weights it
        # does not provide) their initializer's, never both (checkpoints/deferred.py)
        with deferred.deferred_build() as created:
            transformer.build()
    # the way back from the Keras model to its Transformer (generate, stream_generate)
    transformer.model._kerasformers_transformer = transformer
    if checkpoint_path is not None:
        try:
            transformer.load_weights_from_checkpoint(checkpoint_path)
        except BaseException:
            deferred.forget(created)
            raise
        deferred.initialize_rest(created)
    return transformer.model if return_keras_model else transformer


__all__ = [
    "MODELS",
    "Transformer",
    "BERT",
    "RoBERTa",
    "ALBERT",
    "ALBERT_Unshared",
    "NEZHA",
    "RoFormer",
    "RoFormerV2",
    "GAU_alpha",
    "ELECTRA",
    "GPT",
    "GPT2",
    "GPT2_ML",
    "T5",
    "T5_Encoder",
    "T5_Decoder",
    "build_transformer_model",
    "layer_outputs",
    "extend_with_language_model",
    "extend_with_unified_language_model",
]
