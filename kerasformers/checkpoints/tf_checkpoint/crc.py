"""CRC32C (Castagnoli, reflected polynomial 0x82F63B78) and LevelDB/TF CRC masking.

``google_crc32c`` or ``crc32c`` is used when one is importable and a
vectorised NumPy implementation otherwise (several hundred MB/s: the input is
split into up to 65536 equal lanes that are all advanced 8 bytes per step with
slice-by-8 tables, then the lane CRCs are merged pairwise with the GF(2)
"append n zero bytes" operator, as in zlib's crc32_combine).

>>> hex(crc32c(b"123456789"))
'0xe3069283'
>>> unmask_crc32c(mask_crc32c(0xE3069283)) == 0xE3069283
True
"""

import functools

import numpy as np

_U32 = 0xFFFFFFFF

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
