"""LoRA adapters: enable_lora, save_lora_weights, load_lora_weights."""

import json

import keras
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from kerasformers import build_transformer_model
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.lora import enable_lora, load_lora_weights, lora_weights, save_lora_weights
from tests.utils import batch, single_thread_torch, to_numpy  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread_torch")

SMALL = dict(
    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
)


def build(model="bert", **kwargs):
    kwargs = {**SMALL, **kwargs}
    if model == "bert":
        kwargs.setdefault("with_mlm", "linear")
    return build_transformer_model(None, model=model, **kwargs)


def inputs(model):
    ids, seg = batch(vocab_size=SMALL["vocab_size"], lengths=(7, 5, 3))
    return [ids, seg] if len(model.inputs) == 2 else ids


def values(variables):
    return {v.path: to_numpy(v) for v in variables}


def adapter_paths(layers, targets, names=("lora_kernel_a", "lora_kernel_b")):
    return {f"{layer}/{t}/{n}" for layer in layers for t in targets for n in names}


BERT_ATTENTION = [f"Transformer-{i}-MultiHeadSelfAttention" for i in range(2)]


def test_only_the_adapters_are_trainable_and_outputs_start_unchanged():
    model = build()
    x = inputs(model)
    before, base = to_numpy(model(x)), values(model.weights)
    enable_lora(model, rank=2)
    trainable = {v.path for v in model.trainable_weights}
    assert trainable == adapter_paths(BERT_ATTENTION, ("q_dense", "v_dense"))
    assert set(lora_weights(model)) == trainable
    assert {v.path for v in model.non_trainable_weights} == set(base)
    np.testing.assert_array_equal(to_numpy(model(x)), before)  # B starts at zero


@pytest.mark.parametrize(
    "model, attention",
    [
        ("albert", ["Transformer-MultiHeadSelfAttention"]),  # one shared block: adapted once
        (
            "t5.1.1",
            [
                "Encoder-Transformer-0-MultiHeadSelfAttention",
                "Encoder-Transformer-1-MultiHeadSelfAttention",
                "Decoder-Transformer-0-MultiHeadSelfAttention",
                "Decoder-Transformer-0-MultiHeadCrossAttention",
                "Decoder-Transformer-1-MultiHeadSelfAttention",
                "Decoder-Transformer-1-MultiHeadCrossAttention",
            ],
        ),
    ],
)
def test_every_attention_layer_gets_every_target(model, attention):
    model = build(model, **({"embedding_size": 8} if model == "albert" else {}))
    targets = ("q_dense", "k_dense", "v_dense", "o_dense")
    enable_lora(model, rank=3, targets=targets, alpha=6)
    assert {v.path for v in model.trainable_weights} == adapter_paths(attention, targets)
    for v in lora_weights(model).values():
        assert 3 in v.shape


def test_enable_lora_refuses_bad_arguments():
    model = build()
    for kwargs in (dict(rank=2, targets=("i0_dense",)), dict(rank=0), dict(rank=2, targets=())):
        with pytest.raises(ValueError):
            enable_lora(model, **kwargs)
    assert not lora_weights(model) and len(model.trainable_weights) == len(model.weights)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no kerasformers MultiHeadAttention"):
        enable_lora(dense, rank=2)
    enable_lora(model, rank=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        enable_lora(model, rank=2)
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        save_lora_weights(build(), "unused.safetensors")


def fine_tuned(tmp_path, targets=("q_dense", "v_dense"), rank=2):
    """A tiny BERT MLM fine-tuned a few steps with adapters: (base weights, model, file)."""
    keras.utils.set_random_seed(0)
    model = build()
    base = model.get_weights()
    frozen = values(model.weights)
    enable_lora(model, rank=rank, targets=targets, alpha=2 * rank)
    x = inputs(model)
    y = np.random.RandomState(1).randint(0, SMALL["vocab_size"], x[0].shape)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    adapters = values(lora_weights(model).values())
    model.fit(x, y, epochs=3, batch_size=3, verbose=0)
    after = values(model.weights)
    for path, value in frozen.items():
        np.testing.assert_array_equal(after[path], value, err_msg=f"{path} was trained")
    assert all(not np.array_equal(after[p], v) for p, v in adapters.items()), "adapters idle"
    path = str(tmp_path / "adapters.safetensors")
    save_lora_weights(model, path)
    return base, model, path


def test_fine_tune_save_and_load_into_a_fresh_model(tmp_path):
    base, model, path = fine_tuned(tmp_path)
    x = inputs(model)
    expected = to_numpy(model(x))
    with safe_open(path, framework="numpy") as f:
        assert (
            set(f.keys())
            == set(lora_weights(model))
            == adapter_paths(BERT_ATTENTION, ("q_dense", "v_dense"))
        )
        assert json.loads(f.metadata()["layers"])[
            "Transformer-0-MultiHeadSelfAttention/q_dense"
        ] == {"rank": 2, "alpha": 4.0}

    fresh = build()  # adapters added by load_lora_weights from the file's metadata
    fresh.set_weights(base)
    assert np.abs(to_numpy(fresh(x)) - expected).max() > 1e-3  # the adapters matter
    load_lora_weights(fresh, path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)
    assert {v.path for v in fresh.trainable_weights} == set(lora_weights(model))

    enabled = build()  # adapters enabled by hand, then loaded
    enabled.set_weights(base)
    enable_lora(enabled, rank=2, alpha=4)
    load_lora_weights(enabled, path)
    np.testing.assert_array_equal(to_numpy(enabled(x)), expected)


def assert_untouched(model, weights):
    assert not lora_weights(model)
    for w, v in zip(weights, model.weights):
        np.testing.assert_array_equal(to_numpy(v), w)


def test_bad_files_raise_clear_errors_and_load_nothing(tmp_path):
    base, model, path = fine_tuned(tmp_path)

    # another architecture (one layer): the file's second layer does not exist
    small = build(num_hidden_layers=1)
    weights = small.get_weights()
    with pytest.raises(
        CheckpointError,
        match="Transformer-1-MultiHeadSelfAttention/q_dense, which is not a Dense layer",
    ):
        load_lora_weights(small, path)
    assert_untouched(small, weights)

    # adapters on q, k, v in the model, q and v in the file: k is missing
    more = build()
    enable_lora(more, rank=2, targets=("q_dense", "k_dense", "v_dense"), alpha=4)
    with pytest.raises(CheckpointError) as error:
        load_lora_weights(more, path)
    message = str(error.value)
    assert (
        "missing in the file: Transformer-0-MultiHeadSelfAttention/k_dense/lora_kernel_a" in message
    )
    assert (
        "Transformer-1-MultiHeadSelfAttention/k_dense has an adapter the file does not "
        "describe" in message
    )

    # adapters on q only in the model: the file's v adapters are unexpected
    fewer = build()
    enable_lora(fewer, rank=2, targets=("q_dense",), alpha=4)
    before = values(lora_weights(fewer).values())
    with pytest.raises(
        CheckpointError,
        match="unexpected in the file: Transformer-0-MultiHeadSelfAttention/v_dense",
    ):
        load_lora_weights(fewer, path)
    for p, v in lora_weights(fewer).items():
        np.testing.assert_array_equal(to_numpy(v), before[p])

    # another rank: the rank/alpha and every shape are reported
    wide = build()
    enable_lora(wide, rank=4, alpha=4)
    with pytest.raises(CheckpointError) as error:
        load_lora_weights(wide, path)
    message = str(error.value)
    assert "rank/alpha 2/4.0 in the file, 4/4 in the model" in message
    assert (
        "shape of Transformer-1-MultiHeadSelfAttention/v_dense/lora_kernel_b: (2, 16) in "
        "the file, (4, 16) in the model" in message
    )

    # a tensor of the wrong shape in an otherwise valid file
    with safe_open(path, framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    key = "Transformer-0-MultiHeadSelfAttention/q_dense/lora_kernel_a"
    tensors[key] = tensors[key][:, :1].copy()
    broken = str(tmp_path / "broken.safetensors")
    save_file(tensors, broken, metadata=metadata)
    fresh = build()
    weights = fresh.get_weights()
    with pytest.raises(
        CheckpointError, match=f"shape of {key}: \\(16, 1\\) in the file, \\(16, 2\\) in the model"
    ):
        load_lora_weights(fresh, broken)
    assert_untouched(fresh, weights)

    # not a LoRA file: a model's weights, and not a safetensors file at all
    plain = str(tmp_path / "model.safetensors")
    save_file({"kernel": np.zeros((2, 2), "float32")}, plain)
    with pytest.raises(CheckpointError, match="not a kerasformers LoRA file"):
        load_lora_weights(fresh, plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_lora_weights(fresh, str(garbage))
    with pytest.raises(FileNotFoundError):
        load_lora_weights(fresh, str(tmp_path / "absent.safetensors"))
    assert_untouched(fresh, weights)
