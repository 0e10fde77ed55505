"""Data utilities (bert4keras ``snippets``): padding, truncation, text segmentation, parallel
map, indexed files and `DataGenerator`, a `keras.utils.PyDataset`.

Everything here but `DataGenerator` is plain NumPy/Python and backend-independent.

>>> from kerasformers.data import sequence_padding
>>> sequence_padding([[1, 2, 3], [4]])
array([[1, 2, 3],
       [4, 0, 0]])
"""
import builtins
import collections
import json
import os
import queue
import random as _random
import threading
import traceback

import keras
import numpy as np

from kerasformers.tokenizers.base import apply_pops, truncation_plan

__all__ = [
    'to_array', 'sequence_padding', 'truncate_sequences', 'text_segmentate',
    'parallel_apply_generator', 'parallel_apply', 'DataGenerator', 'IndexedTextFile', 'open',
    'strQ2B', 'longest_common_substring', 'longest_common_subsequence',
]


def to_array(*args):
    """`np.array` of each argument; one array if one argument.

    >>> to_array([1, 2], [[3]])
    [array([1, 2]), array([[3]])]
    """
    results = [np.array(a) for a in args]
    return results[0] if len(args) == 1 else results


def sequence_padding(inputs, length=None, value=0, seq_dims=1, mode='post', dtype=None):
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

    Returns:
        an array of shape ``[len(inputs), *length, *rest]``.

    >>> sequence_padding([[1, 2, 3], [4]], length=2, mode='pre')
    array([[1, 2],
           [0, 4]])
    >>> sequence_padding([np.ones((1, 2)), np.ones((2, 1))], seq_dims=2)
    array([[[1., 1.],
            [0., 0.]],
    <BLANKLINE>
           [[1., 0.],
            [1., 0.]]])
    """
    if mode not in ('post', 'pre'):
        raise ValueError('"mode" argument must be "post" or "pre".')
    arrays = [np.asarray(x) for x in inputs]
    if dtype is None:
        dtypes = [a.dtype for a in arrays if a.size] or [a.dtype for a in arrays]
        dtype = np.result_type(*dtypes) if dtypes else np.int64
    if not arrays:
        return np.zeros((0,), dtype=dtype)
    for a in arrays:
        if a.ndim < seq_dims:
            raise ValueError('sequence_padding: an input has %d dims, fewer than seq_dims=%d'
                             % (a.ndim, seq_dims))
    if length is None:
        length = np.max([a.shape[:seq_dims] for a in arrays], axis=0)
    elif not hasattr(length, '__getitem__'):
        length = [length]
    length = [int(n) for n in length][:seq_dims]
    if len(length) < seq_dims:
        raise ValueError('length has %d entries for seq_dims=%d' % (len(length), seq_dims))
    rest = arrays[0].shape[seq_dims:]
    out = np.full([len(arrays)] + length + list(rest), value, dtype=dtype)
    for k, a in enumerate(arrays):
        if a.shape[seq_dims:] != rest:
            raise ValueError('sequence_padding: trailing shapes differ: %s vs %s'
                             % (a.shape[seq_dims:], rest))
        a = a[tuple(slice(0, n) for n in length)]
        if mode == 'post':
            target = tuple(slice(0, n) for n in a.shape[:seq_dims])
        else:
            target = tuple(slice(n - m, n) for n, m in zip(length, a.shape[:seq_dims]))
        out[(k,) + target] = a
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
    pairs = [(s, i) for s, i in zip(sequences, indices if isinstance(indices, (list, tuple))
                                    else [indices] * len(sequences)) if s]
    if not pairs:
        return []
    counts = truncation_plan([len(s) for s, _ in pairs], maxlen)
    for (seq, index), count in zip(pairs, counts):
        apply_pops([seq], index, count)
    return [s for s, _ in pairs]


def text_segmentate(text, maxlen, seps='\n', strips=None):
    """Split `text` into pieces of at most `maxlen` characters where possible, cutting at
    the first separator in `seps`, then the next, ... (recursively).  Separators stay at the
    ends of pieces; pieces are stripped of whitespace and of `strips`.

    >>> text_segmentate('今天天气很好。我们去公园吧！好的', 8, seps='。！')
    ['今天天气很好。', '我们去公园吧！', '好的']
    """
    text = text.strip().strip(strips)
    if seps and len(text) > maxlen:
        pieces = text.split(seps[0])
        text, texts = '', []
        for i, p in enumerate(pieces):
            if text and p and len(text) + len(p) > maxlen - 1:
                texts.extend(text_segmentate(text, maxlen, seps[1:], strips))
                text = ''
            if i + 1 == len(pieces):
                text = text + p
            else:
                text = text + p + seps[0]
        if text:
            texts.extend(text_segmentate(text, maxlen, seps[1:], strips))
        return texts
    return [text]


# -- parallel map ----------------------------------------------------------------------------
class _WorkerError:
    def __init__(self, message):
        self.message = message


def parallel_apply_generator(func, iterable, workers, max_queue_size, dummy=False,
                             random_seeds=True, start_method=None):
    """Apply `func` to every element of `iterable` in `workers` processes (threads if
    `dummy`), yielding ``(index, result)`` as results arrive (not in input order).

    Args:
        max_queue_size: how many inputs may wait for a worker (bounds memory on long or
            infinite iterables).
        random_seeds: True for a fresh NumPy/`random` seed per process, a list of seeds (one
            per worker), or False/None to leave the inherited seeds alone.

        start_method: the `multiprocessing` start method; by default ``'fork'`` where the
            platform has it (as bert4keras), so `func` may be a closure or lambda.  Use
            ``'spawn'`` or ``'forkserver'`` (with a picklable `func`) if the parent runs
            threads that forking could deadlock.

    A worker's exception is re-raised in the caller with the worker's traceback.

    >>> sorted(parallel_apply_generator(abs, [-1, -2, 3], workers=2, max_queue_size=4))
    [(0, 1), (1, 2), (2, 3)]
    """
    import multiprocessing

    if dummy:
        in_queue, out_queue = queue.Queue(max_queue_size), queue.Queue()
    else:
        if start_method is None and 'fork' in multiprocessing.get_all_start_methods():
            start_method = 'fork'
        ctx = multiprocessing.get_context(start_method)
        in_queue, out_queue = ctx.Queue(max_queue_size), ctx.Queue()
    if random_seeds is True:  # np.random.seed(None): fresh entropy in every process
        seeds = [None] * workers
    elif random_seeds is None or random_seeds is False:
        seeds = [False] * workers
    else:
        seeds = list(random_seeds) + [False] * max(0, workers - len(random_seeds))

    pool = []
    for k in range(workers):
        args = (func, in_queue, out_queue, seeds[k])
        if dummy:
            w = threading.Thread(target=_thread_loop, args=args, daemon=True)
        else:
            w = ctx.Process(target=_process_loop, args=args, daemon=True)
        w.start()
        pool.append(w)

    def get_result():
        while True:
            try:
                i, r = out_queue.get(timeout=1)
            except queue.Empty:
                if not any(w.is_alive() for w in pool):
                    raise RuntimeError('parallel_apply: all workers died') from None
                continue
            if isinstance(r, _WorkerError):
                raise RuntimeError('parallel_apply: func failed on input %d:\n%s'
                                   % (i, r.message))
            return i, r

    in_count = out_count = 0
    try:
        for i, d in enumerate(iterable):
            in_count += 1
            while True:
                try:
                    in_queue.put((i, d), block=False)
                    break
                except queue.Full:
                    yield get_result()  # every worker is busy: wait for one of them
                    out_count += 1
            while True:
                try:
                    i_r = out_queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(i_r[1], _WorkerError):
                    raise RuntimeError('parallel_apply: func failed on input %d:\n%s'
                                       % (i_r[0], i_r[1].message))
                yield i_r
                out_count += 1
        while out_count < in_count:
            yield get_result()
            out_count += 1
    finally:
        for _ in pool:
            try:
                in_queue.put(None, timeout=1)
            except queue.Full:
                break
        for w in pool:
            w.join(timeout=1 if dummy else 5)
            if not dummy and w.is_alive():
                w.terminate()


def _thread_loop(func, in_queue, out_queue, seed):
    # threads share the process's random state: seeding one would seed all
    _loop(func, in_queue, out_queue)


def _process_loop(func, in_queue, out_queue, seed):
    if seed is not False:  # False: keep the inherited state
        np.random.seed(seed)
        _random.seed(seed)
    _loop(func, in_queue, out_queue)


def _loop(func, in_queue, out_queue):
    while True:
        item = in_queue.get()
        if item is None:
            return
        i, d = item
        try:
            out_queue.put((i, func(d)))
        except BaseException:  # report, never leave the caller waiting
            out_queue.put((i, _WorkerError(traceback.format_exc())))


def parallel_apply(func, iterable, workers, max_queue_size, callback=None, dummy=False,
                   random_seeds=True, unordered=True, start_method=None):
    """Apply `func` to `iterable` in parallel (see `parallel_apply_generator`).

    Returns the list of results (in input order if ``unordered=False``), or, with a
    `callback`, calls it on each result as it arrives and returns None.

    >>> parallel_apply(abs, [-1, -2, 3], workers=2, max_queue_size=4, unordered=False)
    [1, 2, 3]
    """
    generator = parallel_apply_generator(func, iterable, workers, max_queue_size, dummy,
                                         random_seeds, start_method)
    if callback is None:
        if unordered:
            return [d for _, d in generator]
        return [d for _, d in sorted(generator, key=lambda d: d[0])]
    for _, d in generator:
        callback(d)


# -- files -----------------------------------------------------------------------------------
class IndexedTextFile:
    """A text file with random access to its lines: ``f[i]``, ``len(f)``, iteration.

    The byte offset of every line is found once (or loaded from / saved to `index_path`, a
    JSON file), so huge corpora can be shuffled and read by index without loading them.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'corpus.txt')
    >>> _ = builtins.open(path, 'w', encoding='utf-8').write('第一行\\nsecond\\n')
    >>> with IndexedTextFile(path) as f:
    ...     len(f), f[1], f[-2]
    (2, 'second\\n', '第一行\\n')
    """

    def __init__(self, name, encoding='utf-8', errors='strict', index_path=None):
        self.name = name
        self.encoding = encoding
        self.errors = errors
        self.file = builtins.open(name, 'rb')
        if index_path is not None and os.path.exists(index_path):
            with builtins.open(index_path) as f:
                self.offsets = json.load(f)
        else:
            self.offsets = self._scan()
            if index_path is not None:
                with builtins.open(index_path, 'w') as f:
                    json.dump(self.offsets, f)

    def _scan(self):
        offsets, offset = [], 0
        self.file.seek(0)
        for line in self.file:
            offsets.append(offset)
            offset += len(line)
        self.file.seek(0)
        return offsets

    def _decode(self, line):
        return line.decode(self.encoding, self.errors) if self.encoding else line

    def __getitem__(self, key):
        self.file.seek(self.offsets[key])
        return self._decode(self.file.readline())

    def __len__(self):
        return len(self.offsets)

    def __iter__(self):
        self.file.seek(0)
        for line in self.file:
            yield self._decode(line)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(name, mode='r', encoding=None, errors='strict', indexable=False):
    """bert4keras's `open`: the built-in `open`, or with ``indexable`` an `IndexedTextFile`
    (``indexable`` may be the path of a JSON file caching the line index)."""
    if not indexable:
        return builtins.open(name, mode, encoding=encoding, errors=errors)
    if mode not in ('r', 'rt', 'rb'):
        raise ValueError('an indexable file is read-only')
    index_path = indexable if isinstance(indexable, (str, os.PathLike)) else None
    return IndexedTextFile(name, None if mode == 'rb' else (encoding or 'utf-8'), errors,
                           index_path)


# -- text helpers ----------------------------------------------------------------------------
def strQ2B(ustring):
    """Full-width characters to half-width (U+3000 -> space, U+FF01..U+FF5E -> ASCII).

    >>> strQ2B('ＡＢＣ，１２３　！')
    'ABC,123 !'
    """
    return ustring.translate(_Q2B)


_Q2B = {0x3000: 0x20, **{c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}}


def longest_common_substring(source, target):
    """Longest common contiguous slice: ``(length, (i0, i1, j0, j1))`` with
    ``source[i0:i1] == target[j0:j1]`` (the first such span found, as bert4keras).

    >>> longest_common_substring('abcde', 'xbcdy')
    (3, (1, 4, 1, 4))
    """
    best, span = 0, (0, 0, 0, 0)
    prev = [0] * (len(target) + 1)
    for i, si in enumerate(source, 1):
        cur = [0] * (len(target) + 1)
        for j, tj in enumerate(target, 1):
            if si == tj:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
                    span = (i - best, i, j - best, j)
        prev = cur
    return best, span


def longest_common_subsequence(source, target):
    """Longest common subsequence: ``(length, [(i, j), ...])`` aligned index pairs (the
    same alignment bert4keras returns).

    >>> longest_common_subsequence('abcbdab', 'bdcaba')
    (4, [(1, 0), (2, 2), (3, 4), (5, 5)])
    """
    n, m = len(source), len(target)
    c = [[0] * (m + 1) for _ in range(n + 1)]
    for i, si in enumerate(source, 1):
        row, up = c[i], c[i - 1]
        for j, tj in enumerate(target, 1):
            if si == tj:
                row[j] = up[j - 1] + 1
            elif row[j - 1] > up[j]:
                row[j] = row[j - 1]
            else:
                row[j] = up[j]
    length, mapping = c[n][m], []
    i, j = n - 1, m - 1
    while len(mapping) < length:
        if source[i] == target[j]:
            mapping.append((i, j))
            i, j = i - 1, j - 1
        elif c[i + 1][j] > c[i][j + 1]:
            j -= 1
        else:
            i -= 1
    return length, mapping[::-1]


# -- DataGenerator ---------------------------------------------------------------------------
def _lists_as_tuples(batch):
    """Keras reads a batch's structure as tuples (TensorFlow's tf.data refuses lists), while
    bert4keras code yields ``[token_ids, segment_ids], labels``: lists become tuples."""
    if isinstance(batch, (list, tuple)):
        return tuple(_lists_as_tuples(x) for x in batch)
    if isinstance(batch, dict):
        return {k: _lists_as_tuples(v) for k, v in batch.items()}
    return batch


class DataGenerator(keras.utils.PyDataset):
    """Batches for `model.fit` / `evaluate` / `predict`, written as bert4keras generators.

    Subclass it and write ``__iter__(self, random=False)`` yielding whole batches, using
    ``self.sample(random)``, which yields ``(is_end, item)``.  Then pass the object itself
    to Keras on any backend: it is a `keras.utils.PyDataset` whose ``__getitem__`` serves
    the batches of successive passes over the data (the batch index is not used; each epoch
    takes ``len(self)`` batches, so a pass yielding that many batches is one epoch).

    Args:
        data: a list (or anything with ``len`` and indexing) or any iterable.  Without a
            length, the dataset is infinite: give `fit` a ``steps_per_epoch``.
        batch_size: samples per batch, used for ``len(self)`` and by your ``__iter__``.
        buffer_size: shuffle buffer for iterables without a length (default
            ``batch_size * 1000``); lists are fully shuffled.
        shuffle: whether the passes Keras takes shuffle (``__iter__(random=shuffle)``);
            leave it off for `evaluate` / `predict`, whose outputs follow the data order.
        seed: seed of the shuffling (None: NumPy's global random state, as bert4keras).
        workers, use_multiprocessing, max_queue_size: `PyDataset` options.  Worker
            threads prefetch batches; processes are refused, because each would make its own
            passes over the data (override ``__getitem__`` for index-based batches instead).

    The bert4keras loops work too: ``model.fit(gen.forfit(), steps_per_epoch=len(gen))``
    and ``gen.fortest()`` for inputs only.

    Batches may be nested lists (``[token_ids, segment_ids], labels``): Keras gets tuples.
    On TensorFlow, Keras fixes each input's shape from the first two batches it reads, so
    when those happen to have the same length a later batch of another length fails: pad
    to a fixed length there (``sequence_padding(x, length=maxlen)``); JAX and PyTorch take
    any length per batch.

    Example:
        >>> import keras, numpy as np
        >>> class Batches(DataGenerator):
        ...     def __iter__(self, random=False):
        ...         xs, ys = [], []
        ...         for is_end, (x, y) in self.sample(random):
        ...             xs.append(x)
        ...             ys.append(y)
        ...             if len(xs) == self.batch_size or is_end:
        ...                 yield np.array(xs), np.array(ys)
        ...                 xs, ys = [], []
        >>> data = [([float(i)], [2.0 * i]) for i in range(10)]
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> model.compile('sgd', 'mse')
        >>> history = model.fit(Batches(data, batch_size=4, shuffle=True, seed=0), epochs=2,
        ...                     verbose=0)
        >>> len(Batches(data, batch_size=4)), model.predict(Batches(data, 4), verbose=0).shape
        (3, (10, 1))
    """

    _PEEK_CACHE = 8  # batches with a smaller index are remembered until the epoch ends

    def __init__(self, data, batch_size=32, buffer_size=None, shuffle=False, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        if self.use_multiprocessing and type(self).__getitem__ is DataGenerator.__getitem__:
            raise ValueError('DataGenerator streams batches from __iter__, which worker '
                             'processes cannot share; use workers>1 without '
                             'use_multiprocessing (threads), or override __getitem__')
        self.data = data
        self.batch_size = batch_size
        if hasattr(data, '__len__'):
            self.steps = (len(data) + batch_size - 1) // batch_size
        else:
            self.steps = None
        self.buffer_size = buffer_size or batch_size * 1000
        self.shuffle = shuffle
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._lock = threading.Lock()
        self._stream = None
        self._pending = collections.deque()
        self._handed = []
        self._cache = {}
        self._peeked = {}
        self._in_epoch = False

    # -- bert4keras API -------------------------------------------------------------------
    def __len__(self):
        if self.steps is None:
            raise TypeError('this DataGenerator iterates data without a length')
        return self.steps

    @property
    def num_batches(self):
        return self.steps

    def _permutation(self, n):
        return (self._rng or np.random).permutation(n)

    def _randint(self, n):
        if self._rng is None:
            return np.random.randint(n)
        return int(self._rng.integers(n))

    def sample(self, random=False):
        """Yield ``(is_end, item)`` over the data: shuffled if `random` (a permutation for
        sized data, a buffer of `buffer_size` for iterables), `is_end` True on the last."""
        if random:
            if self.steps is None:
                def generator():
                    caches, isfull = [], False
                    for d in self.data:
                        caches.append(d)
                        if isfull:
                            yield caches.pop(self._randint(len(caches)))
                        elif len(caches) == self.buffer_size:
                            isfull = True
                    while caches:
                        yield caches.pop(self._randint(len(caches)))
            else:
                def generator():
                    for i in self._permutation(len(self.data)):
                        yield self.data[i]
            data = generator()
        else:
            data = iter(self.data)

        try:
            d_current = next(data)
        except StopIteration:
            return
        for d_next in data:
            yield False, d_current
            d_current = d_next
        yield True, d_current

    def __iter__(self, random=False):
        """Yield batches; write it in your subclass (see the class docstring)."""
        raise NotImplementedError('subclass DataGenerator and write __iter__(self, random)')

    def forfit(self, random=True):
        """Batches forever (pass after pass), for ``fit(gen.forfit(), steps_per_epoch=...)``."""
        while True:
            empty = True
            for d in self.__iter__(random):
                empty = False
                yield d
            if empty:
                raise ValueError('__iter__ yielded no batch')

    def fortest(self, random=False):
        """The inputs (first element) of every batch, forever."""
        for d in self.forfit(random):
            yield d[0]

    def to_dataset(self, types, shapes, names=None, padded_batch=False):
        """A `tf.data.Dataset` (needs TensorFlow) from an ``__iter__`` yielding single
        samples, batched by tf.data (``padded_batch`` pads to `shapes`).  With `names`,
        samples become dicts keyed by input names."""
        import tensorflow as tf

        if names is None:
            generator = self.forfit
        else:
            if isinstance(names, str):
                def wraps(k, v):
                    return {k: v}
            elif isinstance(names[0], str):
                def wraps(k, v):
                    return dict(zip(k, v))
            else:
                def wraps(k, v):
                    return tuple(dict(zip(i, j)) for i, j in zip(k, v))

            def generator():
                for d in self.forfit():
                    yield wraps(names, d)

            types = wraps(names, types)
            shapes = wraps(names, shapes)

        if padded_batch:
            dataset = tf.data.Dataset.from_generator(generator, output_types=types)
            return dataset.padded_batch(self.batch_size, shapes)
        dataset = tf.data.Dataset.from_generator(generator, output_types=types,
                                                 output_shapes=shapes)
        return dataset.batch(self.batch_size)

    # -- PyDataset ------------------------------------------------------------------------
    # Keras asks for batches by index, and also probes: with JAX and PyTorch it takes one
    # batch in a short "epoch" to build the model; with TensorFlow it reads the first two,
    # outside any epoch, to infer tensor specs, then asks for them again.  So that each
    # epoch is still exactly one pass over the data (and `predict` keeps the data order), a
    # batch read outside an epoch is kept for that index, a batch handed out in an epoch that
    # ended early is put back, and an index asked twice in an epoch gets the same batch.
    def _next_batch(self):
        if self._pending:
            return self._pending.popleft()
        for _ in range(2):
            if self._stream is None:
                self._stream = iter(self.__iter__(self.shuffle))
            try:
                return _lists_as_tuples(next(self._stream))
            except StopIteration:
                self._stream = None
        raise ValueError('__iter__ yielded no batch')

    def __getitem__(self, index):
        with self._lock:
            if not self._in_epoch:
                batch = self._peeked.get(index)
                if batch is None:
                    batch = self._next_batch()
                    if index < self._PEEK_CACHE:
                        self._peeked[index] = batch
                return batch
            batch = self._cache.get(index)
            if batch is None:
                batch = self._peeked.pop(index, None)
                if batch is None:
                    batch = self._next_batch()
                self._handed.append(batch)
                if index < self._PEEK_CACHE:
                    self._cache[index] = batch
            return batch

    def on_epoch_begin(self):
        with self._lock:
            self._in_epoch = True

    def on_epoch_end(self):
        with self._lock:
            self._in_epoch = False
            self._cache.clear()
            if self.steps is None:
                pass  # a stream: carry on where this epoch stopped
            elif len(self._handed) < self.steps:
                self._pending.extendleft(reversed(self._handed))  # a probe: give them back
            elif not self._pending:
                self._stream = None  # a full pass: the next epoch starts a new one
            self._handed = []
