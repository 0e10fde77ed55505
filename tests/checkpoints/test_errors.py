"""Bad checkpoints: one clear error naming the problem, and never a half-loaded model.

Every failing load is made into an already built model whose weights are
snapshotted first; after the error they must be bit-for-bit unchanged.
"""

import json
import os
import warnings

import numpy as np
import pytest

from kerasformers import CheckpointError, build_transformer_model

CONFIG = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position=32,
)
HEADS = dict(with_mlm=True, with_nsp=True)


def make(**kwargs):
    """Our small BERT with every head, as the Transformer object."""
    return build_transformer_model(None, return_keras_model=False, **{**CONFIG, **HEADS, **kwargs})


def checkpoint(naming="google", **kwargs):
    """{name: array} for `make(**kwargs)`, with deterministic values unlike any init."""
    rng = np.random.RandomState(0)
    names = make(**kwargs).export_weights(naming)
    return {k: rng.standard_normal(v.shape).astype("float32") for k, v in sorted(names.items())}


def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.model.weights}


def assert_unchanged(model, before):
    after = snapshot(model)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=f"{path} changed")


def fails(model, source, match, error=CheckpointError):
    """Loading `source` into `model` raises one `error` matching `match`; nothing changes."""
    before = snapshot(model)
    with pytest.raises(error, match=match) as info:
        model.load_weights_from_checkpoint(source)
    assert_unchanged(model, before)
    return str(info.value)


Q0 = "bert/encoder/layer_0/attention/self/query/kernel"
HF_Q0 = "bert.encoder.layer.0.attention.self.query.weight"


# ------------------------------------------------------------------ contents


@pytest.mark.parametrize("naming", ["google", "hf"])
def test_missing_keys_are_all_listed_by_name(naming):
    tensors = checkpoint(naming)
    gone = sorted(tensors)[::7][:4]
    for name in gone:
        del tensors[name]
    message = fails(make(), tensors, "does not fit the model")
    for name in gone:
        assert f"missing: {name!r}" in message, (name, message)
    assert message.count("missing:") == len(gone)
    assert "Nothing was loaded" in message


def test_shape_mismatch_says_expected_and_found():
    tensors = checkpoint()
    tensors[Q0] = tensors[Q0][:, :8]
    message = fails(make(), tensors, "shape mismatch")
    assert Q0 in message and "expected (16, 16), found (16, 8)" in message
    assert message.count("shape mismatch") == 1


def test_vocab_size_mismatch():
    message = fails(make(vocab_size=60), checkpoint(), "vocabulary size")
    assert "'bert/embeddings/word_embeddings'" in message
    assert "expected (60, 16), found (50, 16)" in message
    assert "'cls/predictions/output_bias'" in message  # the MLM bias is vocabulary-sized too
    assert "the model has 60 tokens, the checkpoint 50" in message


def test_keep_tokens_outside_the_vocabulary():
    message = fails(make(keep_tokens=[0, 1, 2, 70]), checkpoint(), "keep_tokens")
    assert "'bert/embeddings/word_embeddings'" in message and "50 rows" in message


def test_config_mismatch_lists_every_tensor():
    """A config with another hidden_size: every affected tensor, in one error."""
    tensors = checkpoint()
    message = fails(make(hidden_size=8, num_attention_heads=2), tensors, "shape mismatch")
    assert message.count("shape mismatch") == sum(
        16 in v.shape for v in tensors.values()
    )  # all of them, none skipped


def test_checkpoint_with_more_layers_than_the_config():
    tensors = checkpoint(num_hidden_layers=3)
    extra = sorted(k for k in tensors if "layer_2/" in k)
    assert len(extra) == 16
    message = fails(make(), tensors, "unexpected")
    for name in extra:
        assert f"unexpected: {name!r}" in message
    assert message.count("unexpected:") == len(extra)
    assert "missing" not in message


def test_wrong_family_checkpoint():
    """An ALBERT checkpoint into model='bert': the BERT names it lacks are listed."""
    albert = build_transformer_model(
        None, model="albert", return_keras_model=False, **CONFIG, **HEADS
    ).export_weights("google")
    message = fails(make(), albert, "missing")
    assert f"missing: {Q0!r}" in message
    assert "missing: 'bert/encoder/layer_1/output/LayerNorm/gamma'" in message


def test_ignore_invalid_weights_loads_the_rest_and_lists_the_skipped():
    tensors = checkpoint(num_hidden_layers=3)
    del tensors["bert/pooler/dense/bias"]
    tensors[Q0] = tensors[Q0][:, :8]
    model = make(ignore_invalid_weights=True)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="skipped") as record:
        report = model.load_weights_from_checkpoint(tensors)
    text = "\n".join(str(w.message) for w in record)
    assert "'bert/pooler/dense/bias'" in text and Q0 in text
    assert "'bert/encoder/layer_2/output/dense/kernel'" in text

    assert report.missing == [("Pooler-Dense/bias", "bert/pooler/dense/bias")]
    assert report.mismatched == [
        ("Transformer-0-MultiHeadSelfAttention/q_dense/kernel", Q0, (16, 16), (16, 8))
    ]
    assert sorted(report.unexpected) == sorted(k for k in tensors if "layer_2/" in k)
    assert not report.ok

    after = snapshot(model)
    skipped = {"Pooler-Dense/bias", "Transformer-0-MultiHeadSelfAttention/q_dense/kernel"}
    for path in skipped:  # left as they were
        np.testing.assert_array_equal(after[path], before[path])
    exported = model.export_weights("google")
    assert len(report.loaded) == len(after) - len(skipped)
    for row in model.weight_table():
        if row[0] in report.loaded:  # loaded ones hold the checkpoint's values
            name = row[1] if isinstance(row[1], str) else row[1].name
            np.testing.assert_array_equal(exported[name], tensors[name], err_msg=name)

    # The same through the builder: a model comes back, with a warning.
    with pytest.warns(UserWarning, match="skipped"):
        build_transformer_model(None, tensors, ignore_invalid_weights=True, **CONFIG, **HEADS)
    with pytest.raises(CheckpointError, match="ignore_invalid_weights=True"):
        build_transformer_model(None, tensors, **CONFIG, **HEADS)


# --------------------------------------------------------------------- files


def test_truncated_safetensors(tmp_path):
    make().save_weights_as_checkpoint(str(tmp_path), naming="hf")
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    fails(make(), str(path), "truncated")
    path.write_bytes(data[:50])  # cut inside the JSON header
    fails(make(), str(tmp_path), "corrupt safetensors header")


def test_corrupt_safetensors_header(tmp_path):
    make().save_weights_as_checkpoint(str(tmp_path), naming="hf")
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff\x00garbage-bytes!"
    path.write_bytes(bytes(data))
    fails(make(), str(path), "corrupt safetensors header")
    path.write_bytes((2**62).to_bytes(8, "little") + bytes(data[8:]))  # absurd header length
    fails(make(), str(path), "corrupt safetensors header")
    path.write_bytes(b"\x01\x02")
    fails(make(), str(path), "not a safetensors file")
    header = b'["valid JSON, not a header"]'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    fails(make(), str(path), "corrupt safetensors header")


def test_missing_shard(tmp_path):
    from safetensors.numpy import save_file

    tensors = checkpoint("hf")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(tmp_path / file))
        weight_map.update(dict.fromkeys(part, file))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = make()
    model.load_weights_from_checkpoint(str(tmp_path))  # complete: loads
    np.testing.assert_array_equal(model.export_weights("hf")[HF_Q0], tensors[HF_Q0])
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    message = fails(make(), str(tmp_path), "not found")
    assert "model-00002-of-00002.safetensors" in message


def _google_files(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    make().save_weights_as_checkpoint(prefix, naming="google")
    return prefix, prefix + ".index", prefix + ".data-00000-of-00001"


def test_truncated_tf_data_file(tmp_path):
    prefix, _, data_file = _google_files(tmp_path)
    with open(data_file, "rb") as f:
        data = f.read()
    with open(data_file, "wb") as f:
        f.write(data[: len(data) // 2])
    message = fails(make(), prefix, "truncated")
    assert data_file in message


def test_corrupt_tf_data_file(tmp_path):
    prefix, _, data_file = _google_files(tmp_path)
    with open(data_file, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x40]))
    fails(make(), prefix, "CRC32C mismatch")


def test_corrupt_tf_index(tmp_path):
    prefix, index, _ = _google_files(tmp_path)
    with open(index, "rb") as f:
        data = bytearray(f.read())
    original = bytes(data)
    data[len(data) // 3] ^= 0xFF  # inside a data block: its CRC no longer matches
    with open(index, "wb") as f:
        f.write(bytes(data))
    message = fails(make(), prefix, "corrupt checkpoint index")
    assert index in message
    with open(index, "wb") as f:
        f.write(original[:-10])  # footer gone
    fails(make(), prefix, "corrupt checkpoint index")


def test_nonexistent_path(tmp_path):
    for path in [
        tmp_path / "nope" / "bert_model.ckpt",
        tmp_path / "model.safetensors",
        tmp_path / "pytorch_model.bin",
        tmp_path / "no_such_dir" / "",
    ]:
        message = fails(make(), str(path), "not found")
        assert str(path).rstrip("/") in message
    with pytest.raises(CheckpointError, match="not found"):
        build_transformer_model(None, str(tmp_path / "nope.ckpt"), **CONFIG)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        build_transformer_model(str(tmp_path / "bert_config.json"), **CONFIG)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    message = fails(make(), str(tmp_path), "no weights found")
    assert str(tmp_path) in message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **CONFIG}))
    with pytest.raises(CheckpointError, match="no weights found"):
        build_transformer_model(checkpoint_path=str(tmp_path))  # the config alone is no model


def test_wrong_model_name():
    with pytest.raises(ValueError, match=r"Unknown model 'bret'.*albert.*bert") as info:
        build_transformer_model(None, model="bret", **CONFIG)
    assert not isinstance(info.value, CheckpointError)


# ------------------------------------------------------------------- pickles


class _Evil:
    """Unpickling this runs open(target, 'w'), i.e. creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_malicious_pytorch_bin_is_not_executed(zipfile, tmp_path):
    import torch

    target = str(tmp_path / "pwned")
    state = {k: torch.from_numpy(v) for k, v in checkpoint("hf").items()}
    state["payload"] = _Evil(target)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    assert not os.path.exists(target)
    message = fails(make(), str(tmp_path), "cannot read PyTorch checkpoint")
    assert str(path) in message
    assert not os.path.exists(target), "the pickle's code ran"


def test_clean_pytorch_bin_loads(tmp_path):
    """Control for the test above: the same file without the payload loads."""
    import torch

    tensors = checkpoint("hf")
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "pytorch_model.bin")
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing, nothing unused
        report = model.load_weights_from_checkpoint(str(tmp_path))
    assert report.ok and len(report.loaded) == len(model.model.weights)
    np.testing.assert_array_equal(model.export_weights("hf")[HF_Q0], tensors[HF_Q0])
