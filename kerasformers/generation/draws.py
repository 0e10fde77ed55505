"""Sampling's random draws: `uniform(seed, step, shape)`, a counter-based hash.

Integer arithmetic only, so the same draws on every backend, inside compiled
loops (Keras' random ops take no tensor seed there) and in the host loop:
streaming samples what `generate` samples.
"""

from keras import ops


def _shr(x, k):
    """Logical right shift of int32 x by k bits (ops.right_shift is arithmetic)."""
    return ops.bitwise_and(ops.right_shift(x, k), (1 << (32 - k)) - 1)


def _hash(x):
    """lowbias32 (C. Wellons) on int32 with wrapping multiplies: a counter-based
    integer hash, identical on every backend (integer arithmetic only)."""
    x = ops.bitwise_xor(x, _shr(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, dtype="int32"))
    x = ops.bitwise_xor(x, _shr(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B - (1 << 32), dtype="int32"))
    return ops.bitwise_xor(x, _shr(x, 16))


def uniform(seed, step, shape):
    """Uniform floats in (0, 1), [rows, columns] = shape, a pure function of (seed,
    step, row, column)."""
    rows, columns = shape
    key = _hash(
        ops.bitwise_xor(_hash(ops.cast(step, "int32") + 0x632BE5AB), ops.cast(seed, "int32"))
    )
    counter = ops.reshape(ops.arange(rows * columns, dtype="int32"), (rows, columns))
    bits = _hash(_hash(ops.bitwise_xor(counter, key)) + key)
    return (ops.cast(_shr(bits, 8), "float32") + 0.5) / 16777216.0


def gumbel_max(scores, seed, step):
    """A categorical draw per row from softmax(scores): argmax(scores + Gumbel noise)."""
    draws = uniform(seed, step, tuple(ops.shape(scores)))
    return ops.argmax(scores - ops.log(-ops.log(draws)), axis=-1)
