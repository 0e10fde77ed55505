"""Every checkpoint format we read or write, proven against the references.

* Google TF checkpoints with the ORIGINAL variable names (SPEC §1.2): a random
  transformers model is renamed to the Google names by an independent converter
  written here from the spec, written by TensorFlow itself (`tf.raw_ops.SaveV2`;
  the test dependency `tensorflow-cpu`), loaded by `build_transformer_model` and compared
  with transformers and with the HF-loaded model (1e-4, padded batch). The
  converter's names are also the names our `save_weights_as_checkpoint` writes.
* Our Google checkpoints are read by TensorFlow's `tf.train.load_checkpoint`.
* Our HF directories are read by transformers' `from_pretrained`.
* HF sharded safetensors, pytorch_model.bin (sharded too), bf16 safetensors,
  dict checkpoints, and `keep_tokens` on both naming schemes.
"""

import copy
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.checkpoints.tf_checkpoint import TFCheckpointReader
from tests.utils import assert_close, batch, randomize_torch, run

NEZHA_FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nezha")

SMALL = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# key: (config class, model class, config overrides, our model key, our heads)
CASES = {
    "bert": (
        "BertConfig",
        "BertForPreTraining",
        {},
        "bert",
        dict(with_mlm="linear", with_nsp=True),
    ),
    "bert_mlm": ("BertConfig", "BertForMaskedLM", {}, "bert", dict(with_mlm="linear")),
    "roberta": (
        "RobertaConfig",
        "RobertaForMaskedLM",
        dict(pad_token_id=1, type_vocab_size=1, max_position_embeddings=66),
        "roberta",
        dict(with_mlm="linear"),
    ),
    "albert": (
        "AlbertConfig",
        "AlbertForPreTraining",
        dict(embedding_size=16),
        "albert",
        dict(with_mlm="linear", with_nsp=True),
    ),
    "albert_mlm": (
        "AlbertConfig",
        "AlbertForMaskedLM",
        dict(embedding_size=16),
        "albert",
        dict(with_mlm="linear"),
    ),
    "electra": (
        "ElectraConfig",
        "ElectraForPreTraining",
        dict(embedding_size=16),
        "electra",
        dict(with_discriminator="linear"),
    ),
    "roformer": (
        "RoFormerConfig",
        "RoFormerForMaskedLM",
        dict(embedding_size=16),
        "roformer",
        dict(with_mlm="linear"),
    ),
}
GOOGLE_CASES = ["bert", "albert", "electra", "roformer", "nezha"]
HF_CASES = ["bert", "bert_mlm", "roberta", "albert_mlm", "electra", "roformer"]


# --------------------------------------------------------------------------
# The independent converter: HF state dict -> original Google variable names.
# Written from SPEC §1.2, not from kerasformers' weight tables.
# --------------------------------------------------------------------------

# HF tensors that have no Google counterpart: buffers, the sinusoidal RoFormer
# table, and the MLM decoder (tied to the word embeddings; its bias is
# `cls.predictions.bias`).
_NOT_IN_GOOGLE = re.compile(
    r"(position_ids|embed_positions\.weight|relative_positions_encoding"
    r"|predictions\.decoder\.(weight|bias))$"
)

_ALBERT_BLOCK = "bert/encoder/transformer/group_0/inner_group_0/"
_RENAMES = {
    "bert": [],
    "nezha": [(r"^nezha\.", "bert.")],
    "roformer": [
        (r"^roformer\.embeddings_project\.", "bert.encoder.embedding_hidden_mapping_in."),
        (r"^roformer\.", "bert."),
    ],
    "electra": [
        (r"^discriminator_predictions\.dense_prediction\.", "discriminator_predictions.dense_1.")
    ],
    "albert": [
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.attention\."
            r"(query|key|value)\.",
            _ALBERT_BLOCK + r"attention_1/self/\1.",
        ),
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.attention\.dense\.",
            _ALBERT_BLOCK + "attention_1/output/dense.",
        ),
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.attention\.LayerNorm\.",
            _ALBERT_BLOCK + "LayerNorm.",
        ),
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.ffn\.",
            _ALBERT_BLOCK + "ffn_1/intermediate/dense.",
        ),
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.ffn_output\.",
            _ALBERT_BLOCK + "ffn_1/intermediate/output/dense.",
        ),
        (
            r"^albert\.encoder\.albert_layer_groups\.0\.albert_layers\.0\.full_layer_layer_norm\.",
            _ALBERT_BLOCK + "LayerNorm_1.",
        ),
        (r"^albert\.pooler\.", "bert.pooler.dense."),
        (r"^albert\.", "bert."),
        (r"^predictions\.bias$", "cls.predictions.bias"),
        (r"^predictions\.(dense|LayerNorm)\.", r"cls.predictions.transform.\1."),
        (r"^sop_classifier\.classifier\.", "cls.seq_relationship."),
    ],
}
_COMMON = [
    (r"\.layer\.(\d+)\.", r".layer_\1."),
    (r"^cls\.predictions\.bias$", "cls/predictions/output_bias"),
    # TF keeps the NSP matrix as [2, hidden], i.e. like torch: NOT transposed.
    (r"^cls\.seq_relationship\.weight$", "cls/seq_relationship/output_weights"),
    (r"^cls\.seq_relationship\.bias$", "cls/seq_relationship/output_bias"),
]


def to_google(state, family):
    """{HF name: array} -> {original Google TF name: array}."""
    out = {}
    for name, value in state.items():
        if _NOT_IN_GOOGLE.search(name):
            continue
        for pattern, repl in _RENAMES[family] + _COMMON:
            name = re.sub(pattern, repl, name)
        if "." in name:  # not fully renamed yet: module path + weight/bias
            module, param = name.rsplit(".", 1)
            module = module.replace(".", "/")
            last = module.rsplit("/", 1)[-1]
            if last.startswith("LayerNorm"):
                name = f"{module}/{'gamma' if param == 'weight' else 'beta'}"
            elif last.endswith("_embeddings"):
                name = module
            elif param == "weight":  # torch Linear [out, in] -> TF Dense kernel [in, out]
                name, value = f"{module}/kernel", value.T
            else:
                name = f"{module}/bias"
        assert name not in out, f"converter maps two tensors to {name}"
        out[name] = np.ascontiguousarray(value)
    return out


def google_config(hf_config, with_embedding_size=True):
    """A Google-style bert_config.json (no model_type, no layer_norm_eps) from an HF config."""
    keys = [
        "attention_probs_dropout_prob",
        "hidden_act",
        "hidden_dropout_prob",
        "hidden_size",
        "initializer_range",
        "intermediate_size",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "type_vocab_size",
        "vocab_size",
        "max_relative_position",
    ]
    if with_embedding_size:
        keys.append("embedding_size")
    return {k: hf_config[k] for k in keys if k in hf_config}


def write_tf_checkpoint(prefix, tensors):
    """A real TF checkpoint, written by TensorFlow itself."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    assert os.path.exists(prefix + ".index")


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


class Reference:
    """A random HF model (or the NEZHA fixture): saved dir, state dict, expected outputs."""

    def __init__(self, key, folder):
        self.key = key
        if key == "nezha":
            self._from_fixture()
            return
        config_cls, model_cls, extra, self.model_key, self.heads = CASES[key]
        self.family = self.model_key
        config = getattr(transformers, config_cls)(**{**SMALL, **extra})
        torch.manual_seed(0)
        self.hf = randomize_torch(getattr(transformers, model_cls)(config))
        self.model_cls = model_cls
        self.hf.save_pretrained(folder)
        self.folder = folder
        self.config = config.to_dict()
        self.state = {k: v.detach().numpy().copy() for k, v in self.hf.state_dict().items()}
        self.pad = config.pad_token_id or 0
        self.ids, self.seg = batch(
            lengths=(11, 7, 4), pad=self.pad, segments=config.type_vocab_size > 1
        )
        self.expected = self.hf_outputs(self.hf, self.ids, self.seg)

    def _from_fixture(self):
        from safetensors.numpy import load_file

        self.model_key = self.family = "nezha"
        self.heads = dict(with_mlm="linear", with_nsp=True)
        self.folder = NEZHA_FIXTURE
        with open(os.path.join(NEZHA_FIXTURE, "config.json")) as f:
            self.config = json.load(f)
        self.state = load_file(os.path.join(NEZHA_FIXTURE, "model.safetensors"))
        e = np.load(os.path.join(NEZHA_FIXTURE, "expected.npz"))
        self.pad = 0
        self.ids, self.seg = e["token_ids"], e["segment_ids"]
        self.expected = [softmax(e["nsp_logits"]), e["mlm_logits"]]

    @property
    def mask(self):
        return self.ids != self.pad

    def hf_outputs(self, hf, ids, seg):
        """transformers' outputs, in our output order (NSP as probabilities)."""
        with torch.no_grad():
            out = hf(
                input_ids=torch.tensor(ids),
                token_type_ids=torch.tensor(seg),
                attention_mask=torch.tensor(ids != self.pad),
            )
        logits = out.prediction_logits if "prediction_logits" in out else out.logits
        logits = logits.numpy()
        sop = out.get("seq_relationship_logits", out.get("sop_logits"))
        if self.key == "electra":
            logits = logits[..., None]
        if sop is not None:
            return [softmax(sop.numpy()), logits]
        return logits

    def check(self, outputs, what, expected=None, mask=None):
        """Assert our outputs equal the expected ones at every real position."""
        expected = self.expected if expected is None else expected
        mask = self.mask if mask is None else mask
        if isinstance(expected, list):
            assert isinstance(outputs, list) and len(outputs) == 2, what
            assert_close(outputs[0], expected[0], what=f"{self.key} {what} NSP")
            assert_close(outputs[1], expected[1], mask, what=f"{self.key} {what} head")
        else:
            assert_close(outputs, expected, mask, what=f"{self.key} {what}")


_CACHE = {}


def get_reference(key, tmp_path_factory):
    if key not in _CACHE:
        folder = None if key == "nezha" else str(tmp_path_factory.mktemp(f"hf_{key}"))
        _CACHE[key] = Reference(key, folder)
    return _CACHE[key]


def weights_of(transformer):
    return {v.path: np.asarray(v.numpy()) for v in transformer.model.weights}


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert sorted(wa) == sorted(wb)
    for path in wa:
        assert wa[path].dtype == wb[path].dtype, path
        np.testing.assert_array_equal(wa[path], wb[path], err_msg=path)


# --------------------------------------------------------------------------
# Google TF checkpoints with the original names
# --------------------------------------------------------------------------


@pytest.mark.parametrize("key", GOOGLE_CASES)
def test_google_checkpoint_with_original_names(key, tmp_path, tmp_path_factory):
    ref = get_reference(key, tmp_path_factory)
    tensors = to_google(ref.state, ref.family)
    assert all("." not in name for name in tensors), sorted(tensors)
    prefix = str(tmp_path / "google" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    write_tf_checkpoint(prefix, tensors)
    config_path = str(tmp_path / "google" / "bert_config.json")
    with open(config_path, "w") as f:
        json.dump(google_config(ref.config), f)

    ours = build_transformer_model(
        config_path, prefix, model=ref.model_key, return_keras_model=False, **ref.heads
    )
    from_google = run(ours.model, [ref.ids, ref.seg])
    ref.check(from_google, "Google checkpoint vs transformers")

    from_hf = run(
        build_transformer_model(checkpoint_path=ref.folder, **ref.heads), [ref.ids, ref.seg]
    )
    ref.check(from_google, "Google vs HF-loaded", expected=from_hf)

    # The names contract: what we write is exactly the original names, same values.
    written = str(tmp_path / "ours" / "model.ckpt")
    ours.save_weights_as_checkpoint(written, naming="google")
    reader = TFCheckpointReader(written)
    assert sorted(reader.keys()) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)

    # ... and it loads back into a fresh model bit for bit.
    fresh = build_transformer_model(
        config_path, written, model=ref.model_key, return_keras_model=False, **ref.heads
    )
    assert_same_weights(fresh, ours)


@pytest.mark.parametrize("key", ["bert", "albert", "electra", "roformer"])
def test_google_checkpoint_written_by_us_is_read_by_tensorflow(key, tmp_path, tmp_path_factory):
    ref = get_reference(key, tmp_path_factory)
    ours = build_transformer_model(
        checkpoint_path=ref.folder, return_keras_model=False, **ref.heads
    )
    prefix = str(tmp_path / "out" / "bert_model.ckpt")
    ours.save_weights_as_checkpoint(prefix, naming="google")
    exported = ours.export_weights("google")
    assert len(exported) == len(ours.model.weights)  # every weight has a Google name

    tf_reader = tf.train.load_checkpoint(prefix)
    assert tf_reader.get_variable_to_shape_map() == {k: list(v.shape) for k, v in exported.items()}
    our_reader = TFCheckpointReader(prefix)
    for name, value in exported.items():
        from_tf = tf_reader.get_tensor(name)
        assert from_tf.dtype == np.float32, name
        np.testing.assert_array_equal(from_tf, value, err_msg=name)
        np.testing.assert_array_equal(our_reader.get_tensor(name), value, err_msg=name)
    assert {n for n, _ in tf.train.list_variables(prefix)} == set(exported)


# --------------------------------------------------------------------------
# HF directories written by us, read by transformers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("key", HF_CASES)
def test_hf_directory_loads_in_transformers(key, tmp_path, tmp_path_factory):
    ref = get_reference(key, tmp_path_factory)
    ours = build_transformer_model(
        checkpoint_path=ref.folder, return_keras_model=False, **ref.heads
    )
    out = str(tmp_path / "hf")
    ours.save_weights_as_checkpoint(out, naming="hf")

    from safetensors.numpy import load_file

    written = load_file(os.path.join(out, "model.safetensors"))
    for name, value in written.items():  # the very tensors transformers saved
        expected = ref.state[name]
        if key == "roberta" and name.endswith("position_embeddings.weight"):
            value, expected = value[2:], expected[2:]  # rows < pad + 1 are never used
        np.testing.assert_array_equal(value, expected, err_msg=name)

    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["architectures"] == [ref.model_cls]
    auto = (
        transformers.AutoModelForPreTraining
        if "PreTraining" in ref.model_cls
        else transformers.AutoModelForMaskedLM
    )
    hf, info = auto.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == ref.model_cls
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers reports {problems}"
    ref.check(ref.hf_outputs(hf.eval(), ref.ids, ref.seg), "our HF dir in transformers")

    # Round trip: the directory (config.json included) rebuilds the same model.
    again = build_transformer_model(checkpoint_path=out, return_keras_model=False, **ref.heads)
    assert_same_weights(again, ours)


# --------------------------------------------------------------------------
# Other HF formats
# --------------------------------------------------------------------------


def test_sharded_safetensors(tmp_path, tmp_path_factory):
    ref = get_reference("bert", tmp_path_factory)
    folder = str(tmp_path / "sharded")
    ref.hf.save_pretrained(folder, max_shard_size=30_000)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 2, shards
    assert not os.path.exists(os.path.join(folder, "model.safetensors"))
    ref.check(
        run(build_transformer_model(checkpoint_path=folder, **ref.heads), [ref.ids, ref.seg]),
        "sharded safetensors",
    )


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_pytorch_bin(sharded, tmp_path, tmp_path_factory):
    ref = get_reference("albert", tmp_path_factory)
    folder = tmp_path / "bin"
    ref.hf.config.save_pretrained(folder)
    state = ref.hf.state_dict()
    if not sharded:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        names = sorted(state)
        parts = {
            "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
            "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
        }
        weight_map = {}
        for file, part in parts.items():
            torch.save({k: state[k] for k in part}, folder / file)
            weight_map.update(dict.fromkeys(part, file))
        with open(folder / "pytorch_model.bin.index.json", "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    assert not any(f.endswith(".safetensors") for f in os.listdir(folder))
    ref.check(
        run(build_transformer_model(checkpoint_path=str(folder), **ref.heads), [ref.ids, ref.seg]),
        "pytorch_model.bin",
    )


def test_bf16_safetensors(tmp_path, tmp_path_factory):
    ref = get_reference("bert", tmp_path_factory)
    folder = str(tmp_path / "bf16")
    hf16 = copy.deepcopy(ref.hf).to(torch.bfloat16)
    hf16.save_pretrained(folder)
    rounded = {k: v.float().numpy() for k, v in hf16.state_dict().items()}
    ours = build_transformer_model(checkpoint_path=folder, return_keras_model=False, **ref.heads)
    exported = ours.export_weights("hf")
    assert len(exported) == len(ours.model.weights)
    changed = 0
    for name, value in exported.items():
        assert value.dtype == np.float32, name
        np.testing.assert_array_equal(value, rounded[name], err_msg=name)
        changed += not np.array_equal(value, np.asarray(ref.state[name]))
    assert changed > len(exported) // 2  # bf16 rounding really happened
    out = run(ours.model, [ref.ids, ref.seg])
    assert all(np.isfinite(o).all() for o in out)


# --------------------------------------------------------------------------
# dict checkpoints and keep_tokens
# --------------------------------------------------------------------------


def _config_file(ref):
    return os.path.join(ref.folder, "config.json")


@pytest.mark.parametrize("naming", ["hf", "google"])
def test_dict_checkpoint(naming, tmp_path_factory):
    ref = get_reference("bert", tmp_path_factory)
    tensors = ref.state if naming == "hf" else to_google(ref.state, "bert")
    model = build_transformer_model(_config_file(ref), dict(tensors), **ref.heads)
    ref.check(run(model, [ref.ids, ref.seg]), f"{naming} dict")


@pytest.mark.parametrize("naming", ["hf", "google"])
def test_keep_tokens(naming, tmp_path, tmp_path_factory):
    ref = get_reference("bert", tmp_path_factory)
    rng = np.random.RandomState(7)
    keep = [0] + sorted(rng.choice(np.arange(1, SMALL["vocab_size"]), 40, replace=False).tolist())
    new_ids, seg = batch(vocab_size=len(keep), lengths=(11, 7, 4), low=1, seed=3)
    old_ids = np.asarray(keep)[new_ids]
    expected = ref.hf_outputs(ref.hf, old_ids, seg)
    expected[1] = expected[1][..., keep]

    if naming == "hf":
        checkpoint, config = ref.folder, _config_file(ref)
    else:
        checkpoint = str(tmp_path / "model.ckpt")
        write_tf_checkpoint(checkpoint, to_google(ref.state, "bert"))
        config = google_config(ref.config)
    ours = build_transformer_model(
        config, checkpoint, keep_tokens=keep, return_keras_model=False, **ref.heads
    )
    variables = ours.variables()
    np.testing.assert_array_equal(
        variables["Embedding-Token/embeddings"].numpy(),
        ref.state["bert.embeddings.word_embeddings.weight"][keep],
    )
    np.testing.assert_array_equal(
        variables["MLM-Bias/beta"].numpy(), ref.state["cls.predictions.bias"][keep]
    )
    ref.check(
        run(ours.model, [new_ids, seg]),
        f"keep_tokens ({naming})",
        expected=expected,
        mask=new_ids != 0,
    )
