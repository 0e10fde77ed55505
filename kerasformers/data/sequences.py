"""Sequences to arrays: `to_array`, `sequence_padding` (pad and cut to one length) and
`truncate_sequences` (pop from the longest until a budget fits).  NumPy only."""

import contextvars

import numpy as np

from kerasformers.tokenizers.base import apply_pops, truncation_plan

# While a `DataGenerator`'s __iter__ makes a batch for Keras: (buckets, record), the
# buckets of `sequence_padding` calls made without `buckets=`, and None or a dict that
# collects id(result) -> (result, padded axes) of calls without `length=` (the axes whose
# size varies from batch to batch, which TensorFlow's shape probe must leave open).
padding_context = contextvars.ContextVar("kerasformers_padding", default=(None, None))


def to_array(*args):
    """`np.array` of each argument; one array if one argument.

    >>> to_array([1, 2], [[3]])
    [array([1, 2]), array([[3]])]
    """
    results = [np.array(a) for a in args]
    return results[0] if len(args) == 1 else results


def bucket_length(n, buckets):
    """The length a row of `n` is padded to: the next multiple of `buckets` (an int), or the
    smallest of `buckets` (a list of lengths) that holds `n` (`n` itself beyond the last).

    >>> bucket_length(17, 16), bucket_length(17, [8, 32, 64]), bucket_length(70, [8, 32, 64])
    (32, 32, 70)
    """
    if isinstance(buckets, (int, np.integer)) and not isinstance(buckets, bool):
        if buckets < 1:
            raise ValueError(f"buckets must be a positive int or a list of lengths, got {buckets}")
        return -(-int(n) // int(buckets)) * int(buckets)
    try:
        if isinstance(buckets, (str, bytes)):
            raise TypeError
        sizes = sorted(int(b) for b in buckets)
    except (TypeError, ValueError):
        raise ValueError(
            f"buckets must be a positive int or a list of lengths, got {buckets!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"buckets must be a positive int or a list of lengths, got {buckets!r}")
    return next((b for b in sizes if b >= n), int(n))


def sequence_padding(
    inputs, length=None, value=0, seq_dims=1, mode="post", dtype=None, buckets=None
):
    """Pad (and truncate) sequences to one length over their first `seq_dims` axes.

    Args:
        inputs: a list of sequences (lists or arrays; rows may differ in length along the
            first `seq_dims` axes, and must agree on the others).
        length: an int, a list of `seq_dims` ints, or None for the longest.  Longer
            sequences are cut to their first `length` elements (in both modes, as bert4keras).
        value: the padding value.
        seq_dims: how many leading axes to pad, e.g. 3 for ``[heads, n, n]`` GlobalPointer
            labels.
        mode: ``'post'`` pads at the end, ``'pre'`` at the start.
        dtype: the result dtype; by default that of the (non-empty) inputs.
        buckets: with ``length=None``, round the padded length up (`bucket_length`): an int
            pads to a multiple of it, a list of lengths to the smallest that fits.  Only
            axes along which the rows differ are rounded (an axis where every row has the
            same size, such as a batch of one or a fixed number of heads, keeps it).  On
            JAX every new batch shape compiles the train step again; buckets bound the
            number of shapes.  Default: the `DataGenerator`'s ``buckets`` inside a batch it
            makes for Keras, else None (the longest row, as bert4keras).

    Returns:
        an array of shape ``[len(inputs), *length, *rest]``.

    >>> sequence_padding([[1, 2, 3], [4]], length=2, mode='pre')
    array([[1, 2],
           [0, 4]])
    >>> sequence_padding([[1, 2, 3], [4]], buckets=4)
    array([[1, 2, 3, 0],
           [4, 0, 0, 0]])
    >>> sequence_padding([np.ones((1, 2)), np.ones((2, 1))], seq_dims=2)
    array([[[1., 1.],
            [0., 0.]],
    <BLANKLINE>
           [[1., 0.],
            [1., 0.]]])
    """
    if mode not in ("post", "pre"):
        raise ValueError('"mode" argument must be "post" or "pre".')
    arrays = [np.asarray(x) for x in inputs]
    if dtype is None:
        dtypes = [a.dtype for a in arrays if a.size] or [a.dtype for a in arrays]
        dtype = np.result_type(*dtypes) if dtypes else np.int64
    if not arrays:
        return np.zeros((0,), dtype=dtype)
    for a in arrays:
        if a.ndim < seq_dims:
            raise ValueError(
                "sequence_padding: an input has %d dims, fewer than seq_dims=%d"
                % (a.ndim, seq_dims)
            )
    variable = length is None
    if variable:
        sizes = np.array([a.shape[:seq_dims] for a in arrays])
        length = sizes.max(axis=0)
        varying = (sizes != length).any(axis=0)  # axes whose rows differ in this batch
        if buckets is None:
            buckets = padding_context.get()[0]
        if buckets is not None:
            length = [bucket_length(n, buckets) if v else n for n, v in zip(length, varying)]
    elif not hasattr(length, "__getitem__"):
        length = [length]
    length = [int(n) for n in length][:seq_dims]
    if len(length) < seq_dims:
        raise ValueError("length has %d entries for seq_dims=%d" % (len(length), seq_dims))
    rest = arrays[0].shape[seq_dims:]
    out = np.full([len(arrays)] + length + list(rest), value, dtype=dtype)
    for k, a in enumerate(arrays):
        if a.shape[seq_dims:] != rest:
            raise ValueError(
                "sequence_padding: trailing shapes differ: %s vs %s" % (a.shape[seq_dims:], rest)
            )
        a = a[tuple(slice(0, n) for n in length)]
        if mode == "post":
            target = tuple(slice(0, n) for n in a.shape[:seq_dims])
        else:
            target = tuple(slice(n - m, n) for n, m in zip(length, a.shape[:seq_dims]))
        out[(k,) + target] = a
    record = padding_context.get()[1]
    if record is not None and variable and varying.any():
        # only axes padded here: [[label], ...] has rows of one length and stays fixed
        record[id(out)] = (out, tuple(1 + a for a in np.flatnonzero(varying)))
    return out


def truncate_sequences(maxlen, indices, *sequences):
    """Truncate sequences in place until their total length is at most `maxlen`.

    Repeatedly pops, at position ``indices[i]`` (or `indices` for all), from the currently
    longest sequence (the first on ties).  Empty or None sequences are ignored.  Returns the
    (non-empty) sequences.

    >>> a, b = [1, 2, 3, 4, 5], [6, 7]
    >>> truncate_sequences(4, -1, a, b)
    [[1, 2], [6, 7]]
    """
    pairs = [
        (s, i)
        for s, i in zip(
            sequences, indices if isinstance(indices, (list, tuple)) else [indices] * len(sequences)
        )
        if s
    ]
    if not pairs:
        return []
    counts = truncation_plan([len(s) for s, _ in pairs], maxlen)
    for (seq, index), count in zip(pairs, counts):
        apply_pops([seq], index, count)
    return [s for s, _ in pairs]
