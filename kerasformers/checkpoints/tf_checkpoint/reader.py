"""``TFCheckpointReader``: read a tensor-bundle checkpoint with NumPy only."""

import difflib
import os

import numpy as np

from kerasformers.checkpoints.bfloat16 import bfloat16_from_bits
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.tf_checkpoint.bundle import (
    _BUNDLE_VERSION,
    _parse_entry,
    _string_lengths_for_crc,
)
from kerasformers.checkpoints.tf_checkpoint.crc import crc32c, unmask_crc32c
from kerasformers.checkpoints.tf_checkpoint.dtypes import (
    _DT_BFLOAT16,
    _DT_STRING,
    _TF_DTYPES,
    _numpy_dtype_for,
    _tf_dtype_label,
)
from kerasformers.checkpoints.tf_checkpoint.paths import _data_path, resolve_checkpoint_prefix
from kerasformers.checkpoints.tf_checkpoint.sstable import _parse_sstable
from kerasformers.checkpoints.tf_checkpoint.wire import (
    _decode_varint,
    _FormatError,
    _parse_proto,
    _proto_int,
    _proto_messages,
    _proto_repeated_ints,
)


class TFCheckpointReader:
    """Read a TensorFlow tensor-bundle checkpoint without TensorFlow.

    The ``.index`` is parsed (and its block CRCs verified) up front; tensor
    data is read from the shard files on demand by :meth:`get_tensor`, which
    verifies each tensor's CRC32C when ``verify_checksums`` is true.
    """

    def __init__(self, prefix_or_path, verify_checksums=True):
        self.prefix = resolve_checkpoint_prefix(prefix_or_path)
        self.index_path = self.prefix + ".index"
        self.verify_checksums = verify_checksums
        try:
            with open(self.index_path, "rb") as fh:
                index_bytes = fh.read()
        except OSError as exc:
            raise CheckpointError(f"{self.index_path}: cannot read index file: {exc}") from exc
        try:
            records, self._num_data_blocks = _parse_sstable(index_bytes)
            if not records or records[0][0] != b"":
                raise _FormatError("no bundle header entry (empty key)")
            self._parse_header(records[0][1])
            entries = {}
            for key, value in records[1:]:
                if key.startswith(b"\x00"):  # slice of a partitioned variable
                    continue
                name = key.decode("utf-8", errors="surrogateescape")
                try:
                    entries[name] = _parse_entry(value)
                except _FormatError as exc:
                    raise _FormatError(f"entry {name!r}: {exc}") from None
        except _FormatError as exc:
            raise CheckpointError(f"{self.index_path}: corrupt checkpoint index: {exc}") from None
        self._entries = entries
        self._data_paths = [
            _data_path(self.prefix, i, self._num_shards) for i in range(self._num_shards)
        ]
        self._check_entries()

    def _parse_header(self, value):
        f = _parse_proto(value)
        self._num_shards = _proto_int(f, 1)
        if self._num_shards < 1:
            raise _FormatError(f"header says num_shards={self._num_shards}")
        endianness = _proto_int(f, 2)
        if endianness not in (0, 1):
            raise _FormatError(f"unknown endianness {endianness}")
        self._byteorder = "<" if endianness == 0 else ">"
        versions = _proto_messages(f, 3)
        if versions:
            v = versions[-1]
            min_consumer = _proto_int(v, 2)
            if min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in _proto_repeated_ints(v, 3):
                raise _FormatError(
                    f"checkpoint format version (producer {_proto_int(v, 1)}, "
                    f"min_consumer {min_consumer}) "
                    f"is not readable by a version-{_BUNDLE_VERSION} reader"
                )

    def _check_entries(self):
        sizes = []
        for path in self._data_paths:
            try:
                sizes.append(os.path.getsize(path))
            except OSError:
                raise CheckpointError(
                    f"{path}: missing data shard of checkpoint {self.prefix!r} "
                    f"(the .index refers to {self._num_shards} shard(s))"
                ) from None
        for name, e in self._entries.items():
            if e.shard_id < 0 or e.shard_id >= self._num_shards:
                raise CheckpointError(
                    f"{self.index_path}: tensor {name!r} refers to shard {e.shard_id}, out of range"
                )
            if e.num_slices:
                continue  # data lives in the slice entries; get_tensor refuses these
            if e.offset < 0 or e.size < 0 or e.offset + e.size > sizes[e.shard_id]:
                raise CheckpointError(
                    f"{self._data_paths[e.shard_id]}: data file is truncated or does not match "
                    f"the index: tensor {name!r} needs bytes [{e.offset}, {e.offset + e.size}) "
                    "but the file has "
                    f"{sizes[e.shard_id]} bytes"
                )

    # -- mapping-like API --------------------------------------------------

    def keys(self):
        """Tensor names in the index order (sorted, like ``tf.train.list_variables``)."""
        return list(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __getitem__(self, name):
        return self.get_tensor(name)

    def __repr__(self):
        return f"TFCheckpointReader({self.prefix!r}, {len(self)} tensors)"

    def items(self):
        """Lazily yield ``(name, array)`` pairs; each tensor is read when reached."""
        for name in self._entries:
            yield name, self.get_tensor(name)

    def _entry(self, name):
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise CheckpointError(
                f"{self.index_path}: tensor {name!r} not found in checkpoint "
                f"({len(self._entries)} tensors){hint}"
            ) from None

    def shape(self, name):
        return self._entry(name).shape

    def dtype(self, name):
        """NumPy dtype that :meth:`get_tensor` returns (object for strings)."""
        enum = self._entry(name).dtype
        if enum not in _TF_DTYPES:
            raise CheckpointError(
                f"{self.index_path}: tensor {name!r} has unsupported dtype {_tf_dtype_label(enum)}"
            )
        return _numpy_dtype_for(enum)

    def tf_dtype(self, name):
        """TensorFlow dtype name as stored, e.g. ``"bfloat16"`` or ``"string"``."""
        return _tf_dtype_label(self._entry(name).dtype)

    def variable_shapes(self):
        """``{name: shape tuple}`` for every tensor (``tf.train.list_variables`` gives lists)."""
        return {name: e.shape for name, e in self._entries.items()}

    # -- data --------------------------------------------------------------

    def get_tensor(self, name):
        e = self._entry(name)
        if e.num_slices:
            raise CheckpointError(
                f"{self.index_path}: tensor {name!r} is a partitioned variable "
                f"({e.num_slices} slices); "
                "partitioned variables are not supported"
            )
        np_dtype = self.dtype(name)
        path = self._data_paths[e.shard_id]
        count = int(np.prod(e.shape, dtype=np.int64))
        if e.dtype != _DT_STRING:
            itemsize = 2 if e.dtype == _DT_BFLOAT16 else np.dtype(_TF_DTYPES[e.dtype][1]).itemsize
            if e.size != count * itemsize:
                raise CheckpointError(
                    f"{self.index_path}: tensor {name!r} has {e.size} bytes but shape {e.shape} of "
                    f"{_tf_dtype_label(e.dtype)} needs {count * itemsize}"
                )
        buf = self._read_bytes(path, e.offset, e.size, name)
        if e.dtype == _DT_STRING:  # its CRC is not over the raw bytes; checked while decoding
            return self._decode_strings(buf, count, e, name, path)
        if self.verify_checksums:
            actual = crc32c(buf)
            if actual != unmask_crc32c(e.crc32c):
                raise CheckpointError(
                    f"{path}: CRC32C mismatch for tensor {name!r} "
                    f"(stored {unmask_crc32c(e.crc32c):#010x}, "
                    f"computed {actual:#010x}); the data file is corrupt"
                )
        if e.dtype == _DT_BFLOAT16:
            return bfloat16_from_bits(buf.view(self._byteorder + "u2")).reshape(e.shape)
        stored = np.dtype(_TF_DTYPES[e.dtype][1]).newbyteorder(self._byteorder)
        arr = buf.view(stored).reshape(e.shape)
        return arr if stored == np_dtype else arr.astype(np_dtype)

    def _read_bytes(self, path, offset, size, name):
        buf = np.empty(size, dtype=np.uint8)
        if size == 0:
            return buf
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                view = memoryview(buf)
                got = 0
                while got < size:
                    n = fh.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read tensor {name!r}: {exc}") from exc
        if got != size:
            raise CheckpointError(
                f"{path}: data file is truncated: tensor {name!r} needs bytes "
                f"[{offset}, {offset + size}) "
                f"but only {got} could be read"
            )
        return buf

    def _decode_strings(self, buf, count, e, name, path):
        data = memoryview(buf)
        lengths = []
        pos = 0
        try:
            for _ in range(count):
                n, pos = _decode_varint(data, pos, len(data))
                lengths.append(n)
        except _FormatError:
            raise CheckpointError(
                f"{path}: corrupt string tensor {name!r} (bad length prefix)"
            ) from None
        if pos + 4 + sum(lengths) != len(data):
            raise CheckpointError(
                f"{path}: corrupt string tensor {name!r} (lengths do not match its size)"
            )
        if self.verify_checksums:
            lengths_crc = crc32c(_string_lengths_for_crc(lengths, self._byteorder))
            stored = int.from_bytes(
                data[pos : pos + 4], "little" if self._byteorder == "<" else "big"
            )
            if unmask_crc32c(stored) != lengths_crc:
                raise CheckpointError(
                    f"{path}: CRC32C mismatch in the lengths of string tensor {name!r}"
                )
            actual = crc32c(data[pos:], lengths_crc)  # checksum bytes + string bytes
            if actual != unmask_crc32c(e.crc32c):
                raise CheckpointError(
                    f"{path}: CRC32C mismatch for string tensor {name!r} (stored "
                    f"{unmask_crc32c(e.crc32c):#010x}, computed {actual:#010x}); "
                    "the data file is corrupt"
                )
        pos += 4
        out = np.empty(count, dtype=object)
        for i, n in enumerate(lengths):
            out[i] = bytes(data[pos : pos + n])
            pos += n
        return out.reshape(e.shape)
