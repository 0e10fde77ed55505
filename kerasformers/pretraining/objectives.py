"""Pretraining objectives: one packed instance in, one padded training example out.

An objective is called as ``objective(ids, word_starts, rng)`` on one decoded
record (``[CLS] ... [SEP]``, not padded, see `records`) with a
``numpy.random.Generator`` and returns ``(token_ids, segment_ids, labels)``,
three int32 arrays of length ``sequence_length``: inputs padded with 0 and
labels ``-100`` wherever no loss is taken (what `MaskedLMLoss` ignores).
All randomness comes from ``rng``, so the pipeline decides the masks (a new
one each epoch, reproducible from the seed). ``get_config()`` describes an
objective as a JSON-able dict (saved with the data state for exact resume).

* `MaskedLM`: BERT/RoBERTa masked LM with whole-word masking (bert4keras'
  ``TrainingDatasetRoBERTa``, but dynamic: masks drawn on the fly).
* `CausalLM`: next-token prediction (``TrainingDatasetGPT``).
* `UniLM`: a random split into source and target, seq2seq LM on the target
  (``TrainingDatasetUniLM``).

>>> import numpy as np
>>> lm = CausalLM(sequence_length=6)
>>> token_ids, segment_ids, labels = lm(np.array([101, 7, 8, 102]), np.ones(4, bool),
...                                     np.random.default_rng(0))
>>> token_ids.tolist(), labels.tolist()
([101, 7, 8, 102, 0, 0], [7, 8, 102, -100, -100, -100])
"""

import numpy as np

IGNORE = -100  # label of the positions that take no loss


class _Objective:
    """Length checks and padding shared by the objectives."""

    def __init__(self, sequence_length):
        if int(sequence_length) < 2:
            raise ValueError(f"sequence_length must be >= 2, got {sequence_length}")
        self.sequence_length = int(sequence_length)

    def _check(self, ids, word_starts):
        ids = np.asarray(ids, dtype=np.int32)
        word_starts = np.asarray(word_starts, dtype=bool)
        if ids.ndim != 1 or word_starts.shape != ids.shape:
            raise ValueError(
                f"ids and word_starts must be 1-D of one length, got shapes "
                f"{ids.shape} and {word_starts.shape}"
            )
        if ids.size > self.sequence_length:
            raise ValueError(
                f"{type(self).__name__}: a record of {ids.size} tokens is longer "
                f"than sequence_length={self.sequence_length} (shards written for "
                "a longer sequence_length?)"
            )
        return ids, word_starts

    def _pad(self, values, fill):
        out = np.full(self.sequence_length, fill, dtype=np.int32)
        out[: len(values)] = values
        return out

    def get_config(self):
        raise NotImplementedError

    def __repr__(self):
        config = self.get_config()
        name = config.pop("class")
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in config.items())})"


class MaskedLM(_Objective):
    """Masked LM with whole-word masking, drawn anew on every call.

    Each word (a token with its word-start flag set plus the continuation
    tokens after it) is chosen with probability `mask_rate`; every non-special
    token of a chosen word gets a label (its original id) and is replaced by
    `mask_id` with probability `mask_prob`, by a random non-special id with
    probability `random_prob`, and left unchanged otherwise (80/10/10 by
    default). Tokens in `special_ids` ([CLS], [SEP], [PAD], ...) are never
    chosen nor drawn as random replacements, nor is `mask_id`. Segment ids
    are all 0 (no NSP, as in RoBERTa).

    >>> import numpy as np
    >>> mlm = MaskedLM(vocab_size=50, mask_id=4, special_ids=[0, 1, 2, 3, 4],
    ...                sequence_length=8, mask_rate=1.0, mask_prob=1.0, random_prob=0.0)
    >>> ids, starts = np.array([2, 10, 11, 12, 3]), np.array([1, 1, 0, 1, 1], bool)
    >>> token_ids, segment_ids, labels = mlm(ids, starts, np.random.default_rng(0))
    >>> token_ids.tolist()
    [2, 4, 4, 4, 3, 0, 0, 0]
    >>> labels.tolist()
    [-100, 10, 11, 12, -100, -100, -100, -100]
    """

    def __init__(
        self,
        vocab_size,
        mask_id,
        special_ids,
        sequence_length,
        mask_rate=0.15,
        mask_prob=0.8,
        random_prob=0.1,
    ):
        super().__init__(sequence_length)
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)
        self.special_ids = sorted({int(i) for i in special_ids})
        self.mask_rate, self.mask_prob, self.random_prob = (
            float(mask_rate),
            float(mask_prob),
            float(random_prob),
        )
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(
                f"mask_id {self.mask_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        for name in ("mask_rate", "mask_prob", "random_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.mask_prob + self.random_prob > 1.0:
            raise ValueError(
                f"mask_prob + random_prob must be <= 1, got {self.mask_prob} + {self.random_prob}"
            )
        bad = [i for i in self.special_ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"special_ids {bad} are outside the vocabulary [0, {self.vocab_size})")
        self._is_special = np.zeros(self.vocab_size, dtype=bool)  # a lookup table, id -> bool
        self._is_special[self.special_ids] = True
        not_drawn = self._is_special.copy()
        not_drawn[self.mask_id] = True
        self._random_pool = np.flatnonzero(~not_drawn).astype(np.int32)
        if self.random_prob > 0 and self._random_pool.size == 0:
            raise ValueError("random_prob > 0 but every id is special: no random replacement")

    def __call__(self, ids, word_starts, rng):
        ids, starts = self._check(ids, word_starts)
        n = ids.size
        if n and not 0 <= ids.min() <= ids.max() < self.vocab_size:
            raise ValueError(
                f"MaskedLM: the record holds ids in [{ids.min()}, {ids.max()}], "
                f"outside [0, vocab_size={self.vocab_size}) (shards written with "
                "another tokenizer?)"
            )
        starts = starts.copy()
        starts[:1] = True  # a record never begins inside a word
        word = np.cumsum(starts) - 1  # the word each token belongs to
        chosen_words = rng.random(word[-1] + 1 if n else 0) < self.mask_rate
        chosen = chosen_words[word] & ~self._is_special[ids]
        draw = rng.random(n)
        to_mask = chosen & (draw < self.mask_prob)
        to_random = chosen & (draw >= self.mask_prob) & (draw < self.mask_prob + self.random_prob)
        token_ids = ids.copy()
        token_ids[to_mask] = self.mask_id
        picks = rng.integers(0, max(self._random_pool.size, 1), size=int(to_random.sum()))
        token_ids[to_random] = self._random_pool[picks]
        labels = np.where(chosen, ids, IGNORE)
        return (
            self._pad(token_ids, 0),
            np.zeros(self.sequence_length, np.int32),
            self._pad(labels, IGNORE),
        )

    def get_config(self):
        return {
            "class": "MaskedLM",
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "special_ids": list(self.special_ids),
            "sequence_length": self.sequence_length,
            "mask_rate": self.mask_rate,
            "mask_prob": self.mask_prob,
            "random_prob": self.random_prob,
        }


class CausalLM(_Objective):
    """Next-token prediction: ``labels[t] = ids[t + 1]``; no label at the last token.

    Segment ids are all 0; `word_starts` and `rng` are not used.

    >>> import numpy as np
    >>> _, segment_ids, labels = CausalLM(5)(np.array([101, 7, 102]), np.ones(3, bool), None)
    >>> segment_ids.tolist(), labels.tolist()
    ([0, 0, 0, 0, 0], [7, 102, -100, -100, -100])
    """

    def __call__(self, ids, word_starts, rng):
        ids, _ = self._check(ids, word_starts)
        return (
            self._pad(ids, 0),
            np.zeros(self.sequence_length, np.int32),
            self._pad(ids[1:], IGNORE),
        )

    def get_config(self):
        return {"class": "CausalLM", "sequence_length": self.sequence_length}


class UniLM(_Objective):
    """Seq2seq LM on one text: ``[CLS] a [SEP] b [SEP]``, loss on ``b [SEP]`` only.

    The content between the record's ``[CLS]`` and final ``[SEP]`` (id
    `sep_id`) is split at a uniformly drawn point, both sides non-empty, and
    a ``[SEP]`` is inserted there. Segment ids are 0 on ``[CLS] a [SEP]`` and
    1 on ``b [SEP]`` (the UniLM attention mask of ``application='unilm'``
    lets segment 0 see itself and segment 1 see everything before it).
    Labels are the next-token targets inside segment 1: position t is
    labelled ``token[t + 1]`` when ``token[t + 1]`` is in segment 1 (so from
    the inserted ``[SEP]`` to the token before the last), ``-100`` elsewhere.

    Length: the inserted ``[SEP]`` adds a token; when the record already has
    `sequence_length` tokens, its last content token is dropped first.
    Too short: a record with fewer than 2 content tokens cannot be split; it
    is returned as one segment-0 sequence with all labels ``-100`` (no loss;
    `MaskedLMLoss` counts only labelled tokens).

    >>> import numpy as np
    >>> unilm = UniLM(sep_id=102, sequence_length=8)
    >>> token_ids, segment_ids, labels = unilm(np.array([101, 5, 6, 7, 102]), np.ones(5, bool),
    ...                                        np.random.default_rng(1))
    >>> token_ids.tolist(), segment_ids.tolist()
    ([101, 5, 102, 6, 7, 102, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0])
    >>> labels.tolist()
    [-100, -100, 6, 7, 102, -100, -100, -100]
    """

    def __init__(self, sep_id, sequence_length):
        super().__init__(sequence_length)
        if self.sequence_length < 5:
            raise ValueError(
                f"UniLM needs sequence_length >= 5 ([CLS] a [SEP] b [SEP]), got "
                f"{self.sequence_length}"
            )
        self.sep_id = int(sep_id)

    def __call__(self, ids, word_starts, rng):
        ids, _ = self._check(ids, word_starts)
        if ids.size < 2 or ids[-1] != self.sep_id:
            raise ValueError(
                f"UniLM expects records [CLS] ... [SEP] ending with sep_id="
                f"{self.sep_id}; got {ids.tolist()[:8]}..."
            )
        content = ids[1:-1]
        if ids.size + 1 > self.sequence_length:
            content = content[:-1]
        segment_ids = np.zeros(self.sequence_length, np.int32)
        if content.size < 2:
            return (self._pad(ids, 0), segment_ids, np.full(self.sequence_length, IGNORE, np.int32))
        split = int(rng.integers(1, content.size))  # a = content[:split], b non-empty
        sep = np.array([self.sep_id], np.int32)
        tokens = np.concatenate([ids[:1], content[:split], sep, content[split:], sep])
        source = split + 2  # [CLS] a [SEP]
        segment_ids[source : tokens.size] = 1
        labels = np.full(self.sequence_length, IGNORE, np.int32)
        labels[source - 1 : tokens.size - 1] = tokens[source:]
        return self._pad(tokens, 0), segment_ids, labels

    def get_config(self):
        return {"class": "UniLM", "sep_id": self.sep_id, "sequence_length": self.sequence_length}
