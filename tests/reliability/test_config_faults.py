"""Configs and the builder refuse what they do not understand (issue 18, points 3 and 4).

Point 4: every keyword of `build_transformer_model` (and of the model classes)
is an argument of the model's constructor, or a TypeError naming it with the
closest valid name; bert4keras names not implemented yet say "not supported
yet". Config-file keys we do not use stay tolerated.
Point 3: values are checked once, before any layer is built, and each error
names the key and the value; an unknown `model_type` is an error naming it;
`type_vocab_size` 0 with a checkpoint holding segment embeddings warns.
The fuzz at the end mutates whole config files at random (seeded): each must
build a model that has exactly the sizes its file says, or raise a
ValueError/TypeError naming the mutated key.
"""

import inspect
import json
import math
import random
import warnings

import pytest

from kerasformers import build_transformer_model
from kerasformers import config as config_lib
from kerasformers.models import BERT, MODELS, T5, T5_Decoder
from kerasformers.models.t5 import _DECODER_OPTIONS

TINY = dict(
    vocab_size=30,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=24,
    max_position=16,
)


def build(model="bert", **kwargs):
    return build_transformer_model(
        None, model=model, return_keras_model=False, **{**TINY, **kwargs}
    )


def names(transformer):
    return [layer.name for layer in transformer.model.layers]


# ================================================================ point 4: keywords
TYPOS = [  # (model, misspelt keyword, the suggestion we expect)
    ("bert", "with_mlmm", "with_mlm"),
    ("bert", "with_pol", "with_pool"),
    ("bert", "with_nps", "with_nsp"),
    ("bert", "hiden_size", "hidden_size"),
    ("bert", "num_attention_head", "num_attention_heads"),
    ("bert", "segment_vocab", "segment_vocab_size"),
    ("bert", "keep_token", "keep_tokens"),
    ("bert", "max_positions", "max_position"),
    ("bert", "dropout", "dropout_rate"),
    ("bert", "residual_attention_score", "residual_attention_scores"),
    ("bert", "custom_position_id", "custom_position_ids"),
    ("bert", "layer_norm_epsilon", "layer_norm_eps"),
    ("roberta", "pad_token", "pad_token_id"),
    ("nezha", "max_relative_positions", "max_relative_position"),
    ("electra", "with_discriminater", "with_discriminator"),
    ("gpt2", "final_activaton", "final_activation"),
    ("t5.1.1", "with_lmm", "with_lm"),
    ("t5.1.1", "cross_position_biass", "cross_position_bias"),
    ("t5.1.1_decoder", "context_masks", "context_mask"),
    ("t5", "relative_attention_num_bucket", "relative_attention_num_buckets"),
]


@pytest.mark.parametrize("model, typo, suggestion", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_misspelt_keyword_is_refused_with_the_closest_name(model, typo, suggestion):
    with pytest.raises(TypeError, match=f"'{typo}' \\(did you mean '{suggestion}'\\?\\)"):
        build(model, **{typo: True})


NOT_YET = sorted(config_lib.NOT_SUPPORTED)


@pytest.mark.parametrize("name", NOT_YET)
@pytest.mark.parametrize("model", ["bert", "gpt2", "t5.1.1"])
def test_bert4keras_names_not_implemented_say_so(model, name):
    with pytest.raises(TypeError, match=f"'{name}' \\(bert4keras\\) is not supported yet"):
        build(model, **{name: None})


WRONG_MODEL = [  # a real keyword of another model: refused, not silently dropped
    ("bert", dict(with_discriminator=True)),
    ("bert", dict(with_lm=True)),
    ("bert", dict(final_activation="linear")),
    ("bert", dict(version="t5.1.1")),
    ("bert", dict(max_relative_position=8)),
    ("roberta", dict(context_mask=True)),
    ("gpt2", dict(with_discriminator=True)),
    ("t5.1.1_encoder", dict(with_lm="linear")),
    ("t5.1.1", dict(with_mlm=True)),
    ("t5.1.1", dict(segment_vocab_size=2)),
]


@pytest.mark.parametrize(
    "model, kwargs", WRONG_MODEL, ids=[f"{m}-{next(iter(k))}" for m, k in WRONG_MODEL]
)
def test_a_keyword_of_another_model_is_refused(model, kwargs):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(kwargs))}'"):
        build(model, **kwargs)


def test_every_unknown_keyword_is_named_at_once():
    with pytest.raises(TypeError) as info:
        build(with_mlmm=True, attention_caches=None, zzz=1)
    message = str(info.value)
    assert "arguments" in message
    for part in (
        "'with_mlmm' (did you mean 'with_mlm'?)",
        "'attention_caches' (bert4keras)",
        "'zzz'",
    ):
        assert part in message


def test_direct_construction_is_checked_too():
    with pytest.raises(
        TypeError,
        match="BERT\\(\\) got an unexpected keyword argument "
        "'with_mlmm' \\(did you mean 'with_mlm'\\?\\)",
    ):
        BERT(**TINY, with_mlmm=True)
    with pytest.raises(TypeError, match="with_mlm"):
        T5(**TINY, with_mlm=True)


def test_application_wrappers_check_their_base_arguments():
    with pytest.raises(TypeError, match="with_mlmm"):
        build(application="lm", with_mlmm=True)
    with pytest.raises(TypeError, match="with_mlmm"):
        build(application="unilm", with_mlmm=True)


def test_model_classes_accept_what_they_document():
    for key, cls in MODELS.items():
        accepted = cls.accepted_arguments()
        assert {"vocab_size", "hidden_size", "dtype", "remat", "pad_token_id"} <= accepted, key
        assert not accepted & set(config_lib.NOT_SUPPORTED), key
    assert BERT.accepted_arguments() >= {
        "with_mlm",
        "with_pool",
        "with_nsp",
        "max_position",
        "segment_vocab_size",
        "custom_position_ids",
    }
    # the joint T5 passes the decoder's own options to its decoder only
    own = set(inspect.signature(T5_Decoder.__init__).parameters) - {"self", "kwargs"}
    assert set(_DECODER_OPTIONS) == own
    assert T5.accepted_arguments() >= own


def test_t5_decoder_options_reach_the_decoder_only():
    t5 = build("t5.1.1", with_lm="linear", cross_position_bias=True)
    assert t5.decoder_transformer.with_lm == "linear"
    assert t5.decoder_transformer.cross_position_bias is True
    assert not hasattr(t5.encoder_transformer, "with_lm")


def test_t5_takes_max_position_without_a_limit():
    """One dict of arguments builds every model (the shared harness relies on it)."""
    t5 = build("t5.1.1")
    assert not hasattr(t5, "max_position")


@pytest.mark.parametrize(
    "alias, ours, value",
    [
        ("type_vocab_size", "segment_vocab_size", 0),
        ("max_position_embeddings", "max_position", 8),
        ("hidden_dropout_prob", "dropout_rate", 0.25),
        ("attention_probs_dropout_prob", "attention_dropout_rate", 0.25),
    ],
)
def test_bert4keras_config_spellings_are_keywords_too(alias, ours, value):
    base = {k: v for k, v in TINY.items() if k != ours}
    transformer = build_transformer_model(None, return_keras_model=False, **base, **{alias: value})
    assert getattr(transformer, ours) == value
    if ours == "segment_vocab_size":
        assert [t.name for t in transformer.model.inputs] == ["Input-Token"]
    default = getattr(build(), ours)
    both = build(**{alias: value, ours: default})  # our name wins, as in bert4keras
    assert getattr(both, ours) == default


HF_BERT = {
    "model_type": "bert",
    "vocab_size": 30,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def test_unused_config_file_keys_are_tolerated(tmp_path):
    extra = {
        "initializer_range": 0.02,
        "architectures": ["BertForMaskedLM"],
        "transformers_version": "5.0.0",
        "use_cache": True,
        "classifier_dropout": None,
        "position_embedding_type": "absolute",
        "gradient_checkpointing": False,
        "some_future_key": {"nested": [1, 2]},
        "with_mlmm": True,
        "directionality": "bidi",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HF_BERT, **extra}))
    plain = build_transformer_model(HF_BERT, return_keras_model=False)
    noisy = build_transformer_model(str(path), return_keras_model=False)
    assert names(noisy) == names(plain)
    assert {w.path: tuple(w.shape) for w in noisy.model.weights} == {
        w.path: tuple(w.shape) for w in plain.model.weights
    }


# ================================================================ point 3: values
BAD_VALUES = [  # (model, key, value, exception)
    *[
        ("bert", key, value, error)
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position",
        )
        for value, error in (
            (0, ValueError),
            (-1, ValueError),
            ("16", TypeError),
            (1.5, TypeError),
            (None, TypeError),
            (True, TypeError),
        )
    ],
    ("bert", "embedding_size", 0, ValueError),
    ("bert", "attention_head_size", -8, ValueError),
    ("bert", "attention_key_size", 0, ValueError),
    ("bert", "sequence_length", 0, ValueError),
    ("bert", "segment_vocab_size", -1, ValueError),
    ("bert", "segment_vocab_size", "2", TypeError),
    ("bert", "segment_vocab_size", None, TypeError),
    ("bert", "pad_token_id", -1, ValueError),
    ("bert", "pad_token_id", 0.5, TypeError),
    *[
        ("bert", key, value, error)
        for key in ("dropout_rate", "attention_dropout_rate")
        for value, error in (
            (-0.1, ValueError),
            (1.0, ValueError),
            (1.5, ValueError),
            ("0.1", TypeError),
            (True, TypeError),
        )
    ],
    *[
        ("bert", "layer_norm_eps", value, error)
        for value, error in (
            (0, ValueError),
            (-1e-12, ValueError),
            (math.inf, ValueError),
            (math.nan, ValueError),
            ("1e-12", TypeError),
        )
    ],
    *[("bert", "hidden_act", value, ValueError) for value in ("nope", None, 3, [], {})],
    ("bert", "with_mlm", "nope", ValueError),
    ("bert", "with_pool", 3, ValueError),
    ("bert", "with_nsp", "yes", TypeError),
    ("bert", "custom_position_ids", 1, TypeError),
    ("bert", "remat", "false", TypeError),
    ("bert", "keep_tokens", [], ValueError),
    ("bert", "keep_tokens", [0, -3], ValueError),
    ("nezha", "max_relative_position", 0, ValueError),
    ("electra", "with_discriminator", "nope", ValueError),
    ("gpt2", "final_activation", None, ValueError),
    ("gpt2", "hidden_size", 0, ValueError),
    ("t5.1.1", "num_decoder_layers", 0, ValueError),
    ("t5.1.1", "relative_attention_num_buckets", 0, ValueError),
    ("t5.1.1", "relative_attention_max_distance", -1, ValueError),
    ("t5.1.1", "with_lm", "nope", ValueError),
    ("t5.1.1", "hidden_act", ["gelu", "nope"], ValueError),
    ("t5.1.1", "max_position", 0, ValueError),
]


@pytest.mark.parametrize(
    "model, key, value, error", BAD_VALUES, ids=[f"{m}-{k}-{v!r}" for m, k, v, _ in BAD_VALUES]
)
def test_a_bad_value_names_key_and_value(model, key, value, error):
    with pytest.raises(error) as info:
        build(model, **{key: value})
    message = str(info.value)
    assert key in message and repr(value) in message, message


def test_values_are_checked_before_any_layer_is_built(monkeypatch):
    def no_layers(self, *args, **kwargs):
        raise AssertionError("a layer was built before the arguments were checked")

    monkeypatch.setattr(BERT, "apply", no_layers)
    for bad in (dict(num_hidden_layers=0), dict(dropout_rate=1.0), dict(with_mlmm=True)):
        with pytest.raises((ValueError, TypeError)):
            build(**bad)
        with pytest.raises((ValueError, TypeError)):
            BERT(**{**TINY, **bad})


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ValueError) as info:
        build(hidden_size=0, dropout_rate=2.0, layer_norm_eps=0)
    for key in ("hidden_size", "dropout_rate", "layer_norm_eps"):
        assert key in str(info.value)


def test_heads_must_divide_hidden_unless_the_head_size_is_given():
    with pytest.raises(
        ValueError, match="hidden_size 16 is not divisible by num_attention_heads 3"
    ):
        build(num_attention_heads=3)
    transformer = build(num_attention_heads=3, attention_head_size=8, with_mlm=True)
    layer = transformer.model.get_layer("Transformer-0-MultiHeadSelfAttention")
    assert tuple(layer.q_dense.kernel.shape) == (16, 24)  # 3 heads x 8, as given
    assert tuple(layer.o_dense.kernel.shape) == (24, 16)


@pytest.mark.parametrize("value", [0, 1e-30, 1e-12, 1e-5])
def test_a_given_epsilon_is_used_as_given(value):
    if value == 0:
        with pytest.raises(ValueError, match="layer_norm_eps"):
            build(layer_norm_eps=value)
        return
    transformer = build(layer_norm_eps=value)
    assert transformer.layer_norm_eps == value
    assert transformer.model.get_layer("Embedding-Norm").epsilon == value


@pytest.mark.parametrize("model_type", ["deberta-v2", "llama", "distilbert", "BERTX", 7])
def test_an_unknown_model_type_is_an_error_naming_it(model_type):
    config = {**HF_BERT, "model_type": model_type}
    with pytest.raises(ValueError, match=f"model_type {model_type!r} is not known") as info:
        build_transformer_model(config)
    for known in ("bert", "roberta", "gpt2", "t5"):
        assert known in str(info.value)
    # model= says what to build: then the config is read as that model's
    transformer = build_transformer_model(config, model="bert", return_keras_model=False)
    assert type(transformer) is BERT and transformer.hidden_size == 16


def test_a_config_without_model_type_is_bert():
    config = {k: v for k, v in HF_BERT.items() if k != "model_type"}
    assert type(build_transformer_model(config, return_keras_model=False)) is BERT


def _checkpoint(**kwargs):
    return build(with_mlm=True, **kwargs).export_weights("google")


def test_segment_vocab_size_zero_with_segment_embeddings_in_the_checkpoint_warns():
    with pytest.warns(
        UserWarning, match="token_type_embeddings' \\(2, 16\\), but segment_vocab_size=0"
    ) as record:
        build(segment_vocab_size=0).load_weights_from_checkpoint(_checkpoint())
    messages = [str(r.message) for r in record if issubclass(r.category, UserWarning)]
    assert len(messages) == 1 and "Pass segment_vocab_size=2" in messages[0]
    config = {**HF_BERT, "type_vocab_size": 0}  # the same through a config file
    with pytest.warns(UserWarning, match="segment_vocab_size=0"):
        build_transformer_model(config, checkpoint_path=_checkpoint())


def test_no_segment_warning_when_nothing_is_dropped():
    checkpoint = _checkpoint(segment_vocab_size=0)  # has no segment table
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        build_transformer_model(None, checkpoint_path=checkpoint, **TINY, segment_vocab_size=0)
        build_transformer_model(None, checkpoint_path=_checkpoint(), **TINY)


# ================================================================ fuzz: whole config files
BASES = {
    "bert": HF_BERT,
    "roberta": {
        **HF_BERT,
        "model_type": "roberta",
        "max_position_embeddings": 18,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    },
    "albert": {**HF_BERT, "model_type": "albert", "embedding_size": 8},
    "nezha": {**HF_BERT, "model_type": "nezha", "max_relative_position": 8},
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": 30,
        "n_embd": 16,
        "n_layer": 1,
        "n_head": 2,
        "n_inner": 24,
        "n_positions": 16,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "initializer_range": 0.02,
    },
    "t5": {
        "model_type": "t5",
        "vocab_size": 30,
        "d_model": 16,
        "d_ff": 24,
        "d_kv": 8,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
    },
}
#: file key -> the model attribute it sets (checked on every model that builds)
ATTRIBUTES = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "n_embd": "hidden_size",
    "d_model": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "n_layer": "num_hidden_layers",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "n_head": "num_attention_heads",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "n_inner": "intermediate_size",
    "d_ff": "intermediate_size",
    "d_kv": "attention_head_size",
    "num_decoder_layers": "num_decoder_layers",
    "n_positions": "max_position",
    "type_vocab_size": "segment_vocab_size",
    "embedding_size": "embedding_size",
    "max_relative_position": "max_relative_position",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "layer_norm_eps": "layer_norm_eps",
    "layer_norm_epsilon": "layer_norm_eps",
    "hidden_dropout_prob": "dropout_rate",
    "resid_pdrop": "dropout_rate",
    "dropout_rate": "dropout_rate",
    "attention_probs_dropout_prob": "attention_dropout_rate",
    "attn_pdrop": "attention_dropout_rate",
}
MUTATIONS = [0, -1, -0.5, 1.5, 2.0, "abc", "12", None, True, False, [], {}, math.nan, 3, 1]
DELETE = object()
FUZZ_CASES = 120


def _fuzz_case(seed):
    rng = random.Random(seed)
    family = rng.choice(sorted(BASES))
    config = dict(BASES[family])
    keys = [k for k in config if k != "model_type"]
    changed = {}
    for key in rng.sample(keys, rng.randint(1, 3)):
        value = DELETE if rng.random() < 0.2 else rng.choice(MUTATIONS)
        changed[key] = value
        if value is DELETE:
            del config[key]
        else:
            config[key] = value
    return family, config, changed


def _expected(family, config, key):
    if key == "max_position_embeddings":
        value = config[key]
        if (
            family == "roberta"
            and isinstance(config.get("pad_token_id"), int)
            and not isinstance(config["pad_token_id"], bool)
            and config["pad_token_id"] > 0
        ):
            value -= config["pad_token_id"] + 1
        return "max_position", value
    if key == "type_vocab_size" and family == "gpt2":
        return None, None
    if key in ATTRIBUTES:
        return ATTRIBUTES[key], config[key]
    return None, None


@pytest.mark.parametrize("seed", range(FUZZ_CASES))
def test_fuzzed_config_files_build_as_written_or_name_the_key(seed):
    family, config, changed = _fuzz_case(seed)
    try:
        transformer = build_transformer_model(config, return_keras_model=False)
    except (ValueError, TypeError) as e:
        named = [k for k in changed if k in str(e)]
        assert named, f"{family} {changed}: the error names none of the changed keys: {e}"
        return
    # it built: every size the file states is the model's, nothing replaced silently
    for key, want in config.items():
        attribute, want = _expected(family, config, key)
        if attribute is not None and want is not None:  # None: the documented default
            got = getattr(transformer, attribute)
            assert got == want, f"{family} {changed}: {key}={want!r} built {attribute}={got!r}"
    table = transformer.model.get_layer("Embedding-Token").embeddings
    assert tuple(table.shape) == (transformer.vocab_size, transformer.embedding_size)


def test_the_fuzz_covers_every_family_and_kind_of_change():
    families, kinds = set(), set()
    for seed in range(FUZZ_CASES):
        family, _, changed = _fuzz_case(seed)
        families.add(family)
        kinds |= {"delete" if v is DELETE else type(v).__name__ for v in changed.values()}
    assert families == set(BASES)
    assert kinds >= {"delete", "int", "float", "str", "NoneType", "bool", "list", "dict"}


@pytest.mark.parametrize(
    "model, kwargs, message",
    [
        ("nezha", dict(hidden_size=15, num_attention_heads=3), "must be even"),
        ("roformer", dict(attention_key_size=5), "must be even"),
        ("roformer_v2", dict(num_attention_heads=3, attention_head_size=7), "must be even"),
        ("t5.1.1", dict(relative_attention_num_buckets=2), "num_buckets 2 must be >= 4"),
        (
            "t5.1.1",
            dict(relative_attention_num_buckets=32, relative_attention_max_distance=16),
            "max_distance 16",
        ),
    ],
)
def test_architecture_rules_are_checked_before_building(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(model, **kwargs)
