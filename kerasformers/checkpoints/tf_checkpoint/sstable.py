"""LevelDB-style SSTable ("table") reading and writing, as TF's ``.index`` file uses it.

The file is a sequence of blocks followed by a 48-byte footer: two varint
``BlockHandle``s (offset, size) for the metaindex and index blocks, zero
padding to 40 bytes, then the fixed64 magic ``0xdb4775248b80fb57``.  The index
block maps a separator key (>= every key of a data block) to that data block's
handle.  Inside a block, entries are ``varint shared, varint non_shared, varint
value_len, key[shared:], value`` where ``shared`` bytes are taken from the
previous key (prefix compression); every ``restart_interval``-th entry stores
its full key and its offset is listed in a trailing ``uint32[num_restarts],
uint32 num_restarts`` array.  Each block is followed by a 1-byte compression
type (only 0 = none is supported; TF's BundleWriter never compresses) and a
4-byte *masked* CRC32C of block contents + type byte.

>>> records = [(b"a", b"1"), (b"b", b"2")]
>>> [(k, bytes(v)) for k, v in _parse_sstable(_build_sstable(records))[0]]
[(b'a', b'1'), (b'b', b'2')]
"""

import struct

from kerasformers.checkpoints.tf_checkpoint.crc import crc32c, mask_crc32c, unmask_crc32c
from kerasformers.checkpoints.tf_checkpoint.wire import _decode_varint, _encode_varint, _FormatError

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
