"""Reading model configs: Google-style (`bert_config.json`) or HF-style (`config.json`).

T5's HF config is read and written here, side by side (`_read_t5`, `write_t5`),
because the two directions share non-trivial rules (`feed_forward_proj`, the
tied-head scaling); the other models write theirs in their `hf_config()`.

Both become bert4keras' constructor arguments. bert4keras' aliases are filled
only where absent: max_position <- max_position_embeddings (512),
dropout_rate <- hidden_dropout_prob, attention_dropout_rate <-
attention_probs_dropout_prob, segment_vocab_size <- type_vocab_size (2).

>>> read_config({"model_type": "roberta", "max_position_embeddings": 514,
...              "pad_token_id": 1, "type_vocab_size": 1})["max_position"]
512
"""

import difflib
import json
import math
import numbers
import os

# HF `model_type` -> our model key
HF_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "albert": "albert",
    "electra": "electra",
    "roformer": "roformer",
    "nezha": "nezha",
    "gpt2": "gpt2",
}

# HF GPT2Config key -> (our argument, GPT2Config default when the key is absent)
_GPT2_KEYS = {
    "vocab_size": ("vocab_size", 50257),
    "n_embd": ("hidden_size", 768),
    "n_layer": ("num_hidden_layers", 12),
    "n_head": ("num_attention_heads", 12),
    "n_positions": ("max_position", 1024),
    "activation_function": ("hidden_act", "gelu_new"),
    "layer_norm_epsilon": ("layer_norm_eps", 1e-5),
    "resid_pdrop": ("dropout_rate", 0.1),
    "attn_pdrop": ("attention_dropout_rate", 0.1),
}

# HF-only entries that would collide with our own arguments
_DROP = (
    "dtype",
    "torch_dtype",
    "prefix",
    "name",
    "layers",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "name_or_path",
)

CONFIG_NAMES = (
    "config.json",
    "bert_config.json",
    "albert_config.json",
    "electra_config.json",
    "roformer_config.json",
    "nezha_config.json",
)


def find_config(folder):
    """The config file inside a model directory, or None."""
    for name in CONFIG_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    candidates = sorted(f for f in os.listdir(folder) if f.endswith("config.json"))
    return os.path.join(folder, candidates[0]) if len(candidates) == 1 else None


def load_json(path):
    if os.path.isdir(path):
        found = find_config(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no config.json / bert_config.json in this directory")
        path = found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def detect_model(config):
    """Our model key for an HF config (from `model_type`); None without a
    `model_type` (Google's `bert_config.json`: BERT is meant).

    An unknown `model_type` is an error naming it: a config of another
    architecture would otherwise load as BERT. Pass `model=` to the builder to
    say which class to use instead.

    >>> detect_model({"model_type": "deberta-v2"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: config model_type 'deberta-v2' is not known; known: albert, bert, electra, ...
    """
    if config.get("model_type") is None:
        return None
    model_type = str(config["model_type"]).lower()
    if model_type in ("t5", "mt5"):
        return _t5_model_key(config)
    if model_type not in HF_MODEL_TYPES:
        known = ", ".join(sorted([*HF_MODEL_TYPES, "t5", "mt5"]))
        raise ValueError(
            f"config model_type {config['model_type']!r} is not known; known: "
            f"{known} (or pass model= to say which class to build)"
        )
    return HF_MODEL_TYPES[model_type]


def read_config(config):
    """A path, directory or dict -> our constructor keyword arguments."""
    raw = load_json(config) if not isinstance(config, dict) else dict(config)
    out = {k: v for k, v in raw.items() if k not in _DROP}
    model_type = str(raw.get("model_type", "")).lower()
    if model_type == "gpt2":
        return _read_gpt2(raw, out)
    if model_type in ("t5", "mt5"):
        return _read_t5(raw, out)
    if "max_position" not in out:
        out["max_position"] = raw.get("max_position_embeddings", 512)
        pad = raw.get("pad_token_id")
        if (
            model_type in ("roberta", "xlm-roberta")
            and _is_int(pad)
            and pad > 0
            and _is_int(out["max_position"])
        ):
            out["max_position"] -= pad + 1  # HF offsets positions by pad+1
    if "dropout_rate" not in out and "hidden_dropout_prob" in raw:
        out["dropout_rate"] = raw["hidden_dropout_prob"]
    if "attention_dropout_rate" not in out and "attention_probs_dropout_prob" in raw:
        out["attention_dropout_rate"] = raw["attention_probs_dropout_prob"]
    if "segment_vocab_size" not in out:
        out["segment_vocab_size"] = raw.get("type_vocab_size", 2)
    if model_type == "albert" and (
        raw.get("num_hidden_groups", 1) != 1 or raw.get("inner_group_num", 1) != 1
    ):
        raise ValueError("ALBERT with num_hidden_groups/inner_group_num != 1 is not supported")
    if model_type == "roformer" and raw.get("rotary_value"):
        raise ValueError("RoFormer with rotary_value=True is not supported")
    if model_type and "pad_token_id" in raw and raw["pad_token_id"] is None:
        out.pop("pad_token_id")
    return out


def _read_gpt2(raw, out):
    """HF GPT2Config -> GPT2 arguments (no segments; n_inner None = 4 * n_embd).

    `pad_token_id` is not taken from the config: GPT-2 has no padding id (id 0
    is a real token and HF often sets pad = eos, also a real token), so no key
    is masked by id unless the caller passes pad_token_id explicitly.
    """
    for hf_key, (ours, default) in _GPT2_KEYS.items():
        out.pop(hf_key, None)
        if ours not in out:  # a null in the file is passed on (and refused if required)
            out[ours] = raw[hf_key] if hf_key in raw else default
    out.pop("n_inner", None)
    if "intermediate_size" not in out:
        out["intermediate_size"] = raw.get("n_inner") or 4 * out["hidden_size"]
    out["segment_vocab_size"] = 0
    out.pop("pad_token_id", None)
    for key, bad, what in (
        ("scale_attn_weights", False, "unscaled attention"),
        ("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling"),
        ("add_cross_attention", True, "cross-attention"),
        ("tie_word_embeddings", False, "an untied LM head"),
    ):
        if raw.get(key) is bad:
            raise ValueError(f"GPT-2 with {key}={bad} ({what}) is not supported")
    return out


# HF T5Config / MT5Config key -> (our argument, t5 default, mt5 default)
_T5_KEYS = {
    "vocab_size": ("vocab_size", 32128, 250112),
    "d_model": ("hidden_size", 512, 512),
    "d_ff": ("intermediate_size", 2048, 1024),
    "num_layers": ("num_hidden_layers", 6, 8),
    "num_heads": ("num_attention_heads", 8, 6),
    "d_kv": ("attention_head_size", 64, 64),
    "layer_norm_epsilon": ("layer_norm_eps", 1e-6, 1e-6),
    "dropout_rate": ("dropout_rate", 0.1, 0.1),
}


def _t5_feed_forward(raw):
    """(hidden_act, gated) from transformers' `feed_forward_proj`."""
    default = "gated-gelu" if str(raw.get("model_type")).lower() == "mt5" else "relu"
    proj = raw.get("feed_forward_proj")
    proj = default if proj is None else proj
    if not isinstance(proj, str):
        raise TypeError(
            f"config feed_forward_proj must be a string such as 'relu' or "
            f"'gated-gelu', got {proj!r}"
        )
    parts = proj.split("-")
    gated = parts[0] == "gated"
    act = parts[-1]
    if proj == "gated-gelu":
        act = "gelu_new"  # transformers' special case: tanh GELU
    elif act == "gelu":
        act = "gelu_erf"  # ACT2FN['gelu'] is exact; a bare 'gelu' means tanh in our T5
    return ([act, "linear"] if gated else act), gated


def _t5_model_key(raw):
    if str(raw.get("model_type")).lower() == "mt5":
        return "mt5.1.1"
    return "t5.1.1" if _t5_feed_forward(raw)[1] else "t5"


def _read_t5(raw, out):
    """HF T5Config / MT5Config -> T5 arguments.

    d_model -> hidden_size, d_ff -> intermediate_size, num_layers ->
    num_hidden_layers, num_heads -> num_attention_heads, d_kv ->
    attention_head_size, layer_norm_epsilon -> layer_norm_eps; feed_forward_proj
    -> hidden_act ('gated-gelu' = ['gelu_new', 'linear']); num_decoder_layers and
    relative_attention_{num_buckets,max_distance} pass through.
    tie_word_embeddings (our meaning: tied LM head *and* decoder output scaled by
    d_model**-0.5) follows transformers' scaling rule: `scale_decoder_outputs`
    if saved (transformers >= 5 always saves tie_word_embeddings=True), else
    `tie_word_embeddings` (default True); mT5 never scales.
    """
    mt5 = str(raw.get("model_type")).lower() == "mt5"
    for hf_key, (ours, t5_default, mt5_default) in _T5_KEYS.items():
        out.pop(hf_key, None)
        if ours not in out:  # a null in the file is passed on (and refused if required)
            out[ours] = raw[hf_key] if hf_key in raw else (mt5_default if mt5 else t5_default)
    if "hidden_act" not in out:
        out["hidden_act"] = _t5_feed_forward(raw)[0]
    out.setdefault("attention_dropout_rate", out["dropout_rate"])  # T5 uses one rate
    for key in ("feed_forward_proj", "dense_act_fn", "is_gated_act", "scale_decoder_outputs"):
        out.pop(key, None)
    if mt5:
        out["tie_word_embeddings"] = False
    elif raw.get("scale_decoder_outputs") is not None:
        out["tie_word_embeddings"] = bool(raw["scale_decoder_outputs"])
    else:
        out["tie_word_embeddings"] = raw.get("tie_word_embeddings", True) is not False
    if out.get("pad_token_id") is None:
        out["pad_token_id"] = 0
    return out


def _t5_feed_forward_proj(hidden_act, gated):
    """transformers' `feed_forward_proj` for our hidden_act (inverse of `_t5_feed_forward`)."""
    if not gated:
        return {"gelu_tanh": "gelu_new", "gelu_erf": "gelu"}.get(hidden_act, hidden_act)
    act, *rest = hidden_act
    if rest != ["linear"] or act == "gelu_erf" or not isinstance(act, str):
        raise ValueError(
            f"hidden_act {hidden_act!r} has no transformers feed_forward_proj equivalent"
        )
    return "gated-gelu" if act == "gelu_tanh" else f"gated-{act}"


def write_t5(model):
    """HF T5Config / MT5Config dict for a T5, T5_Encoder or T5_Decoder object
    (the inverse of `read_config` on it).

    >>> from kerasformers.models.t5 import T5
    >>> t5 = T5(version="t5.1.1", vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...         num_attention_heads=2, intermediate_size=32)
    >>> config = write_t5(t5)
    >>> config["model_type"], config["feed_forward_proj"], config["architectures"]
    ('t5', 'gated-gelu', ['T5ForConditionalGeneration'])
    >>> read_config(config)["hidden_act"]
    ['gelu_new', 'linear']
    """
    scale = getattr(model, "scale_decoder_outputs", None)  # decoders and the joint model
    if scale is not None and scale != (model.tie_word_embeddings and bool(model.with_lm)):
        raise ValueError(
            f"scale_decoder_outputs={scale} with tie_word_embeddings="
            f"{model.tie_word_embeddings} has no transformers config (transformers scales "
            "exactly when the head is tied); save with naming='google' instead"
        )
    proj = _t5_feed_forward_proj(model.hidden_act, model.gated)
    mt5 = model.version == "mt5.1.1" and not model.tie_word_embeddings
    config = {
        "model_type": "mt5" if mt5 else "t5",
        "architectures": [model.hf_architecture(mt5)],
        "vocab_size": model.vocab_size,
        "d_model": model.hidden_size,
        "d_kv": model.attention_head_size,
        "d_ff": model.intermediate_size,
        "num_layers": model.num_encoder_layers,
        "num_decoder_layers": model.num_decoder_layers,
        "num_heads": model.num_attention_heads,
        "relative_attention_num_buckets": model.relative_attention_num_buckets,
        "relative_attention_max_distance": model.relative_attention_max_distance,
        "dropout_rate": model.dropout_rate,
        "layer_norm_epsilon": model.layer_norm_eps,
        "feed_forward_proj": proj,
        "tie_word_embeddings": model.tie_word_embeddings,
        "is_encoder_decoder": True,
        "pad_token_id": model.pad_token_id,
        "eos_token_id": 1,
        "decoder_start_token_id": model.pad_token_id,
    }
    if not mt5:
        config["scale_decoder_outputs"] = model.tie_word_embeddings
    return config


# ------------------------------------------------------------ constructor arguments
# The model classes' constructors are checked here once, before any layer is
# built (`Transformer.__new__`): unknown names are refused with the closest
# valid one, values are checked by kind, and each error names key and value.

#: bert4keras arguments not implemented yet: refused by name, never swallowed
NOT_SUPPORTED = {
    "attention_caches": "use init_cache / call_with_cache for cached decoding",
    "autoresize_weights": "checkpoint shapes must fit; keep_tokens / compound_tokens "
    "resize the vocabulary",
}

#: how config files spell our arguments, quoted in error messages
FILE_NAMES = {
    "hidden_size": "n_embd, d_model",
    "num_hidden_layers": "n_layer, num_layers",
    "num_attention_heads": "n_head, num_heads",
    "intermediate_size": "n_inner, d_ff",
    "max_position": "max_position_embeddings, n_positions",
    "segment_vocab_size": "type_vocab_size",
    "attention_head_size": "d_kv",
    "dropout_rate": "hidden_dropout_prob, resid_pdrop",
    "attention_dropout_rate": "attention_probs_dropout_prob, attn_pdrop",
    "layer_norm_eps": "layer_norm_epsilon",
    "hidden_act": "activation_function, feed_forward_proj",
}

#: kinds of argument values: name -> kind (see `check_arguments`)
KINDS = {
    **dict.fromkeys(
        (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "embedding_size",
            "attention_head_size",
            "attention_key_size",
            "sequence_length",
            "max_position",
            "max_relative_position",
            "num_decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
            "layer_norm_cond_hidden_size",
        ),
        "size",
    ),
    "segment_vocab_size": "count",
    "pad_token_id": "id",
    "dropout_rate": "rate",
    "attention_dropout_rate": "rate",
    "layer_norm_eps": "epsilon",
    "hidden_act": "activation",
    "layer_norm_cond_hidden_act": "activation",
    **dict.fromkeys(
        ("with_pool", "with_mlm", "with_discriminator", "with_lm", "final_activation"), "head"
    ),
    **dict.fromkeys(
        (
            "with_nsp",
            "custom_position_ids",
            "shared_segment_embeddings",
            "residual_attention_scores",
            "ignore_invalid_weights",
            "remat",
            "tie_word_embeddings",
            "cross_position_bias",
            "context_mask",
            "scale_decoder_outputs",
        ),
        "flag",
    ),
    "keep_tokens": "tokens",
}


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_activation(value):
    from kerasformers.ops import get_activation

    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(_is_activation(v) for v in value)
    if not (isinstance(value, str) or callable(value)):
        return False
    try:
        get_activation(value)
    except ValueError:
        return False
    return True


def _problem(name, value):
    """(exception type, what is wrong) for one argument value, or None."""
    kind = KINDS.get(name)
    if kind in ("size", "count", "id"):
        least = 1 if kind == "size" else 0
        what = "a positive integer" if kind == "size" else "an integer >= 0"
        if not _is_int(value):
            return TypeError, f"must be {what}, got {value!r} ({type(value).__name__})"
        if value < least:
            return ValueError, f"must be {what}, got {value!r}"
    elif kind in ("rate", "epsilon"):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return TypeError, f"must be a number, got {value!r} ({type(value).__name__})"
        if kind == "rate" and not 0 <= value < 1:
            return ValueError, f"must be in [0, 1), got {value!r}"
        if kind == "epsilon" and not (value > 0 and math.isfinite(value)):
            return ValueError, f"must be a finite number > 0, got {value!r}"
    elif kind == "activation":
        if not _is_activation(value):
            return ValueError, f"is not a known activation (or list of them): {value!r}"
    elif kind == "head":
        if not isinstance(value, bool) and not _is_activation(value):
            return ValueError, f"must be True, False or an activation name, got {value!r}"
    elif kind == "flag":
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            return TypeError, f"must be True or False, got {value!r} ({type(value).__name__})"
    elif kind == "tokens":
        if (
            isinstance(value, (str, bytes))
            or not hasattr(value, "__len__")
            or len(value) == 0
            or not all(_is_int(i) and i >= 0 for i in value)
        ):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            return ValueError, f"must be a non-empty list of token ids >= 0, got {shown}"
    return None


def check_arguments(arguments, owner, optional=()):
    """Check a model constructor's arguments by kind (`KINDS`); names in
    `optional` may be None (their default). Raises one error listing every bad
    key with its value: TypeError if all are of the wrong type, else ValueError.

    >>> check_arguments({"hidden_size": 0, "dropout_rate": 1.5}, "BERT")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: BERT: hidden_size (n_embd, d_model in config files) must be a positive ...
    """
    problems = []
    for name, value in arguments.items():
        if value is None and name in optional:
            continue
        found = _problem(name, value)
        if found is not None:
            alias = f" ({FILE_NAMES[name]} in config files)" if name in FILE_NAMES else ""
            problems.append((found[0], f"{name}{alias} {found[1]}"))
    if problems:
        error = TypeError if all(t is TypeError for t, _ in problems) else ValueError
        raise error(f"{owner}: " + "; ".join(message for _, message in problems))


def refuse_unknown(names, accepted, where):
    """TypeError naming every name not in `accepted`, with the closest valid
    name (difflib); bert4keras names we do not implement yet say so.

    >>> refuse_unknown(["with_mlmm"], {"with_mlm", "with_pool"}, "build()")
    Traceback (most recent call last):
    ...
    TypeError: build() got an unexpected keyword argument 'with_mlmm' (did you mean 'with_mlm'?)
    """
    unknown = [name for name in names if name not in accepted]
    if not unknown:
        return
    parts = []
    for name in unknown:
        if name in NOT_SUPPORTED:
            parts.append(f"{name!r} (bert4keras) is not supported yet: {NOT_SUPPORTED[name]}")
            continue
        close = difflib.get_close_matches(name, sorted(accepted), n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise TypeError(f"{where} got an unexpected keyword argument{plural} " + ", ".join(parts))
