"""bfloat16 tensors read the same way from every checkpoint format (kerasformers.checkpoints.bfloat16).

Pinned behaviour: a stored bfloat16 tensor comes back as an ``ml_dtypes.bfloat16``
array with the stored bits unchanged, from TF checkpoints, safetensors and
pytorch_model.bin alike; without ml_dtypes it is widened exactly to float32.
"""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from kerasformers.checkpoints import bfloat16 as bfloat16_module
from kerasformers.checkpoints.bfloat16 import bfloat16_from_bits, widen_bfloat16_bits
from kerasformers.checkpoints.sources import open_checkpoint
from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint

# 1.5, -2.25, largest finite, smallest subnormal, -0, +inf, a NaN, 1/3 rounded
BITS = np.array([0x3FC0, 0xC010, 0x7F7F, 0x0001, 0x8000, 0x7F80, 0x7FC1, 0x3EAB], np.uint16)


def _write_safetensors(path, name, bits):
    data = bits.astype("<u2").tobytes()
    header = json.dumps({name: {"dtype": "BF16", "shape": list(bits.shape),
                                "data_offsets": [0, len(data)]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def _sources(tmp_path):
    values = BITS.view(ml_dtypes.bfloat16)
    save_tf_checkpoint(tmp_path / "model.ckpt", {"w": values})
    _write_safetensors(tmp_path / "model.safetensors", "w", BITS)
    sources = {"tf": open_checkpoint(str(tmp_path / "model.ckpt")),
               "safetensors": open_checkpoint(str(tmp_path / "model.safetensors"))}
    try:
        import torch
    except ImportError:
        return sources
    tensor = torch.from_numpy(BITS.view(np.int16).copy()).view(torch.bfloat16)
    torch.save({"w": tensor}, tmp_path / "pytorch_model.bin")
    sources["bin"] = open_checkpoint(str(tmp_path / "pytorch_model.bin"))
    return sources


def test_every_format_returns_the_stored_bfloat16_bits(tmp_path):
    for fmt, source in _sources(tmp_path).items():
        got = source.get("w")
        assert got.dtype == np.dtype(ml_dtypes.bfloat16), fmt
        np.testing.assert_array_equal(got.view(np.uint16), BITS, err_msg=fmt)


def test_widening_is_exact_and_matches_ml_dtypes():
    widened = widen_bfloat16_bits(BITS)
    assert widened.dtype == np.float32
    expected = BITS.view(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), expected.view(np.uint32))
    assert widened[0] == 1.5 and widened[1] == -2.25 and np.isinf(widened[5])
    assert (widened.view(np.uint32) >> 16).astype(np.uint16).tolist() == BITS.tolist()


def test_big_endian_bits_are_read_in_their_byte_order():
    got = bfloat16_from_bits(BITS.astype(">u2"))
    np.testing.assert_array_equal(got.view(np.uint16), BITS)


@pytest.mark.parametrize("fmt", ["tf", "safetensors"])
def test_without_ml_dtypes_every_format_widens_to_float32(tmp_path, monkeypatch, fmt):
    source = _sources(tmp_path)[fmt]
    monkeypatch.setattr(bfloat16_module, "_ml_dtypes", None)
    got = source.get("w")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), widen_bfloat16_bits(BITS).view(np.uint32))
