"""`DataGenerator`: bert4keras-style batch generators served to `model.fit` / `evaluate` /
`predict` as a `keras.utils.PyDataset` (the one module of `kerasformers.data` that imports
Keras)."""

import collections
import threading

import keras
import numpy as np

from kerasformers.data.sequences import bucket_length, padding_context


def _lists_as_tuples(batch):
    """Keras reads a batch's structure as tuples (TensorFlow's tf.data refuses lists), while
    bert4keras code yields ``[token_ids, segment_ids], labels``: lists become tuples."""
    if isinstance(batch, (list, tuple)):
        return tuple(_lists_as_tuples(x) for x in batch)
    if isinstance(batch, dict):
        return {k: _lists_as_tuples(v) for k, v in batch.items()}
    return batch


def _keras_batch(batch):
    """A batch as Keras reads it: lists become tuples and a trailing None target is dropped
    (bert4keras' ``x, None`` for a model whose loss is a `Loss` layer; TensorFlow's tf.data
    cannot carry None, and ``(x,)`` means the same to Keras)."""
    batch = _lists_as_tuples(batch)
    while isinstance(batch, tuple) and len(batch) > 1 and batch[-1] is None:
        batch = batch[:-1]
    return batch


def _dims(batch):
    """The non-batch sizes of every array of a batch, in order."""
    return [d for x in keras.tree.flatten(batch) for d in np.shape(x)[1:]]


def _differing(batch, first):
    return sum(a != b for a, b in zip(_dims(batch), _dims(first)))


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
        shuffle: whether the passes Keras takes when given the generator itself shuffle
            (``__iter__(random=shuffle)``); leave it off for `evaluate` / `predict`, whose
            outputs follow the data order.  ``forfit()`` shuffles by default and
            ``fortest()`` does not, as in bert4keras.
        seed: seed of the shuffling (None: NumPy's global random state, as bert4keras, so
            ``np.random.seed(s)`` gives the original's order: ``np.random.permutation``
            for sized data, ``np.random.randint`` draws from the buffer for streams).
        buckets: round the length of the batches your ``__iter__`` pads with
            ``sequence_padding(...)`` (no explicit ``length``) up to a multiple of an int,
            or to the smallest of a list of lengths (`sequence_padding`'s ``buckets``).
            For JAX, which compiles the train step again for every new batch shape:
            ``buckets=32`` with ``maxlen=128`` means at most 4 shapes.  Applies to the
            batches Keras takes (the generator itself, ``forfit()``, ``fortest()``), not
            to ``for batch in gen`` loops.
        workers, use_multiprocessing, max_queue_size: `PyDataset` options.  Worker
            threads prefetch batches; processes are refused, because each would make its own
            passes over the data (override ``__getitem__`` for index-based batches instead).

    The bert4keras loops work too, on every backend:
    ``model.fit(gen.forfit(), steps_per_epoch=len(gen))`` and
    ``model.predict(gen.fortest(), steps=len(gen))``.

    Batches may be nested lists (``[token_ids, segment_ids], labels``): Keras gets tuples;
    ``x, None`` (a model whose loss is a `Loss` layer) reaches Keras as ``(x,)``.  Batches
    may differ in length: on TensorFlow, Keras fixes each input's shape from the first two
    batches it reads, so when those have the same shapes the generator shows it, for that
    shape probe only, a later batch of the same pass with other shapes (up to 8 batches
    ahead; the batches themselves are served in their order).

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
    _LOOKAHEAD = 8  # batches read ahead for TensorFlow's shape probe

    def __init__(
        self,
        data,
        batch_size=32,
        buffer_size=None,
        shuffle=False,
        seed=None,
        buckets=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if buckets is not None:
            bucket_length(1, buckets)  # checks it
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
        self.buckets = buckets
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._lock = threading.Lock()
        self._stream = None
        self._pending = collections.deque()
        self._handed = []
        self._cache = {}
        self._peeked = {}
        self._record = {}  # sequence_padding results of batches read outside an epoch
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
        """Batches forever (pass after pass, shuffled by default as bert4keras), for
        ``fit(gen.forfit(), steps_per_epoch=len(gen))``.  An iterator (``next`` gives the
        batches as ``__iter__`` yields them) that Keras reads as an endless
        `keras.utils.PyDataset`, so that TensorFlow sees batches of varying length."""
        return _Passes(self, random, inputs_only=False)

    def fortest(self, random=False):
        """The inputs (first element) of every batch, forever, in the data order by
        default: ``predict(gen.fortest(), steps=len(gen))``.  ``next`` gives the inputs as
        ``__iter__`` made them; Keras reads ``(inputs,)``."""
        return _Passes(self, random, inputs_only=True)

    def _draw(self, stream, record=None):
        """The next batch of a running ``__iter__``, padded to this generator's buckets;
        `record` (a dict) collects the arrays `sequence_padding` padded to their longest."""
        token = padding_context.set((self.buckets, record))
        try:
            return next(stream)
        finally:
            padding_context.reset(token)

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
    # TensorFlow's probe reads outside any epoch only to infer the tensor specs: it is shown
    # (`_spec_probe`) batches whose sizes differ wherever the batches' sizes can differ.
    def _next_batch(self):
        if self._pending:
            return self._pending.popleft()
        for _ in range(2):
            if self._stream is None:
                self._stream = iter(self.__iter__(self.shuffle))
            try:
                return _keras_batch(self._draw(self._stream, self._record))
            except StopIteration:
                self._stream = None
        raise ValueError("__iter__ yielded no batch")

    def _read_ahead(self):
        """The next batch of the current pass (kept at the end of _pending, served in
        order), or None at its end."""
        if self._stream is None:
            return None
        try:
            batch = _keras_batch(self._draw(self._stream, self._record))
        except StopIteration:
            self._stream = None
            return None
        self._pending.append(batch)
        return batch

    def __getitem__(self, index):
        with self._lock:
            if not self._in_epoch:
                batch = self._peeked.get(index)
                if batch is None:
                    batch = self._next_batch()
                    if index < self._PEEK_CACHE:
                        self._peeked[index] = batch
                first = self._peeked.get(0)
                if index > 0 and first is not None and keras.backend.backend() == "tensorflow":
                    return _spec_probe(
                        batch, first, self._read_ahead, self._LOOKAHEAD, self._record
                    )
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
            self._record = None

    def on_epoch_end(self):
        with self._lock:
            self._in_epoch = False
            self._record = {}
            self._cache.clear()
            if self.steps is None:
                pass  # a stream: carry on where this epoch stopped
            elif len(self._handed) < self.steps:
                self._pending.extendleft(reversed(self._handed))  # a probe: give them back
            elif not self._pending:
                self._stream = None  # a full pass: the next epoch starts a new one
            self._handed = []


def _spec_probe(batch, first, read_ahead, lookahead, record):
    """What TensorFlow's shape probe is shown besides `first` (it leaves open the sizes in
    which the two differ): `batch`, or, when it has the shapes of `first`, the batch among
    the next `lookahead` that differs from `first` in most sizes (`read_ahead()` reads one,
    keeping it to be served in order, None at the end of a pass); in it, the axes of the
    arrays that `sequence_padding` padded to their longest (in `record`) made to differ (a
    slice, shown to the probe only: they vary from batch to batch even when these agree)."""
    total = len(_dims(first))
    best, most = batch, _differing(batch, first)
    for _ in range(lookahead):
        if most == total:
            break
        ahead = read_ahead()
        if ahead is None:
            break
        if _differing(ahead, first) > most:
            best, most = ahead, _differing(ahead, first)

    def opened(x, x0):
        padded = record.get(id(x))
        if padded is None or padded[0] is not x or np.ndim(x) != np.ndim(x0):
            return x
        cut = tuple(
            slice(0, max(np.shape(x)[a] - 1, 0))
            if a in padded[1] and np.shape(x)[a] == np.shape(x0)[a]
            else slice(None)
            for a in range(np.ndim(x))
        )
        return x[cut]

    if not record:
        return best
    leaves, leaves0 = keras.tree.flatten(best), keras.tree.flatten(first)
    if len(leaves) != len(leaves0):
        return best
    return keras.tree.pack_sequence_as(best, [opened(x, x0) for x, x0 in zip(leaves, leaves0)])


class _Passes(keras.utils.PyDataset):
    """`DataGenerator.forfit` / `fortest`: the generator's batches pass after pass, as a
    Python iterator (bert4keras' generator) and an endless `keras.utils.PyDataset` (what
    Keras reads; a plain generator's first two batches would fix TensorFlow's shapes)."""

    def __init__(self, generator, random, inputs_only):
        super().__init__()
        self._generator = generator
        self._random = random
        self._inputs_only = inputs_only
        self._lock = threading.Lock()
        self._stream = None
        self._fresh = False
        self._pending = collections.deque()
        self._first = None
        self._probes = 0
        self._record = {}
        self._in_epoch = False

    @property
    def num_batches(self):
        return None

    def __len__(self):
        raise TypeError("forfit()/fortest() are endless: give Keras steps_per_epoch / steps")

    def __iter__(self):
        return self

    def _raw(self):
        """The next batch as __iter__ yields it, starting a new pass at the end of one."""
        while True:
            if self._stream is None:
                self._stream = iter(self._generator.__iter__(self._random))
                self._fresh = True
            try:
                batch = self._generator._draw(self._stream, self._record)
            except StopIteration:
                self._stream = None
                if self._fresh:
                    raise ValueError("__iter__ yielded no batch") from None
                continue
            self._fresh = False
            return batch[0] if self._inputs_only else batch

    def __next__(self):
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            return self._raw()

    def _keras(self, batch):
        return (_lists_as_tuples(batch),) if self._inputs_only else _keras_batch(batch)

    def _read_ahead(self):
        batch = self._raw()  # endless: on into the next pass
        self._pending.append(batch)
        return self._keras(batch)

    def __getitem__(self, index):
        with self._lock:
            if self._in_epoch or keras.backend.backend() != "tensorflow":
                return self._keras(self._pending.popleft() if self._pending else self._raw())
            # TensorFlow's shape probe: batches it reads wait in _pending to be served
            k = self._probes
            self._probes += 1
            while len(self._pending) <= k:
                self._pending.append(self._raw())
            batch = self._keras(self._pending[k])
            if k == 0:
                self._first = batch
                return batch
            return _spec_probe(
                batch, self._first, self._read_ahead, DataGenerator._LOOKAHEAD, self._record
            )

    def on_epoch_begin(self):
        with self._lock:
            self._in_epoch = True
            self._probes = 0
            self._record = None

    def on_epoch_end(self):
        with self._lock:
            self._in_epoch = False
            self._record = {}
