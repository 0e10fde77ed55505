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

import json
import os

# HF `model_type` -> our model key
HF_MODEL_TYPES = {
    "bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "albert": "albert",
    "electra": "electra", "roformer": "roformer", "nezha": "nezha", "gpt2": "gpt2",
}

# HF GPT2Config key -> (our argument, GPT2Config default when the key is absent)
_GPT2_KEYS = {
    "vocab_size": ("vocab_size", 50257), "n_embd": ("hidden_size", 768),
    "n_layer": ("num_hidden_layers", 12), "n_head": ("num_attention_heads", 12),
    "n_positions": ("max_position", 1024), "activation_function": ("hidden_act", "gelu_new"),
    "layer_norm_epsilon": ("layer_norm_eps", 1e-5), "resid_pdrop": ("dropout_rate", 0.1),
    "attn_pdrop": ("attention_dropout_rate", 0.1),
}

# HF-only entries that would collide with our own arguments
_DROP = ("dtype", "torch_dtype", "prefix", "name", "layers", "architectures",
         "transformers_version", "_name_or_path", "name_or_path")

CONFIG_NAMES = ("config.json", "bert_config.json", "albert_config.json",
                "electra_config.json", "roformer_config.json", "nezha_config.json")


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
    """Our model key for an HF config (from `model_type`), else None."""
    model_type = str(config.get("model_type", "")).lower()
    if model_type in ("t5", "mt5"):
        return _t5_model_key(config)
    return HF_MODEL_TYPES.get(model_type)


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
        if model_type in ("roberta", "xlm-roberta") and raw.get("pad_token_id"):
            out["max_position"] -= raw["pad_token_id"] + 1  # HF offsets positions by pad+1
    if "dropout_rate" not in out and "hidden_dropout_prob" in raw:
        out["dropout_rate"] = raw["hidden_dropout_prob"]
    if "attention_dropout_rate" not in out and "attention_probs_dropout_prob" in raw:
        out["attention_dropout_rate"] = raw["attention_probs_dropout_prob"]
    if "segment_vocab_size" not in out:
        out["segment_vocab_size"] = raw.get("type_vocab_size", 2)
    if model_type == "albert" and (raw.get("num_hidden_groups", 1) != 1
                                   or raw.get("inner_group_num", 1) != 1):
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
        if ours not in out:
            out[ours] = raw[hf_key] if raw.get(hf_key) is not None else default
    out.pop("n_inner", None)
    if "intermediate_size" not in out:
        out["intermediate_size"] = raw.get("n_inner") or 4 * out["hidden_size"]
    out["segment_vocab_size"] = 0
    out.pop("pad_token_id", None)
    for key, bad, what in (("scale_attn_weights", False, "unscaled attention"),
                           ("scale_attn_by_inverse_layer_idx", True, "per-layer attention scaling"),
                           ("add_cross_attention", True, "cross-attention"),
                           ("tie_word_embeddings", False, "an untied LM head")):
        if raw.get(key) is bad:
            raise ValueError(f"GPT-2 with {key}={bad} ({what}) is not supported")
    return out


# HF T5Config / MT5Config key -> (our argument, t5 default, mt5 default)
_T5_KEYS = {
    "vocab_size": ("vocab_size", 32128, 250112), "d_model": ("hidden_size", 512, 512),
    "d_ff": ("intermediate_size", 2048, 1024), "num_layers": ("num_hidden_layers", 6, 8),
    "num_heads": ("num_attention_heads", 8, 6), "d_kv": ("attention_head_size", 64, 64),
    "layer_norm_epsilon": ("layer_norm_eps", 1e-6, 1e-6),
    "dropout_rate": ("dropout_rate", 0.1, 0.1),
}


def _t5_feed_forward(raw):
    """(hidden_act, gated) from transformers' `feed_forward_proj`."""
    default = "gated-gelu" if str(raw.get("model_type")).lower() == "mt5" else "relu"
    proj = raw.get("feed_forward_proj") or default
    parts = proj.split("-")
    gated = parts[0] == "gated"
    act = parts[-1]
    if proj == "gated-gelu":
        act = "gelu_new"      # transformers' special case: tanh GELU
    elif act == "gelu":
        act = "gelu_erf"      # ACT2FN['gelu'] is exact; a bare 'gelu' means tanh in our T5
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
        if ours not in out:
            value = raw.get(hf_key)
            out[ours] = value if value is not None else (mt5_default if mt5 else t5_default)
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
        raise ValueError(f"hidden_act {hidden_act!r} has no transformers "
                         "feed_forward_proj equivalent")
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
    proj = _t5_feed_forward_proj(model.hidden_act, model.gated)
    mt5 = model.version == "mt5.1.1" and not model.tie_word_embeddings
    config = {
        "model_type": "mt5" if mt5 else "t5",
        "architectures": [model.hf_architecture(mt5)],
        "vocab_size": model.vocab_size, "d_model": model.hidden_size,
        "d_kv": model.attention_head_size, "d_ff": model.intermediate_size,
        "num_layers": model.num_encoder_layers, "num_decoder_layers": model.num_decoder_layers,
        "num_heads": model.num_attention_heads,
        "relative_attention_num_buckets": model.relative_attention_num_buckets,
        "relative_attention_max_distance": model.relative_attention_max_distance,
        "dropout_rate": model.dropout_rate, "layer_norm_epsilon": model.layer_norm_eps,
        "feed_forward_proj": proj, "tie_word_embeddings": model.tie_word_embeddings,
        "is_encoder_decoder": True, "pad_token_id": model.pad_token_id,
        "eos_token_id": 1, "decoder_start_token_id": model.pad_token_id,
    }
    if not mt5:
        config["scale_decoder_outputs"] = model.tie_word_embeddings
    return config
