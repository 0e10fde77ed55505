"""bfloat16 checkpoint tensors: one widening rule (kerasformers.checkpoints.bfloat16).

Pinned behaviour: the TF reader returns a stored bfloat16 tensor as an
``ml_dtypes.bfloat16`` array with the stored bits; every checkpoint Source (TF,
safetensors, pytorch_model.bin) returns it widened exactly to float32, so what
the loader computes from it (compound_tokens averages) does not depend on the
format. Before, TF checkpoints gave bfloat16 to the loader and compound rows
were rounded to bfloat16, while safetensors/.bin gave float32.
"""

import json
import struct

import keras
import ml_dtypes
import numpy as np
import pytest

from kerasformers.checkpoints import bfloat16 as bfloat16_module
from kerasformers.checkpoints import loader
from kerasformers.checkpoints.bfloat16 import bfloat16_from_bits, widen_bfloat16
from kerasformers.checkpoints.sources import open_checkpoint
from kerasformers.checkpoints.tf_checkpoint import TFCheckpointReader, save_tf_checkpoint

# 1.5, -2.25, largest finite, smallest subnormal, -0, +inf, a NaN, 1/3 rounded
BITS = np.array([0x3FC0, 0xC010, 0x7F7F, 0x0001, 0x8000, 0x7F80, 0x7FC1, 0x3EAB], np.uint16)
WIDENED_BITS = BITS.astype(np.uint32) << 16


def _write_safetensors(path, name, bits):
    data = bits.astype("<u2").tobytes()
    header = json.dumps(
        {name: {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [0, len(data)]}}
    ).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def _checkpoints(tmp_path, bits=BITS):
    save_tf_checkpoint(tmp_path / "model.ckpt", {"w": bits.view(ml_dtypes.bfloat16)})
    _write_safetensors(tmp_path / "model.safetensors", "w", bits)
    paths = {"tf": str(tmp_path / "model.ckpt"), "safetensors": str(tmp_path / "model.safetensors")}
    try:
        import torch
    except ImportError:
        return paths
    tensor = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
    torch.save({"w": tensor}, tmp_path / "pytorch_model.bin")
    paths["bin"] = str(tmp_path / "pytorch_model.bin")
    return paths


def test_tf_reader_returns_the_stored_bfloat16(tmp_path):
    _checkpoints(tmp_path)
    got = TFCheckpointReader(tmp_path / "model.ckpt").get_tensor("w")
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.view(np.uint16), BITS)


def test_every_source_widens_bfloat16_to_float32_exactly(tmp_path):
    for fmt, path in _checkpoints(tmp_path).items():
        got = open_checkpoint(path).get("w")
        assert got.dtype == np.float32, fmt
        np.testing.assert_array_equal(got.view(np.uint32), WIDENED_BITS, err_msg=fmt)


def test_widening_matches_ml_dtypes_and_byte_order():
    widened = widen_bfloat16(BITS)
    expected = BITS.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), expected.view(np.uint32))
    assert widened[0] == 1.5 and widened[1] == -2.25 and np.isinf(widened[5])
    np.testing.assert_array_equal(widen_bfloat16(BITS.view(ml_dtypes.bfloat16)), widened)
    np.testing.assert_array_equal(widen_bfloat16(BITS.astype(">u2")), widened)
    np.testing.assert_array_equal(bfloat16_from_bits(BITS.astype(">u2")).view(np.uint16), BITS)


def test_compound_tokens_average_in_float32_for_every_format(tmp_path):
    # rows 1.5 and 0.333984375 (both bfloat16); their mean 0.9169921875 is not a bfloat16
    bits = np.array([[0x3FC0, 0x3FC0], [0x3EAB, 0x3EAB]], np.uint16)
    rows = widen_bfloat16(bits)

    def vocab_fn(embeddings):  # as Transformer.load_embeddings: append the mean of rows 0, 1
        mean = np.einsum("n,n...->...", np.array([0.5, 0.5]), embeddings)
        return np.concatenate([embeddings, np.asarray([mean], dtype=embeddings.dtype)])

    for fmt, path in _checkpoints(tmp_path, bits).items():
        variable = keras.Variable(np.zeros((3, 2), "float32"))
        loader.load_weights(
            {"emb": variable}, [("emb", "w", "w")], path, vocab_fn=vocab_fn, vocab_paths={"emb"}
        )
        got = keras.ops.convert_to_numpy(variable)
        np.testing.assert_array_equal(got[:2], rows, err_msg=fmt)
        np.testing.assert_array_equal(got[2], [0.9169921875] * 2, err_msg=fmt)


@pytest.mark.parametrize("fmt", ["tf", "safetensors"])
def test_without_ml_dtypes_every_format_still_widens(tmp_path, monkeypatch, fmt):
    path = _checkpoints(tmp_path)[fmt]
    monkeypatch.setattr(bfloat16_module, "_ml_dtypes", None)
    got = open_checkpoint(path).get("w")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), WIDENED_BITS)
