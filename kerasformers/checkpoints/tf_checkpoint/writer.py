"""``save_tf_checkpoint``: write a single-shard tensor-bundle checkpoint with NumPy only."""

import os
import struct
import uuid

import numpy as np

from kerasformers.checkpoints.bfloat16 import is_bfloat16
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.tf_checkpoint.bundle import (
    _encode_entry,
    _encode_header,
    _string_lengths_for_crc,
)
from kerasformers.checkpoints.tf_checkpoint.crc import crc32c, mask_crc32c
from kerasformers.checkpoints.tf_checkpoint.dtypes import _DT_BFLOAT16, _DT_STRING, _NUMPY_TO_TF
from kerasformers.checkpoints.tf_checkpoint.paths import _data_path, _escape_text_proto
from kerasformers.checkpoints.tf_checkpoint.sstable import _DEFAULT_BLOCK_SIZE, _build_sstable
from kerasformers.checkpoints.tf_checkpoint.wire import _encode_varint


def _tensor_payload(name, value):
    """Return ``(dtype enum, shape, bytes-like payload, unmasked crc32c)`` for one tensor."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    shape = tuple(int(d) for d in arr.shape)
    dt = arr.dtype
    if dt.kind in "SUO":
        pieces = []
        for item in arr.reshape(-1):
            if isinstance(item, (str, np.str_)):
                item = item.encode("utf-8")
            elif not isinstance(item, (bytes, np.bytes_)):
                raise CheckpointError(
                    f"tensor {name!r}: object arrays must hold str or bytes, "
                    f"found {type(item).__name__}"
                )
            pieces.append(bytes(item))
        sizes = [len(p) for p in pieces]
        lengths_crc = crc32c(_string_lengths_for_crc(sizes))
        checksum = struct.pack("<I", mask_crc32c(lengths_crc))
        strings = b"".join(pieces)
        # Same layout and CRC as TF's WriteStringTensor (see bundle.py).
        payload = b"".join(_encode_varint(n) for n in sizes) + checksum + strings
        return _DT_STRING, shape, payload, crc32c(strings, crc32c(checksum, lengths_crc))
    if is_bfloat16(dt):
        enum = _DT_BFLOAT16
        le = dt
    else:
        enum = _NUMPY_TO_TF.get((dt.kind, dt.itemsize))
        if enum is None:
            raise CheckpointError(
                f"tensor {name!r}: unsupported dtype {dt} for a TensorFlow checkpoint"
            )
        le = dt.newbyteorder("<")
    payload = np.ascontiguousarray(arr, dtype=le).reshape(-1).view(np.uint8)
    return enum, shape, payload, crc32c(payload)


def save_tf_checkpoint(prefix, tensors, *, index_block_size=_DEFAULT_BLOCK_SIZE):
    """Write ``tensors`` (name -> array) as a single-shard TF checkpoint at ``prefix``.

    Produces ``prefix.index``, ``prefix.data-00000-of-00001`` and a
    ``checkpoint`` state file next to them (overwriting any existing one, as
    TF's Saver does), readable by ``tf.train.load_checkpoint``.  Files are
    written under temporary names and renamed into place, data before index.
    ``index_block_size`` is the SSTable data block size (TF's default).
    Returns the prefix.

    Arrays may have any dtype listed in the package docstring (bfloat16 as
    ``ml_dtypes.bfloat16``); ``str``/``bytes`` arrays become DT_STRING, str
    elements UTF-8 encoded.  Use object arrays for binary strings: NumPy's
    fixed-width ``S`` dtype drops trailing NUL bytes.
    """
    prefix = os.fspath(prefix)
    if not prefix or prefix.endswith(os.sep) or os.path.isdir(prefix):
        raise CheckpointError(
            f"{prefix!r}: checkpoint prefix must name a file stem, not a directory"
        )
    items = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{prefix}: tensor names must be non-empty strings, got {name!r}")
        if name.startswith("\x00"):
            raise CheckpointError(f"{prefix}: tensor name {name!r} may not start with a NUL byte")
        items.append((name.encode("utf-8", errors="surrogateescape"), name, value))
    items.sort(key=lambda item: item[0])  # SSTable keys are compared bytewise

    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    index_path = prefix + ".index"
    data_path = _data_path(prefix, 0, 1)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    records = [(b"", _encode_header(1))]
    try:
        offset = 0
        with open(data_path + tag, "wb") as fh:
            for key, name, value in items:
                enum, shape, payload, crc = _tensor_payload(name, value)
                size = len(payload) if isinstance(payload, bytes) else payload.size
                fh.write(payload)
                records.append((key, _encode_entry(enum, shape, offset, size, mask_crc32c(crc))))
                offset += size
        with open(index_path + tag, "wb") as fh:
            fh.write(_build_sstable(records, index_block_size))
        os.replace(data_path + tag, data_path)
        os.replace(index_path + tag, index_path)
    finally:
        for leftover in (data_path + tag, index_path + tag):
            if os.path.exists(leftover):
                os.remove(leftover)
    base = _escape_text_proto(os.path.basename(prefix))
    state = f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n'
    state_path = os.path.join(directory, "checkpoint")
    with open(state_path + tag, "w", encoding="utf-8") as fh:
        fh.write(state)
    os.replace(state_path + tag, state_path)
    return prefix
