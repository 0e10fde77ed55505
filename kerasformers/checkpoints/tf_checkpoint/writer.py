"""``save_tf_checkpoint``: write a single-shard tensor-bundle checkpoint with NumPy only."""

import os
import shutil
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
    written under temporary names and renamed into place together: if any
    step fails, the old checkpoint (if any) is left as it was and no temporary
    file remains (see ``_swap_in``).
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
    state_path = os.path.join(directory, "checkpoint")
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    finals = (data_path, index_path, state_path)
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
        base = _escape_text_proto(os.path.basename(prefix))
        with open(state_path + tag, "w", encoding="utf-8") as fh:
            fh.write(f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n')
        _swap_in(finals, tag)
    finally:
        for final in finals:
            if os.path.exists(final + tag):
                os.remove(final + tag)
    return prefix


def _swap_in(finals, tag):
    """Rename each ``final + tag`` onto ``final``: all of them, or none.

    The files of one checkpoint are renamed one by one, so a failure between two
    renames would leave a new data file beside an old index: both versions lost.
    Each old file is first kept under ``final + tag + ".old"`` (a hard link: no
    copy), restored if any rename fails, and removed once all succeeded. A
    process killed between two renames (no exception to catch) leaves the
    ``.old`` files behind: the old version is still on disk, and the mixed
    pair is refused by the reader (sizes and CRC32C per tensor).
    """
    kept = []
    try:
        for final in finals:
            if os.path.exists(final):
                try:
                    os.link(final, final + tag + ".old")
                except OSError:  # no hard links here (some network file systems)
                    shutil.copy2(final, final + tag + ".old")
                kept.append(final)
        moved = []
        try:
            for final in finals:
                os.replace(final + tag, final)
                moved.append(final)
        except BaseException:
            for final in moved:  # the old version back, or no file where there was none
                if final in kept:
                    os.replace(final + tag + ".old", final)
                else:
                    os.remove(final)
            raise
    finally:
        for final in kept:
            if os.path.exists(final + tag + ".old"):
                os.remove(final + tag + ".old")
