"""`DataGenerator`: bert4keras-style batch generators served to `model.fit` / `evaluate` /
`predict` as a `keras.utils.PyDataset` (the one module of `kerasformers.data` that imports
Keras)."""

import collections
import threading

import keras
import numpy as np


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

    def __init__(self, data, batch_size=32, buffer_size=None, shuffle=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if self.use_multiprocessing and type(self).__getitem__ is DataGenerator.__getitem__:
            raise ValueError(
                "DataGenerator streams batches from __iter__, which worker "
                "processes cannot share; use workers>1 without "
                "use_multiprocessing (threads), or override __getitem__"
            )
        self.data = data
        self.batch_size = batch_size
        if hasattr(data, "__len__"):
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
            raise TypeError("this DataGenerator iterates data without a length")
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
        raise NotImplementedError("subclass DataGenerator and write __iter__(self, random)")

    def forfit(self, random=True):
        """Batches forever (pass after pass), for ``fit(gen.forfit(), steps_per_epoch=...)``."""
        while True:
            empty = True
            for d in self.__iter__(random):
                empty = False
                yield d
            if empty:
                raise ValueError("__iter__ yielded no batch")

    def fortest(self, random=False):
        """The inputs (first element) of every batch, forever."""
        for d in self.forfit(random):
            yield d[0]

    def to_dataset(self, types, shapes, names=None, padded_batch=False):
        """A `tf.data.Dataset` (needs TensorFlow) from an ``__iter__`` yielding single
        samples, batched by tf.data (``padded_batch`` pads to `shapes`).  With `names`,
        samples become dicts keyed by input names."""
        from kerasformers.backends.tensorflow.data import to_dataset

        return to_dataset(self, types, shapes, names, padded_batch)

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
        raise ValueError("__iter__ yielded no batch")

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
