"""The tensor bundle's protos (``BundleHeaderProto``, ``BundleEntryProto``) and string tensors.

Key ``""`` of the ``.index`` table holds a ``BundleHeaderProto`` (num_shards,
endianness, version); every other key holds a ``BundleEntryProto`` (dtype,
shape, shard_id, offset, size, masked crc32c of the tensor bytes, slices).
Keys starting with ``\\x00`` are the per-slice entries of partitioned
variables; the reader hides them and does not read partitioned variables.

A string tensor is stored as the varint64 lengths of its elements, a 4-byte
masked CRC32C of the lengths, then the concatenated element bytes.  Quirk:
that CRC (and the tensor's CRC) covers each length as a fixed uint32 (uint64
if it does not fit), not the varint bytes actually on disk, for compatibility
with older checkpoints.

>>> e = _parse_entry(_encode_entry(1, (2, 3), 16, 24, 0))
>>> e.dtype, e.shape, e.offset, e.size
(1, (2, 3), 16, 24)
"""

import struct
from dataclasses import dataclass

from kerasformers.checkpoints.tf_checkpoint.crc import _U32
from kerasformers.checkpoints.tf_checkpoint.wire import (
    _field_bytes,
    _field_fixed32,
    _field_varint,
    _FormatError,
    _parse_proto,
    _proto_int,
    _proto_messages,
)

_BUNDLE_VERSION = 1  # kTensorBundleVersion: the consumer version we implement


@dataclass(frozen=True)
class _Entry:
    dtype: int
    shape: tuple
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    num_slices: int


def _parse_entry(value):
    f = _parse_proto(value)
    shapes = _proto_messages(f, 2)
    dims = []
    if shapes:
        shape_proto = shapes[-1]
        if _proto_int(shape_proto, 3):
            raise _FormatError("tensor has unknown rank")
        for dim in _proto_messages(shape_proto, 2):
            size = _proto_int(dim, 1)
            if size < 0:
                raise _FormatError(f"tensor has unknown dimension ({size})")
            dims.append(size)
    return _Entry(
        dtype=_proto_int(f, 1),
        shape=tuple(dims),
        shard_id=_proto_int(f, 3),
        offset=_proto_int(f, 4),
        size=_proto_int(f, 5),
        crc32c=_proto_int(f, 6) & _U32,
        num_slices=len(f.get(7, [])),
    )


def _encode_entry(dtype, shape, offset, size, masked_crc):
    shape_proto = b"".join(_field_bytes(2, _field_varint(1, d) if d else b"") for d in shape)
    out = _field_varint(1, dtype) + _field_bytes(2, shape_proto)
    # proto3 omits zero-valued scalars; shard_id is always 0 for us.
    if offset:
        out += _field_varint(4, offset)
    if size:
        out += _field_varint(5, size)
    return out + _field_fixed32(6, masked_crc)


def _encode_header(num_shards=1):
    version = _field_varint(1, _BUNDLE_VERSION)  # VersionDef.producer
    return _field_varint(1, num_shards) + _field_bytes(3, version)  # endianness LITTLE (0) omitted


def _string_lengths_for_crc(lengths, byteorder="<"):
    """The bytes TF feeds to CRC32C for string lengths: uint32 each, uint64 if too big."""
    return b"".join(struct.pack(byteorder + ("I" if n <= _U32 else "Q"), n) for n in lengths)
