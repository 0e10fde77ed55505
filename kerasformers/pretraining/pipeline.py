"""The pretraining input pipeline: ArrayRecord shards -> grain -> batches Keras `fit` consumes.

`PretrainingData` reads the records of a shard directory (or a list of
files) and applies an objective (`objectives.MaskedLM`, `CausalLM`,
`UniLM`) on the fly, so every epoch sees a new order and new masks while
every batch stays a pure function of ``(seed, step)``. The grain pipeline::

    MapDataset.source(ArrayRecordDataSource(files))
      .map_with_index(decode)          # bytes -> (ids, word_starts); errors name the record
      .shuffle(seed=seed)              # element i of epoch e: permutation seeded seed + e
      .repeat(num_epochs)              # global element index g = e * num_records + i
      .random_map(objective, seed=s2)  # rng = Philox(s2) at counter g: a new mask per epoch
      [: whole global batches]         # (finite num_epochs only)
      .batch(batch_size // process_count, drop_remainder=True)
      [process_index::process_count]   # this process's rows of each global batch
      [start_step:]                    # resume exactly
      .to_iter_dataset(...)            # (+ .mp_prefetch(...) with workers > 0)

Because grain's shuffle and random_map are functions of the element index,
nothing depends on the number of processes, on `workers`, or on where
iteration started: ``batches(k)`` yields what ``batches(0)`` yields from its
k-th batch on, and the local batches of processes ``0..n-1`` stacked are
the global batch of one process.

>>> import os, tempfile
>>> import numpy as np
>>> from array_record.python.array_record_module import ArrayRecordWriter
>>> from kerasformers.pretraining.objectives import CausalLM
>>> from kerasformers.pretraining.records import encode_record
>>> path = os.path.join(tempfile.mkdtemp(), "shard-00000.array_record")
>>> writer = ArrayRecordWriter(path, "group_size:1")
>>> for n in range(3, 9):
...     writer.write(encode_record([101] + list(range(1000, 1000 + n)) + [102], [1] * (n + 2)))
>>> writer.close()
>>> data = PretrainingData([path], CausalLM(sequence_length=12), batch_size=2, seed=0)
>>> (token_ids, segment_ids), labels = next(iter(data.batches()))
>>> token_ids.shape, token_ids.dtype.name, labels.shape
((2, 12), 'int32', (2, 12))
>>> data.state(step=100)["step"]
100
"""

import hashlib
import json
import os

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from kerasformers.pretraining.records import decode_record

SHARD_SUFFIX = ".array_record"
MANIFEST = "manifest.json"
STATE_VERSION = 1
# Settings a resumed run must share with the interrupted one. The process
# index and count are saved but not compared: the global batches do not
# depend on them, so a run may resume on another number of processes.
_STATE_KEYS = (
    "seed",
    "batch_size",
    "shuffle",
    "num_epochs",
    "shards",
    "manifest_sha256",
    "objective",
)


def _shard_files(shards):
    """(sorted shard paths, manifest dict or None, manifest sha256 or None)."""
    if isinstance(shards, (str, os.PathLike)) and os.path.isdir(shards):
        directory = os.fspath(shards)
        names = sorted(os.listdir(directory))
        files = [os.path.join(directory, n) for n in names if n.endswith(SHARD_SUFFIX)]
        unknown = [
            n
            for n in names
            if not n.endswith(SHARD_SUFFIX) and n != MANIFEST and not n.startswith(".")
        ]
        if unknown:
            raise ValueError(
                f"shard directory {directory} holds files that are neither "
                f"*{SHARD_SUFFIX} shards nor {MANIFEST}: {unknown[:5]}"
            )
        if not files:
            raise ValueError(f"shard directory {directory} holds no *{SHARD_SUFFIX} files")
        manifest_path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(manifest_path):
            return files, None, None
        # imported here: `shards` pulls in Keras, which grain's workers do not need
        from kerasformers.pretraining.shards import read_manifest

        manifest = read_manifest(directory)
        with open(manifest_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return files, manifest, digest
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    files = [os.fspath(f) for f in shards]
    if not files:
        raise ValueError("no shard files given")
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"shard {f} does not exist (or is not a file)")
        if not f.endswith(SHARD_SUFFIX):
            raise ValueError(f"shard {f} is not an ArrayRecord file (*{SHARD_SUFFIX})")
    return files, None, None


def _record_counts(files):
    """Records per shard; a file that is not a readable ArrayRecord file is refused."""
    counts = []
    for f in files:
        try:
            reader = ArrayRecordReader(f)
            ok = reader.ok()
            counts.append(int(reader.num_records()) if ok else None)
            reader.close()
        except RuntimeError:  # the reader's own refusals (e.g. "should be at least 64KB")
            ok = False
        if not ok:
            raise ValueError(
                f"{f} is not a readable ArrayRecord file (truncated, or written by another tool)"
            )
    return counts


def _backend():
    import keras  # here, not at the top: grain's worker processes stay light

    return keras.backend.backend()


def _default_process(process_index, process_count):
    """Fill in jax.process_index()/process_count() on JAX, else 0/1."""
    if process_index is None or process_count is None:
        if _backend() == "jax":
            import jax  # only on the jax backend

            index, count = jax.process_index(), jax.process_count()
        else:
            index, count = 0, 1
        process_index = index if process_index is None else process_index
        process_count = count if process_count is None else process_count
    return int(process_index), int(process_count)


class _Decode:
    """bytes -> (ids, word_starts); a record that does not decode names its shard and index."""

    def __init__(self, files, counts):
        self.files = files
        self.ends = np.cumsum(counts)

    def __call__(self, index, data):
        try:
            return decode_record(data)
        except ValueError as error:
            key = index % int(self.ends[-1])
            shard = int(np.searchsorted(self.ends, key, side="right"))
            position = key - (int(self.ends[shard - 1]) if shard else 0)
            raise ValueError(
                f"record {position} of {self.files[shard]} does not decode: {error}"
            ) from None


class _Apply:
    """Run the objective with grain's per-element rng; shape the example for Keras."""

    def __init__(self, objective):
        self.objective = objective

    def __call__(self, record, rng):
        token_ids, segment_ids, labels = self.objective(record[0], record[1], rng)
        return (token_ids, segment_ids), labels


class _Positions:
    """Global batch -> this process's rows, with labelled positions as a third input."""

    def __init__(self, count, process_index, process_count):
        self.count = None if count is True else count
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, batch):
        from kerasformers.pretraining.positions import label_positions

        (token_ids, segment_ids), labels = batch
        positions, labels = label_positions(labels, count=self.count)
        rows = len(labels) // self.process_count
        part = slice(self.process_index * rows, (self.process_index + 1) * rows)
        return (token_ids[part], segment_ids[part], positions[part]), labels[part]


def _positions_setting(value, sequence_length):
    if value is True or value is False:
        return value
    if isinstance(value, (int, np.integer)) and 1 <= int(value) <= sequence_length:
        return int(value)
    raise ValueError(
        f"masked_positions must be True, False or a width in [1, sequence_length="
        f"{sequence_length}], got {value!r}"
    )


class PretrainingData:
    """Batches of a pretraining objective over ArrayRecord shards, for `model.fit`.

    shards: a directory (its ``*.array_record`` files in name order, and its
        ``manifest.json`` if present) or a list of shard files.
    objective: called as ``objective(ids, word_starts, rng)`` (see `objectives`).
    batch_size: the GLOBAL batch size, over all processes.
    seed: in [0, 2**32); fixes the order of every epoch and every mask. (Epoch
        e is ordered by grain's index shuffle seeded ``seed + e``, so seeds s
        and s + 1 share orders one epoch apart; their masks differ.)
    shuffle: reshuffle every epoch (a different, seed-determined order each
        epoch); False reads the shards in order.
    num_epochs: passes over the data, None to repeat forever. A finite run
        ends with the last whole global batch.
    process_index, process_count: this process's rows of each global batch
        (data parallel with ``keras.distribution`` and
        ``auto_shard_dataset=False``): process p gets rows
        ``[p * B / n, (p + 1) * B / n)``. Default: ``jax.process_index()`` /
        ``jax.process_count()`` on the JAX backend, else 0 / 1.
    workers: grain worker processes preparing batches (0: in this process,
        with reader threads).
    masked_positions: False, True or a width: batches carry each row's
        labelled positions as a third input and labels ``[batch, count]``
        (`positions.label_positions`) for a `masked_positions_model`, which
        computes the MLM head only there. True: ``count`` is the global batch's
        most labels per row rounded up to a multiple of 8 (the same on every
        process; on TensorFlow, whose Keras data adapter fixes every shape from
        the first batches, the sequence length); an int fixes it (a row with
        more labels is an error).

    The module docstring has a runnable example.
    """

    def __init__(
        self,
        shards,
        objective,
        batch_size,
        seed=0,
        shuffle=True,
        num_epochs=None,
        process_index=None,
        process_count=None,
        workers=0,
        masked_positions=False,
    ):
        self.files, self.manifest, self.manifest_sha256 = _shard_files(shards)
        self.counts = _record_counts(self.files)
        self.num_records = sum(self.counts)
        if not self.num_records:
            raise ValueError(f"the shards hold no records: {self.files[:5]}")
        if not callable(objective) or not hasattr(objective, "sequence_length"):
            raise ValueError(
                f"objective must be callable as objective(ids, word_starts, rng) "
                f"and have a sequence_length; got {objective!r}"
            )
        self.objective = objective
        self.batch_size, self.seed, self.workers = int(batch_size), int(seed), int(workers)
        self.shuffle = bool(shuffle)
        self.num_epochs = None if num_epochs is None else int(num_epochs)
        self.process_index, self.process_count = _default_process(process_index, process_count)
        self.masked_positions = _positions_setting(masked_positions, objective.sequence_length)
        if self.masked_positions is True and _backend() == "tensorflow":
            # Keras' TensorFlow data adapter fixes every shape from the first batches, so a
            # width that changes between batches fails later: one width, the longest
            self.masked_positions = int(objective.sequence_length)
        self._check_settings()
        self._check_manifest()
        self._max_id = None

    def _check_settings(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {self.num_epochs}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"need 0 <= process_index < process_count, got "
                f"{self.process_index} and {self.process_count}"
            )
        if self.batch_size % self.process_count:
            raise ValueError(
                f"the global batch_size {self.batch_size} is not divisible by "
                f"process_count={self.process_count}"
            )
        if self.num_epochs is not None and self.num_records * self.num_epochs < self.batch_size:
            raise ValueError(
                f"{self.num_epochs} epoch(s) of {self.num_records} records do not "
                f"fill one batch of {self.batch_size}"
            )

    def _check_manifest(self):
        if self.manifest is None:
            return
        listed = {s.get("file"): s.get("instances") for s in self.manifest.get("shards", [])}
        present = {os.path.basename(f): n for f, n in zip(self.files, self.counts)}
        if listed and sorted(listed) != sorted(present):
            raise ValueError(
                f"the manifest lists shards {_names(listed)}; the directory holds "
                f"{_names(present)} (an unfinished or mixed shard directory)"
            )
        wrong = [
            f"{name} ({present[name]} records, manifest {n})"
            for name, n in listed.items()
            if n is not None and n != present[name]
        ]
        if wrong:
            raise ValueError(f"shards differ from their manifest: {', '.join(wrong)}")
        length = self.manifest.get("sequence_length")
        if length is not None and int(length) > self.objective.sequence_length:
            raise ValueError(
                f"the shards were written for sequence_length={length}, longer than "
                f"the objective's {self.objective.sequence_length}"
            )
        vocab = self._manifest_vocab_size()
        wanted = getattr(self.objective, "vocab_size", None)
        if vocab is not None and wanted is not None and wanted < vocab:
            raise ValueError(
                f"the objective's vocab_size={wanted} is smaller than that of the "
                f"tokenizer that wrote the shards ({vocab})"
            )

    def _manifest_tokenizer(self):
        return (self.manifest or {}).get("tokenizer") or {}

    def _manifest_vocab_size(self):
        size = self._manifest_tokenizer().get("vocab_size")
        return None if size is None else int(size)

    @property
    def local_batch_size(self):
        """Rows per batch on this process: batch_size // process_count."""
        return self.batch_size // self.process_count

    @property
    def steps_per_epoch(self):
        """Global batches per pass over the data (the last partial one is not counted)."""
        return self.num_records // self.batch_size

    def _shuffle_and_map_seeds(self):
        # Two independent 32-bit seeds: the order's and the objective's.
        shuffle_seed = self.seed
        map_seed = int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0])
        return shuffle_seed, map_seed

    def examples(self):
        """The global stream of examples ``((token_ids, segment_ids), labels)`` as a MapDataset."""
        shuffle_seed, map_seed = self._shuffle_and_map_seeds()
        ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(self.files))
        ds = ds.map_with_index(_Decode(self.files, self.counts))
        if self.shuffle:
            ds = ds.shuffle(seed=shuffle_seed)
        ds = ds.repeat(self.num_epochs)
        ds = ds.random_map(_Apply(self.objective), seed=map_seed)
        if self.num_epochs is not None:
            ds = ds[: len(ds) - len(ds) % self.batch_size]
        return ds

    def batches(self, start_step=0):
        """This process's batches ``((token_ids, segment_ids), labels)`` from step `start_step`.

        A grain IterDataset of int32 numpy arrays, ``[local_batch_size,
        sequence_length]`` each, that ``model.fit`` consumes directly
        (infinite unless `num_epochs` is set; give ``fit`` its
        ``steps_per_epoch``). With `masked_positions`, the inputs are
        ``(token_ids, segment_ids, positions)`` and the labels ``[local_batch_size,
        count]``.
        """
        start_step = int(start_step)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if self.masked_positions is False:
            ds = self.examples().batch(self.local_batch_size, drop_remainder=True)
            ds = ds[self.process_index :: self.process_count][start_step:]
        else:
            # the width comes from the global batch, so every process gets the same shapes
            ds = self.examples().batch(self.batch_size, drop_remainder=True)[start_step:]
            ds = ds.map(_Positions(self.masked_positions, self.process_index, self.process_count))
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        if self.workers:
            _parse_absl_flags()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2)
            )
        return ds

    def state(self, step):
        """A JSON-able description of this pipeline at global step `step`, for exact resume."""
        return {
            "version": STATE_VERSION,
            "step": int(step),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "num_epochs": self.num_epochs,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "shards": [
                {"name": os.path.basename(f), "records": n} for f, n in zip(self.files, self.counts)
            ],
            "manifest_sha256": self.manifest_sha256,
            "objective": json.loads(json.dumps(self.objective.get_config())),
        }

    def check_state(self, state):
        """Refuse to resume from `state` (of `state()`) with other data or settings; its step.

        Every differing setting is named in one ValueError. The process index
        and count may differ (the global batches do not depend on them).
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a PretrainingData state (version {STATE_VERSION}): {str(state)[:200]}"
            )
        ours = self.state(state.get("step", 0))
        differ = []
        for key in _STATE_KEYS:
            if state.get(key) != ours[key]:
                differ.append(f"{key}: saved {_short(state.get(key))}, now {_short(ours[key])}")
        if differ:
            raise ValueError(
                "cannot resume exactly: the data pipeline differs from the saved "
                "one in " + "; ".join(differ)
            )
        return int(state["step"])

    def max_id(self):
        """The largest token id in the shards (one pass over every record, cached)."""
        if self._max_id is None:
            source = grain.sources.ArrayRecordDataSource(self.files)
            high = 0
            for key in range(0, len(source), 1024):
                for data in source.__getitems__(range(key, min(key + 1024, len(source)))):
                    ids, _ = decode_record(data)
                    high = max(high, int(ids.max()) if ids.size else 0)
            self._max_id = high
        return self._max_id

    def check_vocab(self, vocab_size=None, tokenizer=None):
        """Refuse a model vocabulary or tokenizer that does not fit the shards.

        vocab_size: the model's token embedding rows; must cover the shards'
            tokenizer vocabulary (manifest ``tokenizer.vocab_size``) or, without a
            manifest, the largest id in the records (one pass over the data),
            and the objective's `vocab_size` (MaskedLM's random replacements).
        tokenizer: must be the one that wrote the shards (same vocabulary size
            and `shards.vocab_hash` as the manifest's ``tokenizer``); without a
            manifest only its size is checked against the largest id.
        """
        info = self._manifest_tokenizer()
        shard_vocab = self._manifest_vocab_size()
        if tokenizer is not None:
            size = int(tokenizer.vocab_size)
            if shard_vocab is not None and size != shard_vocab:
                raise ValueError(
                    f"the shards were written by a tokenizer with {shard_vocab} "
                    f"tokens; this tokenizer has {size}"
                )
            from kerasformers.pretraining.shards import vocab_hash

            digest = vocab_hash(tokenizer) if info.get("vocab_sha256") else None
            if digest is not None and digest != info["vocab_sha256"]:
                raise ValueError(
                    "the shards were written by another tokenizer: vocabulary "
                    f"sha256 {info['vocab_sha256'][:12]}... in the manifest, "
                    f"{digest[:12]}... for this one"
                )
            if shard_vocab is None and self.max_id() >= size:
                raise ValueError(
                    f"the shards hold id {self.max_id()}, outside this tokenizer's {size} tokens"
                )
        if vocab_size is not None:
            vocab_size = int(vocab_size)
            if shard_vocab is not None and vocab_size < shard_vocab:
                raise ValueError(
                    f"the model's vocab_size={vocab_size} is smaller than the "
                    f"shards' tokenizer vocabulary ({shard_vocab} tokens)"
                )
            if shard_vocab is None and self.max_id() >= vocab_size:
                raise ValueError(
                    f"the shards hold id {self.max_id()}, outside the model's "
                    f"vocab_size={vocab_size}"
                )
            wanted = getattr(self.objective, "vocab_size", None)
            if wanted is not None and wanted > vocab_size:
                raise ValueError(
                    f"the objective draws ids below {wanted}, more than the "
                    f"model's vocab_size={vocab_size}"
                )


def _parse_absl_flags():
    """Let grain's worker processes start outside an absl app.

    With JAX installed, grain's multiprocessing reads an absl flag, which
    raises ``UnparsedFlagAccessError`` unless the program was started by
    ``absl.app.run``; mark the flags parsed (at their defaults) in that case.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _names(shards, limit=4):
    names = sorted(shards)
    return str(names[:limit])[:-1] + (f", ... {len(names)} in all]" if len(names) > limit else "]")


def _short(value, limit=120):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
