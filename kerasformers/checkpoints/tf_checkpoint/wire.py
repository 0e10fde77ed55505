"""Varints and the protobuf wire format, decoded and encoded by hand (no protobuf needed).

A message decodes to ``{field_number: [values]}``; scalar fields are ints and
length-delimited ones memoryviews, so callers pick nested messages or packed
repeated ints by field number.

>>> fields = _parse_proto(_field_varint(1, 300) + _field_bytes(2, b"hi"))
>>> fields[1], bytes(fields[2][0])
([300], b'hi')
"""

import struct


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
