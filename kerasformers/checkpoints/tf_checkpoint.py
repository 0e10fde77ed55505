"""Pure-NumPy reader and writer for TensorFlow "tensor bundle" checkpoints.

This is the format of ``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``
written by ``tf.train.Saver``, ``tf.train.Checkpoint`` and ``tf.raw_ops.SaveV2``
(and shipped with Google's original BERT/ALBERT/ELECTRA checkpoints).  Nothing
here imports TensorFlow or protobuf, so checkpoints can be converted on a
machine that only has the JAX or PyTorch backend installed.

Format, briefly (see tensorflow/core/util/tensor_bundle/ and
tensorflow/core/lib/io/table*.cc):

* ``<prefix>.data-NNNNN-of-MMMMM`` shards hold raw tensor bytes, tensor after
  tensor, little-endian, with no padding.  A string tensor is stored as the
  varint64 lengths of its elements, a 4-byte masked CRC32C of the lengths,
  then the concatenated element bytes.  Quirk: that CRC (and the tensor's CRC)
  covers each length as a fixed uint32 (uint64 if it does not fit), not the
  varint bytes actually on disk, for compatibility with older checkpoints.
* ``<prefix>.index`` is a LevelDB-style SSTable mapping tensor names to
  serialized protobufs.  The file is a sequence of blocks followed by a 48-byte
  footer: two varint ``BlockHandle``s (offset, size) for the metaindex and
  index blocks, zero padding to 40 bytes, then the fixed64 magic
  ``0xdb4775248b80fb57``.  The index block maps a separator key (>= every key
  of a data block) to that data block's handle.  Inside a block, entries are
  ``varint shared, varint non_shared, varint value_len, key[shared:], value``
  where ``shared`` bytes are taken from the previous key (prefix
  compression); every ``restart_interval``-th entry stores its full key and
  its offset is listed in a trailing ``uint32[num_restarts], uint32
  num_restarts`` array.  Each block is followed by a 1-byte compression type
  (only 0 = none is supported; TF's BundleWriter never compresses) and a
  4-byte *masked* CRC32C of block contents + type byte.
* Key ``""`` holds a ``BundleHeaderProto`` (num_shards, endianness, version);
  every other key holds a ``BundleEntryProto`` (dtype, shape, shard_id,
  offset, size, masked crc32c of the tensor bytes, slices).  Keys starting
  with ``\\x00`` are the per-slice entries of partitioned variables; they are
  hidden, and reading partitioned variables is not supported.

Protobuf messages are decoded/encoded by hand from the wire format.

Dtypes: float16/32/64, bfloat16, int8/16/32/64, uint8/16/32/64, bool,
complex64/128 and DT_STRING.  bfloat16 tensors are returned as
``ml_dtypes.bfloat16`` arrays (bit-exact; ml_dtypes ships with Keras 3, JAX and
TF) and, only if ml_dtypes is missing, widened exactly to float32.  String
tensors (e.g. ``_CHECKPOINTABLE_OBJECT_GRAPH``) are returned as object arrays
of ``bytes``.

CRC32C uses ``google_crc32c`` or ``crc32c`` when one is importable and a
vectorised NumPy implementation otherwise (several hundred MB/s: the input is
split into up to 65536 equal lanes that are all advanced 8 bytes per step with
slice-by-8 tables, then the lane CRCs are merged pairwise with the GF(2)
"append n zero bytes" operator, as in zlib's crc32_combine).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import struct
import uuid
from dataclasses import dataclass

import numpy as np

from kerasformers.checkpoints.errors import CheckpointError

try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a Keras 3 dependency
    _ml_dtypes = None

__all__ = [
    "CheckpointError",
    "TFCheckpointReader",
    "crc32c",
    "mask_crc32c",
    "resolve_checkpoint_prefix",
    "save_tf_checkpoint",
    "unmask_crc32c",
]

_U32 = 0xFFFFFFFF

# --------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected polynomial 0x82F63B78)
# --------------------------------------------------------------------------

_CRC_POLY = 0x82F63B78
_CRC_MASK_DELTA = 0xA282EAD8


def _make_byte_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_CRC_POLY if c & 1 else 0)
        table.append(c)
    return table


_BYTE_TABLE = _make_byte_table()  # plain list: fastest for the per-byte Python loop


def _crc_update_py(state, data):
    """Advance the raw CRC register (no init/final xor) over ``data`` byte by byte."""
    table = _BYTE_TABLE
    for b in bytes(data):
        state = table[(state ^ b) & 0xFF] ^ (state >> 8)
    return state


@functools.lru_cache(maxsize=1)
def _wide_tables():
    """Slice-by-8 tables fused pairwise into four 65536-entry tables.

    T[k][b] is the CRC contribution of byte ``b`` followed by ``k`` zero bytes.
    Fusing pairs halves the number of NumPy gathers per 8-byte step, which is
    what dominates the vectorised loop.
    """
    t0 = np.array(_BYTE_TABLE, dtype=np.uint32)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append((prev >> 8) ^ t0[prev & 0xFF])
    v = np.arange(65536, dtype=np.uint32)
    lo, hi = v & 0xFF, v >> 8
    return tuple(tables[a][lo] ^ tables[a - 1][hi] for a in (7, 5, 3, 1))


# GF(2) 32x32 matrices are lists of 32 column ints; column i is the image of bit i.
def _gf2_apply(mat, vec):
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_compose(a, b):
    """Matrix of ``a(b(x))``."""
    return [_gf2_apply(a, col) for col in b]


@functools.lru_cache(maxsize=None)
def _zeros_pow2(k):
    """Operator advancing the CRC register over 2**k zero bytes."""
    if k == 0:
        one_bit = [_CRC_POLY] + [1 << (i - 1) for i in range(1, 32)]
        m = one_bit
        for _ in range(3):  # 2**3 = 8 bits
            m = _gf2_compose(m, m)
        return m
    half = _zeros_pow2(k - 1)
    return _gf2_compose(half, half)


def _zeros_operator(n):
    mat = None
    k = 0
    while n:
        if n & 1:
            p = _zeros_pow2(k)
            mat = p if mat is None else _gf2_compose(p, mat)
        n >>= 1
        k += 1
    return mat if mat is not None else [1 << i for i in range(32)]


def _shift_state(state, n):
    """Register after feeding ``n`` zero bytes (matrix-vector only: cheap)."""
    k = 0
    while n:
        if n & 1:
            state = _gf2_apply(_zeros_pow2(k), state)
        n >>= 1
        k += 1
    return state


def _gf2_apply_vec(mat, values):
    """Apply a GF(2) operator to a uint32 array via four 256-entry tables."""
    cols = np.array(mat, dtype=np.uint32).reshape(4, 8)
    v = np.arange(256, dtype=np.uint32)
    bits = ((v[:, None] >> np.arange(8, dtype=np.uint32)) & 1).astype(bool)  # (256, 8)
    out = np.zeros(values.shape, dtype=np.uint32)
    for b in range(4):
        table = np.bitwise_xor.reduce(np.where(bits, cols[b], np.uint32(0)), axis=1)
        out ^= table[(values >> np.uint32(8 * b)) & np.uint32(0xFF)]
    return out


_MAX_LANES = 65536
_MIN_STEPS = 64  # below this many 8-byte steps per lane the per-call overhead dominates
_VECTOR_THRESHOLD = 16384  # smaller inputs go through the plain Python loop (faster there)


def _raw_crc_lanes(seg, lanes, steps):
    """Raw CRC (zero initial register) of ``seg``.

    ``seg`` is ``lanes`` consecutive chunks of ``8 * steps`` bytes each.
    """
    t_a, t_b, t_c, t_d = _wide_tables()
    words = seg.view("<u4").reshape(lanes, 2 * steps)
    crc = np.zeros(lanes, np.uint32)
    x = np.empty(lanes, np.uint32)
    acc = np.empty(lanes, np.uint32)
    tmp = np.empty(lanes, np.uint32)
    idx = np.empty(lanes, np.intp)
    for i in range(0, 2 * steps, 2):
        # Slice-by-8 on every lane at once: fold the first 4 bytes into the
        # register, then look up all 8 byte positions (pairwise-fused tables).
        np.bitwise_xor(crc, words[:, i], out=x)
        np.bitwise_and(x, 0xFFFF, out=idx)
        np.take(t_a, idx, out=acc, mode="clip")
        np.right_shift(x, 16, out=idx)
        np.take(t_b, idx, out=tmp, mode="clip")
        acc ^= tmp
        hi = words[:, i + 1]
        np.bitwise_and(hi, 0xFFFF, out=idx)
        np.take(t_c, idx, out=tmp, mode="clip")
        acc ^= tmp
        np.right_shift(hi, 16, out=idx)
        np.take(t_d, idx, out=crc, mode="clip")
        crc ^= acc
    # raw(A || B) = zeros_{|B|}(raw(A)) ^ raw(B): merge neighbouring lanes
    # pairwise; lanes is a power of two so every level pairs up exactly.
    op = _zeros_operator(8 * steps)
    while crc.size > 1:
        crc = _gf2_apply_vec(op, crc[0::2]) ^ crc[1::2]
        if crc.size > 1:
            op = _gf2_compose(op, op)
    return int(crc[0])


def _as_uint8(data):
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def _crc32c_numpy(data, crc=0):
    """CRC32C of ``data`` continuing from the finished CRC ``crc`` (NumPy only)."""
    buf = _as_uint8(data)
    state = (crc ^ _U32) & _U32
    pos, n = 0, buf.size
    while n - pos >= _VECTOR_THRESHOLD:
        words = (n - pos) // 8
        lanes = 1 << min((words // _MIN_STEPS).bit_length() - 1, _MAX_LANES.bit_length() - 1)
        steps = words // lanes
        length = lanes * steps * 8
        # The register is linear in (initial state, data), so the segment can
        # be computed from a zero register and the old state shifted over it.
        raw = _raw_crc_lanes(buf[pos : pos + length], lanes, steps)
        state = _shift_state(state, length) ^ raw
        pos += length
    state = _crc_update_py(state, buf[pos:])
    return state ^ _U32


def _load_fast_crc():
    try:
        import google_crc32c

        if getattr(google_crc32c, "implementation", "c") == "c":  # its pure-Python fallback is slow

            def fast(data, crc=0):
                return google_crc32c.extend(crc, data)

            return "google_crc32c", fast
    except ImportError:
        pass
    try:
        import crc32c as _crc32c_mod

        if hasattr(_crc32c_mod, "crc32c"):

            def fast(data, crc=0):
                return _crc32c_mod.crc32c(data, value=crc)

            return "crc32c", fast
    except ImportError:
        pass
    return "numpy", _crc32c_numpy


CRC32C_BACKEND, _crc32c_impl = _load_fast_crc()


def crc32c(data, crc=0):
    """CRC32C of a bytes-like object or contiguous array, extending ``crc``.

    ``crc32c(b + c) == crc32c(c, crc32c(b))``; ``crc32c(b"123456789") == 0xE3069283``.
    """
    if isinstance(data, np.ndarray) and CRC32C_BACKEND != "numpy":
        data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return _crc32c_impl(data, crc)


def mask_crc32c(crc):
    """LevelDB/TF masking: rotate and add a constant so CRCs of CRCs stay well-behaved."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _CRC_MASK_DELTA) & _U32


def unmask_crc32c(masked):
    rot = (masked - _CRC_MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


# --------------------------------------------------------------------------
# Varints and protobuf wire format
# --------------------------------------------------------------------------


class _FormatError(Exception):
    """Low-level parse failure; callers re-raise it as CheckpointError with the file name."""


def _encode_varint(value):
    if value < 0:  # protobuf encodes negative int32/int64 as 10-byte two's complement
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_varint(buf, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _FormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _FormatError("varint longer than 10 bytes")


def _signed64(value):
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_proto(buf):
    """Decode one message into ``{field_number: [values]}`` (ints or memoryviews)."""
    buf = memoryview(buf)
    fields = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _decode_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _FormatError("protobuf field number 0")
        if wire == 0:
            value, pos = _decode_varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _FormatError("truncated fixed64 field")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _decode_varint(buf, pos, end)
            if pos + length > end:
                raise _FormatError("truncated length-delimited field")
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise _FormatError("truncated fixed32 field")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise _FormatError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _proto_int(fields, number, default=0):
    values = fields.get(number)
    if not values:
        return default
    if not isinstance(values[-1], int):
        raise _FormatError(f"field {number} has the wrong wire type")
    return _signed64(values[-1])  # proto3: last occurrence wins


def _proto_repeated_ints(fields, number):
    """Repeated scalar field, accepting both packed and unpacked encodings."""
    out = []
    for v in fields.get(number, []):
        if isinstance(v, int):
            out.append(_signed64(v))
        else:
            pos = 0
            while pos < len(v):
                x, pos = _decode_varint(v, pos, len(v))
                out.append(_signed64(x))
    return out


def _proto_messages(fields, number):
    out = []
    for v in fields.get(number, []):
        if isinstance(v, int):
            raise _FormatError(f"field {number} should be a message")
        out.append(_parse_proto(v))
    return out


def _field_varint(number, value):
    return _encode_varint(number << 3) + _encode_varint(value)


def _field_bytes(number, payload):
    return _encode_varint((number << 3) | 2) + _encode_varint(len(payload)) + payload


def _field_fixed32(number, value):
    return _encode_varint((number << 3) | 5) + struct.pack("<I", value)


# --------------------------------------------------------------------------
# SSTable (LevelDB table) reading and writing
# --------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # 2 * max BlockHandle length (2 * 10 bytes each) + 8-byte magic
_BLOCK_TRAILER_LEN = 5  # compression type byte + masked crc32c
_COMPRESSION_NAMES = {1: "Snappy"}  # the only codec TF tables know besides none
_DEFAULT_BLOCK_SIZE = 262144  # TF's table::Options default
_RESTART_INTERVAL = 16  # TF's table::Options default for data blocks


def _read_block(buf, offset, size, what):
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_LEN > len(buf):
        raise _FormatError(
            f"{what} at offset {offset} (size {size}) runs past the end of the file (truncated?)"
        )
    ctype = buf[end]
    stored = int.from_bytes(buf[end + 1 : end + 5], "little")
    actual = crc32c(buf[offset : end + 1])  # the CRC covers the type byte too
    if unmask_crc32c(stored) != actual:
        raise _FormatError(
            f"CRC32C mismatch in {what} at offset {offset}: stored {unmask_crc32c(stored):#010x}, "
            f"computed {actual:#010x}"
        )
    if ctype != 0:
        name = _COMPRESSION_NAMES.get(ctype, "unknown")
        raise _FormatError(
            f"{what} uses {name} compression (type {ctype}); only uncompressed tables "
            "are supported "
            "(TensorFlow's checkpoint writer never compresses)"
        )
    return buf[offset:end]


def _block_entries(block, what):
    """List the ``(key, value)`` pairs of one block, undoing prefix compression."""
    size = len(block)
    if size < 4:
        raise _FormatError(f"{what} is too small ({size} bytes)")
    num_restarts = int.from_bytes(block[size - 4 :], "little")
    limit = size - 4 - 4 * num_restarts
    if limit < 0:
        raise _FormatError(
            f"{what} claims {num_restarts} restart points, more than fit in {size} bytes"
        )
    restarts = struct.unpack_from(f"<{num_restarts}I", block, limit)
    entry_starts = {}
    pos, prev = 0, b""
    entries = []
    while pos < limit:
        start = pos
        shared, pos = _decode_varint(block, pos, limit)
        non_shared, pos = _decode_varint(block, pos, limit)
        value_len, pos = _decode_varint(block, pos, limit)
        if shared > len(prev) or pos + non_shared + value_len > limit:
            raise _FormatError(f"malformed entry at offset {start} of {what}")
        key = prev[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
        entry_starts[start] = shared
        prev = key
    # Restart points must land on entries that store their full key; a
    # mismatch means the block is corrupt even if the CRC happened to pass.
    for r in restarts:
        if entries and entry_starts.get(r) != 0:
            raise _FormatError(f"restart point {r} of {what} does not start a full-key entry")
    return entries


def _decode_handle(buf, pos, end):
    offset, pos = _decode_varint(buf, pos, end)
    size, pos = _decode_varint(buf, pos, end)
    return offset, size, pos


def _parse_sstable(buf):
    """Return ``([(key, value), ...], number_of_data_blocks)`` for a whole table."""
    buf = memoryview(buf)
    if len(buf) < _FOOTER_LEN:
        raise _FormatError(
            f"file is {len(buf)} bytes, shorter than the {_FOOTER_LEN}-byte table footer "
            "(truncated?)"
        )
    footer = buf[len(buf) - _FOOTER_LEN :]
    magic = int.from_bytes(footer[40:48], "little")
    if magic != _TABLE_MAGIC:
        raise _FormatError(
            f"bad table magic {magic:#018x} (expected {_TABLE_MAGIC:#018x}): "
            "not a TensorFlow checkpoint index "
            "or the file is truncated"
        )
    _, _, pos = _decode_handle(footer, 0, 40)  # metaindex: TF stores nothing useful there
    index_off, index_size, _ = _decode_handle(footer, pos, 40)
    index_block = _read_block(buf, index_off, index_size, "index block")
    records = []
    handles = _block_entries(index_block, "index block")
    for i, (_, handle) in enumerate(handles):
        off, size, _ = _decode_handle(handle, 0, len(handle))
        what = f"data block {i}"
        records.extend(_block_entries(_read_block(buf, off, size, what), what))
    for (a, _), (b, _) in zip(records, records[1:]):
        if a >= b:
            raise _FormatError(f"keys out of order ({a!r} >= {b!r})")
    return records, len(handles)


def _build_block(entries, restart_interval):
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            limit = min(len(prev), len(key))
            while shared < limit and prev[shared] == key[shared]:
                shared += 1
        out += (
            _encode_varint(shared) + _encode_varint(len(key) - shared) + _encode_varint(len(value))
        )
        out += key[shared:]
        out += value
        prev = key
    if not restarts:  # LevelDB's empty block still has one restart point
        restarts = [0]
    out += struct.pack(f"<{len(restarts)}I", *restarts)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def _build_sstable(records, block_size=_DEFAULT_BLOCK_SIZE):
    """Serialize sorted ``(key, value)`` records as a LevelDB table (no compression)."""
    out = bytearray()

    def emit(block):
        handle = (len(out), len(block))
        out.extend(block)
        out.append(0)  # kNoCompression
        out.extend(struct.pack("<I", mask_crc32c(crc32c(block + b"\x00"))))
        return _encode_varint(handle[0]) + _encode_varint(handle[1])

    index_entries = []
    pending, pending_size = [], 0
    for key, value in records:
        pending.append((key, value))
        pending_size += len(key) + len(value) + 3
        if pending_size >= block_size:
            # The block's last key is a valid separator: >= every key in the
            # block and < the first key of the next one.
            index_entries.append((key, emit(_build_block(pending, _RESTART_INTERVAL))))
            pending, pending_size = [], 0
    if pending:
        index_entries.append((pending[-1][0], emit(_build_block(pending, _RESTART_INTERVAL))))
    meta_handle = emit(_build_block([], 1))
    index_handle = emit(_build_block(index_entries, 1))  # LevelDB uses interval 1 for index blocks
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)
    out.extend(footer)
    return bytes(out)


# --------------------------------------------------------------------------
# Dtypes and bundle protos
# --------------------------------------------------------------------------

# TF DataType enum value -> (name, little-endian NumPy dtype string or None for special cases)
_TF_DTYPES = {
    1: ("float32", "<f4"),
    2: ("float64", "<f8"),
    3: ("int32", "<i4"),
    4: ("uint8", "|u1"),
    5: ("int16", "<i2"),
    6: ("int8", "|i1"),
    7: ("string", None),
    8: ("complex64", "<c8"),
    9: ("int64", "<i8"),
    10: ("bool", "|b1"),
    14: ("bfloat16", None),
    17: ("uint16", "<u2"),
    18: ("complex128", "<c16"),
    19: ("float16", "<f2"),
    22: ("uint32", "<u4"),
    23: ("uint64", "<u8"),
}
_DT_STRING = 7
_DT_BFLOAT16 = 14
_NUMPY_TO_TF = {
    ("f", 2): 19,
    ("f", 4): 1,
    ("f", 8): 2,
    ("i", 1): 6,
    ("i", 2): 5,
    ("i", 4): 3,
    ("i", 8): 9,
    ("u", 1): 4,
    ("u", 2): 17,
    ("u", 4): 22,
    ("u", 8): 23,
    ("b", 1): 10,
    ("c", 8): 8,
    ("c", 16): 18,
}
_TF_DTYPE_NAMES_OTHER = {
    0: "DT_INVALID",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
}
_BUNDLE_VERSION = 1  # kTensorBundleVersion: the consumer version we implement


def _tf_dtype_label(enum):
    if enum in _TF_DTYPES:
        return _TF_DTYPES[enum][0]
    return f"{_TF_DTYPE_NAMES_OTHER.get(enum, 'DataType')} ({enum})"


def _numpy_dtype_for(enum):
    if enum == _DT_STRING:
        return np.dtype(object)
    if enum == _DT_BFLOAT16:
        return np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else np.dtype(np.float32)
    return np.dtype(_TF_DTYPES[enum][1]).newbyteorder("=")


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


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------

_DATA_SUFFIX_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_RE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)


def _data_path(prefix, shard, num_shards):
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def _unescape_text_proto(s):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def _escape_text_proto(s):
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _resolve_directory(directory):
    state_file = os.path.join(directory, "checkpoint")
    if os.path.isfile(state_file):
        try:
            with open(state_file, encoding="utf-8") as fh:
                m = _STATE_RE.search(fh.read())
        except (OSError, UnicodeDecodeError):
            m = None
        if m:
            named = _unescape_text_proto(m.group(1))
            # The state file often holds an absolute path from the machine that
            # trained the model; the basename next to the state file is what we want.
            for candidate in (
                os.path.join(directory, named),
                os.path.join(directory, os.path.basename(named)),
            ):
                if os.path.isfile(candidate + ".index"):
                    return candidate
    indexes = sorted(name for name in os.listdir(directory) if name.endswith(".index"))
    if len(indexes) == 1:
        return os.path.join(directory, indexes[0][: -len(".index")])
    if not indexes:
        raise CheckpointError(
            f"{directory}: directory contains no TensorFlow checkpoint (*.index file)"
        )
    raise CheckpointError(
        f"{directory}: directory contains {len(indexes)} checkpoints ({', '.join(indexes[:5])}"
        f"{', ...' if len(indexes) > 5 else ''}) and no usable 'checkpoint' state file; "
        "pass a prefix instead"
    )


def resolve_checkpoint_prefix(path):
    """Turn a prefix, ``.index`` file, ``.data-*`` shard or directory into a checkpoint prefix.

    A directory resolves through its ``checkpoint`` state file (like
    ``tf.train.latest_checkpoint``, falling back to the basename when the file
    names a path from another machine) or else its single ``*.index`` file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = _resolve_directory(path)
    elif path.endswith(".index"):
        prefix = path[: -len(".index")]
    elif _DATA_SUFFIX_RE.search(path):
        prefix = _DATA_SUFFIX_RE.sub("", path)
    else:
        prefix = path
    index_path = prefix + ".index"
    if not os.path.isfile(index_path):
        if path == prefix and not os.path.exists(path):
            hint = "no such file or directory"
        else:
            hint = "missing index file"
        raise CheckpointError(
            f"{index_path}: {hint}; not a TensorFlow checkpoint (resolved from {path!r})"
        )
    return prefix


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------


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
            bits = buf.view(self._byteorder + "u2").astype(np.uint16, copy=False)
            if _ml_dtypes is not None:
                return bits.view(_ml_dtypes.bfloat16).reshape(e.shape)
            return (bits.astype(np.uint32) << 16).view(np.float32).reshape(e.shape)
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


def _string_lengths_for_crc(lengths, byteorder="<"):
    """The bytes TF feeds to CRC32C for string lengths: uint32 each, uint64 if too big."""
    return b"".join(struct.pack(byteorder + ("I" if n <= _U32 else "Q"), n) for n in lengths)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


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
        # Same layout and CRC as TF's WriteStringTensor (see module docstring).
        payload = b"".join(_encode_varint(n) for n in sizes) + checksum + strings
        return _DT_STRING, shape, payload, crc32c(strings, crc32c(checksum, lengths_crc))
    if _ml_dtypes is not None and dt == np.dtype(_ml_dtypes.bfloat16):
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

    Arrays may have any dtype listed in the module docstring (bfloat16 as
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
