"""`GenerationConfig`: every setting of `generate` and its default, in one place.

Names and semantics are transformers'. A config is validated when made (and its
eos ids against the model's vocabulary when used); `replace` makes a variant and
refuses unknown names.

>>> from kerasformers.generation import GenerationConfig
>>> config = GenerationConfig(max_new_tokens=8, num_beams=4)
>>> config.replace(length_penalty=0.6).length_penalty
0.6
>>> config.replace(beams=2)
Traceback (most recent call last):
...
TypeError: unknown generation arguments: beams
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class GenerationConfig:
    """The settings of `generate` / `stream_generate` (transformers' names).

    eos_token_id: an id or a list of ids that end a sequence; pad_token_id fills
    the rest (default: the first eos id, else 0). early_stopping (beam search):
    False, True or "never", as transformers. seed: sampling's seed (None: random).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_id: Union[int, Sequence[int], None] = None
    pad_token_id: Optional[int] = None
    num_return_sequences: int = 1
    seed: Optional[int] = None

    def __post_init__(self):
        _check(self)

    def replace(self, **overrides):
        """A copy with `overrides` (TypeError naming any unknown argument)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    @property
    def eos_ids(self):
        """The eos ids as a list of ints (empty without one)."""
        if self.eos_token_id is None:
            return []
        if np.ndim(self.eos_token_id) == 0:
            return [int(self.eos_token_id)]
        return [int(e) for e in self.eos_token_id]

    @property
    def pad(self):
        """The id that fills finished rows: pad_token_id, else the first eos id, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else 0

    def check_vocabulary(self, vocab_size):
        _check(self, vocab_size)


def _check(c, vocab_size=None):
    """Every setting in range; with `vocab_size`, the eos ids in the vocabulary too."""
    if c.max_new_tokens is None or int(c.max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {c.max_new_tokens!r}")
    if c.min_new_tokens < 0 or c.min_new_tokens > c.max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {c.min_new_tokens}")
    if c.num_beams is None or int(c.num_beams) < 1:
        raise ValueError(f"num_beams must be >= 1, got {c.num_beams!r}")
    if c.top_p is not None and not 0.0 < c.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {c.top_p!r}")
    if c.top_k is not None and c.top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {c.top_k!r}")
    if c.temperature is None or c.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {c.temperature!r}")
    if c.repetition_penalty is None or c.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {c.repetition_penalty!r}")
    if vocab_size is not None:
        for e in c.eos_ids:
            if not 0 <= e < vocab_size:
                raise ValueError(f"eos_token_id {e} is not in the vocabulary (size {vocab_size})")
    k = c.num_return_sequences
    if k < 1 or (not c.do_sample and k > c.num_beams):
        raise ValueError(
            f"num_return_sequences ({k}) must be in [1, num_beams ({c.num_beams})] without sampling"
        )
