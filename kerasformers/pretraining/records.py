"""One pretraining instance on disk: token ids and word-start flags as raw int32 bytes.

An ArrayRecord shard holds one record per packed instance. A record is the
little-endian int32 array ``[ids..., word_starts...]`` (2n values for n
tokens): no pickle, no protobuf, readable from any language. Word-start flags
(1 where a word begins, 0 inside a word; special tokens are words of their
own) let the loader mask whole words on the fly without re-segmenting.

>>> import numpy as np
>>> data = encode_record([101, 872, 1962, 102], [1, 1, 0, 1])
>>> ids, starts = decode_record(data)
>>> ids.tolist(), starts.tolist()
([101, 872, 1962, 102], [True, True, False, True])
"""

import numpy as np

_DTYPE = np.dtype("<i4")


def encode_record(token_ids, word_starts):
    """Bytes of one instance; `token_ids` and `word_starts` have the same length."""
    ids = np.asarray(token_ids, dtype=np.int64)
    starts = np.asarray(word_starts, dtype=np.int64)
    if ids.ndim != 1 or starts.shape != ids.shape:
        raise ValueError(
            f"token_ids and word_starts must be 1-D of one length, got shapes "
            f"{ids.shape} and {starts.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise ValueError("token ids must lie in [0, 2**31)")
    return np.concatenate([ids, starts != 0]).astype(_DTYPE).tobytes()


def decode_record(data):
    """`(ids int32 [n], word_starts bool [n])` from the bytes of `encode_record`."""
    if len(data) % (2 * _DTYPE.itemsize):
        raise ValueError(
            f"a pretraining record holds 2n int32 values; got {len(data)} bytes "
            "(a shard written by another tool or truncated)"
        )
    values = np.frombuffer(data, dtype=_DTYPE)
    n = values.size // 2
    return values[:n].astype(np.int32), values[n:] != 0
