"""Name-keyed weight loading and export, driven by each model's weight table.

A weight table is data: rows `(our variable path, google key, hf key)`. A key is
a plain string, or `T("name")` when the stored tensor is the transpose of ours
(PyTorch Linear weights, BERT's NSP `output_weights`, T5 relative biases), or
`split("name", part, parts)` when ours is one of `parts` equal slices of a fused
tensor along its last axis (GPT-2's `c_attn` = q|k|v); on export the rows that
share a split key are concatenated back in part order. Weights are never
matched by position.

Loading reads, converts and checks every row first and assigns nothing until
all pass: missing keys, shape mismatches (quoted as stored in the file), data of
the wrong kind (a float weight accepts only floating-point data: bool, integer,
string or object tensors are refused, never cast), values that are NaN or Inf
(as stored, or after conversion to the weight's dtype, e.g. float32 -> float16
overflow) and checkpoint tensors that look like ours but have no home (e.g. a
24-layer checkpoint for a 12-layer config) are reported together. The NaN/Inf
check is one pass over each tensor (about 0.06 s for BERT-base's 110M values).
"""

import ctypes
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kerasformers.checkpoints.bfloat16 import is_bfloat16, numpy_bfloat16
from kerasformers.checkpoints.deferred import backend_value, initialize_from, is_deferred
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.sources import open_checkpoint

NAMINGS = ("google", "hf")  # the columns of a weight table after our path


def naming_column(naming):
    """Index of `naming`'s column in a weight table row; ValueError listing the valid ones.

    >>> naming_column("hf")
    2
    """
    if naming not in NAMINGS:
        raise ValueError(
            f"unknown naming {naming!r}: valid namings are " + ", ".join(repr(n) for n in NAMINGS)
        )
    return 1 + NAMINGS.index(naming)


@dataclass(frozen=True)
class Key:
    """A checkpoint tensor name plus the named transform that maps it to ours."""

    name: str
    transform: str = None  # None | "transpose" | "skip_rows" | "split"
    arg: int = 0  # rows skipped by "skip_rows"; slice index for "split"
    parts: int = 1  # number of equal slices for "split"

    def to_ours(self, value):
        if self.transform == "transpose":
            return np.ascontiguousarray(np.transpose(value))
        if self.transform == "skip_rows":
            return value[self.arg :]
        if self.transform == "split":
            n = value.shape[-1] // self.parts
            return np.ascontiguousarray(value[..., self.arg * n : (self.arg + 1) * n])
        return value

    def from_ours(self, value):
        if self.transform == "skip_rows":  # unused leading rows come back as zeros
            return np.concatenate([np.zeros((self.arg,) + value.shape[1:], value.dtype), value])
        if self.transform == "split":  # one slice; export_weights concatenates the parts
            return value
        return self.to_ours(value)  # transpose is its own inverse

    def stored_shape(self, ours):
        """The shape the file must hold for our variable of shape `ours`."""
        ours = tuple(ours)
        if self.transform == "transpose":
            return ours[::-1]
        if self.transform == "skip_rows":
            return (ours[0] + self.arg,) + ours[1:]
        if self.transform == "split":
            return ours[:-1] + (ours[-1] * self.parts,)
        return ours


def T(name):
    """Key whose tensor is stored transposed (e.g. a torch Linear weight)."""
    return Key(name, "transpose")


def skip_rows(name, n):
    """Key whose first `n` rows are not ours (RoBERTa's position offset)."""
    return Key(name, "skip_rows", n)


def split(name, part, parts):
    """Key for slice `part` of `parts` equal slices (last axis) of a fused tensor."""
    return Key(name, "split", part, parts)


@dataclass(frozen=True)
class VocabColumns(Key):
    """Key of an LM kernel [hidden, vocab] whose columns are the vocabulary:
    on load, `vocab_fn` (keep_tokens / compound_tokens, which act on rows) is
    applied to its columns. On export the kernel is written as it is (the
    dropped vocabulary is not restored). T5's untied `Decoder-Output-LM`.

    >>> import numpy as np
    >>> key = VocabColumns("lm_head.weight", "transpose", vocab_fn=lambda rows: rows[[2, 0]])
    >>> key.to_ours(np.arange(6).reshape(3, 2)).tolist()   # stored [vocab, hidden]
    [[4, 0], [5, 1]]
    """

    vocab_fn: object = None

    def to_ours(self, value):
        value = super().to_ours(value)
        return self.vocab_fn(value.T).T

    def from_ours(self, value):  # export: the plain layout change (no vocab restore)
        return Key(self.name, self.transform).from_ours(value)


# Checkpoint entries that are never weights of ours (optimizer slots, buffers).
_IGNORED = re.compile(
    r"(adam_[mv]|global_step|_CHECKPOINTABLE_OBJECT_GRAPH|(^|\.)position_ids$|"
    r"embed_positions\.weight$|relative_positions_encoding|bad_steps|good_steps|"
    r"loss_scale|\.masked_bias$|\.attn\.bias$)"
)


def as_key(key):
    return key if isinstance(key, Key) or key is None else Key(key)


@dataclass
class LoadReport:
    """What a load did: `loaded` paths, and every problem found, by name."""

    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # (our path, checkpoint key)
    mismatched: list = field(default_factory=list)  # (our path, key, expected, found)
    unexpected: list = field(default_factory=list)  # checkpoint keys that look like ours
    unused: list = field(default_factory=list)  # other checkpoint keys not loaded
    wrong_dtype: list = field(default_factory=list)  # (our path, key, our dtype, stored dtype)
    not_finite: list = field(default_factory=list)  # (our path, key, count, size, converted-to)

    @property
    def ok(self):
        return not (
            self.missing
            or self.mismatched
            or self.unexpected
            or self.wrong_dtype
            or self.not_finite
        )

    def describe(self):
        lines = []
        for path, key in self.missing:
            lines.append(f"  missing: {key!r} (for {path})")
        for path, key, want, got in self.mismatched:
            lines.append(f"  shape mismatch: {key!r} -> {path}: expected {want}, found {got}")
        for path, key, ours, stored in self.wrong_dtype:
            lines.append(
                f"  wrong dtype: {key!r} -> {path}: stored as {stored}, but {path} is "
                f"a {ours} weight (only floating-point data is loaded into it)"
            )
        for path, key, count, size, converted in self.not_finite:
            where = f" after conversion to {converted}" if converted else ""
            lines.append(
                f"  not finite: {key!r} -> {path}: {count} of {size} values are NaN or Inf{where}"
            )
        for key in self.unexpected:
            lines.append(
                f"  unexpected: {key!r} has no place in this model "
                "(more layers in the checkpoint than in the config?)"
            )
        return "\n".join(lines)


def _normalise(name):
    return re.sub(r"\d+", "#", name)


def resolve(source, key, prefixes=()):
    """The name under which `key` is stored in `source`, or None.

    Tolerates HF base-model prefixes present or absent (`bert.` vs none) and the
    old `LayerNorm.gamma/beta` spelling of `weight/bias`.
    """
    candidates = [key]
    for p in prefixes:
        if key.startswith(p + "."):
            candidates.append(key[len(p) + 1 :])
        else:
            candidates.append(f"{p}.{key}")
    for c in list(candidates):
        if c.endswith("LayerNorm.weight"):
            candidates.append(c[: -len("weight")] + "gamma")
        elif c.endswith("LayerNorm.bias"):
            candidates.append(c[: -len("bias")] + "beta")
    for c in candidates:
        if c in source:
            return c
    return None


def load_weights(
    variables,
    table,
    checkpoint,
    naming=None,
    prefixes=(),
    vocab_fn=None,
    vocab_paths=(),
    ignore_invalid_weights=False,
):
    """Load `checkpoint` into `variables` ({path: keras.Variable}) by `table`.

    Returns a LoadReport; raises CheckpointError listing every problem unless
    `ignore_invalid_weights`, in which case the bad rows are skipped and listed
    in a warning. Nothing is assigned unless the whole load is valid.

    Streamed, one tensor at a time: names, shapes and dtypes are checked from the
    file's header or index first (no tensor data read); then each tensor is read,
    converted to its weight's dtype, checked for NaN/Inf and handed over before the
    next is read, so the memory on top of the model is about one tensor. Weights
    still waiting for their first value (built under `deferred.deferred_build`)
    are created straight from the checkpoint's values, with no random copy first.
    A model whose weights already have values is read twice: a checking pass
    that keeps nothing, then the assigning pass, so a bad tensor found at the end
    of the file (NaN, CRC mismatch, a short read) leaves it unchanged.
    """
    source = open_checkpoint(checkpoint)
    naming = naming or source.naming
    column = naming_column(naming)
    if not any(as_key(row[column]) is not None for row in table):
        raise CheckpointError(
            f"{source.path}: this model has no {naming!r} weight names "
            "(it cannot be loaded from a checkpoint in that format)"
        )
    report = LoadReport()
    plan = []  # (path, variable, key, name, our dtype) of rows whose header checks pass
    vocab_shapes = []  # (path, ours, found in our layout) for the vocabulary hint
    used = set()
    known = set()
    for row in table:
        path, key = row[0], as_key(row[column])
        if key is None:
            continue
        known.add(_normalise(key.name))
        for p in prefixes:
            known.add(
                _normalise(
                    key.name[len(p) + 1 :] if key.name.startswith(p + ".") else f"{p}.{key.name}"
                )
            )
        name = resolve(source, key.name, prefixes)
        if path not in variables:
            if name:
                used.add(name)  # an optional head this model did not build
            continue
        if name is None:
            report.missing.append((path, key.name))
            continue
        used.add(name)
        variable = variables[path]
        want = tuple(variable.shape)
        stored = tuple(source.shape(name))  # quoted in errors: the file's layout, not ours
        target = _numpy_dtype(variable.dtype)
        stored_dtype = source.dtype(name)
        if not _kind_fits(stored_dtype, target):
            report.wrong_dtype.append((path, name, str(variable.dtype), _dtype_name(stored_dtype)))
            continue
        base_key = Key(key.name, key.transform, key.arg, key.parts)
        vocab_row = path in vocab_paths and vocab_fn is not None
        if not vocab_row and not isinstance(key, VocabColumns):
            if stored != base_key.stored_shape(want):
                report.mismatched.append((path, name, base_key.stored_shape(want), stored))
                continue
        else:
            ours = _shape_in_ours(key, stored, vocab_fn if vocab_row else None, source, name)
            if ours != want:
                report.mismatched.append((path, name, base_key.stored_shape(want), stored))
                vocab_shapes.append((path, want, ours))
                continue
        plan.append((path, variable, key, name, target))
    for name in source.keys():
        if name in used or _IGNORED.search(name):
            continue
        if _normalise(name) in known:
            report.unexpected.append(name)
        else:
            report.unused.append(name)

    shared = {}  # name -> [reads left, tensor]: a fused tensor (q|k|v) is read once per pass
    uses = Counter(row[3] for row in plan)

    def read(name):
        entry = shared.get(name)
        if entry is None:
            if uses[name] == 1:
                return source.get(name)
            entry = shared[name] = [uses[name], source.get(name)]
        entry[0] -= 1
        if not entry[0]:
            del shared[name]
        return entry[1]

    def value_of(path, key, name, target):
        """The checked value for `path`, or None (its problem is in the report)."""
        raw = read(name)
        value = key.to_ours(raw)
        if path in vocab_paths and vocab_fn is not None:
            value = vocab_fn(value)
        with np.errstate(over="ignore"):  # an overflow is reported just below
            value = np.asarray(value).astype(target, copy=False)
        if target.kind == "f" or is_bfloat16(target):
            bad = _count_not_finite(value)
            if bad:
                converted = "" if _count_not_finite(np.asarray(raw)) else str(target_names[path])
                report.not_finite.append((path, name, bad, value.size, converted))
                return None
        return value

    def own(name, value):
        """`value` in memory of its own when the tensor `name` feeds several variables
        (ALBERT_Unshared's blocks, a tied embedding loaded into an untied head): on torch
        `backend_value` shares memory, and variables sharing it would change together."""
        return np.array(value) if uses[name] > 1 else value

    target_names = {path: variable.dtype for path, variable, *_ in plan}
    heap = _Heap()
    deferred = all(is_deferred(variable) for _, variable, *_ in plan)
    if report.ok and deferred:
        # One pass: each value becomes its weight's first value as soon as it is
        # checked; nothing outside this call can see these weights yet.
        kept = []
        for path, variable, key, name, target in plan:
            value = value_of(path, key, name, target)
            if value is not None and (report.ok or ignore_invalid_weights):
                initialize_from(variable, own(name, value))
                kept.append(path)
            heap.freed(value)
            del value
        report.loaded = kept if report.ok or ignore_invalid_weights else []
    else:
        # A checking pass that keeps nothing; the assigning pass comes after.
        for path, variable, key, name, target in plan:
            value_of(path, key, name, target)
    if not report.ok:
        message = f"{source.path}: checkpoint does not fit the model:\n{report.describe()}"
        vocab = [
            (want[0], got[0])
            for path, want, got in vocab_shapes
            if path in vocab_paths and want[1:] == got[1:]
        ]
        if vocab:
            message += (
                f"\n  (vocabulary size: the model has {vocab[0][0]} tokens, the "
                f"checkpoint {vocab[0][1]}; check vocab_size, or pass keep_tokens)"
            )
        if not ignore_invalid_weights:
            raise CheckpointError(
                message + "\nNothing was loaded. Pass ignore_invalid_weights=True to "
                "load the rest and skip these."
            )
        warnings.warn(message + "\nThese were skipped (ignore_invalid_weights=True).", stacklevel=3)
    if report.unused:
        shown = ", ".join(report.unused[:8]) + (" ..." if len(report.unused) > 8 else "")
        warnings.warn(
            f"{source.path}: {len(report.unused)} checkpoint tensors were not "
            f"used by this model: {shown}",
            stacklevel=3,
        )
    if deferred and report.loaded or not plan:
        return report
    bad = {path for path, *_ in report.not_finite}
    uses = Counter(row[3] for row in plan if row[0] not in bad)
    shared.clear()
    for path, variable, key, name, target in plan:  # every value was checked by now
        if path in bad:
            continue
        value = value_of(path, key, name, target)
        if value is None:  # the file changed since the checking pass
            raise CheckpointError(
                f"{source.path}: tensor {name!r} changed on disk during the load "
                f"(now {report.not_finite[-1][2]} NaN or Inf values); the weights before "
                f"{path} in the table are already replaced"
            )
        value = own(name, value)
        if is_deferred(variable):
            initialize_from(variable, value)
        else:
            variable.assign(backend_value(value))
        heap.freed(value)
        del value
        report.loaded.append(path)
    return report


class _Heap:
    """Hands memory that read buffers and conversions freed back to the system (glibc's
    `malloc_trim`, every 16 MB handed over). Without it, buffers freed between the
    backend's allocations stay in the process as holes in the heap: +20% of the model on
    JAX and TensorFlow, measured."""

    _trim = None

    def __init__(self, every=16 << 20):
        self.every, self.pending = every, 0
        if _Heap._trim is None:
            _Heap._trim = False
            if sys.platform.startswith("linux"):
                try:
                    _Heap._trim = ctypes.CDLL("libc.so.6").malloc_trim
                except (OSError, AttributeError):
                    pass

    def freed(self, value):
        self.pending += getattr(value, "nbytes", 0)
        if self._trim and self.pending >= self.every:
            self._trim(0)
            self.pending = 0


def _shape_in_ours(key, stored, vocab_fn, source, name):
    """Our shape for a tensor stored as `stored`, after `key` and `vocab_fn`,
    computed on a one-column stand-in (no tensor data is read)."""
    stored = tuple(stored)
    if key.transform == "transpose":
        ours = stored[::-1]
    elif key.transform == "skip_rows":
        ours = (max(stored[0] - key.arg, 0),) + stored[1:] if stored else stored
    elif key.transform == "split":
        ours = stored[:-1] + (stored[-1] // key.parts,) if stored else stored
    else:
        ours = stored
    if not ours:
        return ours
    try:
        if isinstance(key, VocabColumns):
            ours = ours[:-1] + (key.vocab_fn(np.zeros((ours[-1], 1), np.float32)).shape[0],)
        if vocab_fn is not None:
            ours = (vocab_fn(np.zeros((ours[0], 1), np.float32)).shape[0],) + ours[1:]
    except IndexError as e:
        raise CheckpointError(
            f"{source.path}: keep_tokens/compound_tokens do not fit {name!r}, whose "
            f"vocabulary has {ours[0]} rows ({e}). Nothing was loaded."
        ) from None
    return ours


def _numpy_dtype(dtype):
    name = str(getattr(dtype, "name", dtype))
    return numpy_bfloat16() if name == "bfloat16" else np.dtype(name)


def _dtype_name(dtype):
    names = {"O": "object", "S": "bytes", "U": "str"}
    return names.get(dtype.kind, str(dtype))


def _kind_fits(stored, target):
    """A float weight takes float data only; an integer one integers only."""
    stored_float = stored.kind == "f" or is_bfloat16(stored)
    if target.kind == "f" or is_bfloat16(target):
        return stored_float
    if target.kind in "iu":
        return stored.kind in "iu"
    if target.kind == "b":
        return stored.kind == "b"
    return stored == target


_CHUNK = 1 << 20  # elements checked at a time: the temporaries stay small


def _count_not_finite(value):
    """NaN and Inf values in `value`, counted chunk by chunk (bfloat16 on its bits:
    all exponent bits set)."""
    if not (value.dtype.kind == "f" or is_bfloat16(value.dtype)):
        return 0
    flat = np.ascontiguousarray(value).reshape(-1)
    if is_bfloat16(value.dtype):
        bits = flat.view(np.uint16)
        return sum(
            int(np.count_nonzero((bits[i : i + _CHUNK] & 0x7F80) == 0x7F80))
            for i in range(0, bits.size, _CHUNK)
        )
    return sum(
        int(flat[i : i + _CHUNK].size - np.count_nonzero(np.isfinite(flat[i : i + _CHUNK])))
        for i in range(0, flat.size, _CHUNK)
    )


def export_weights(variables, table, naming):
    """Our weights as {checkpoint key: array} in `naming` ('google' or 'hf')."""
    column = naming_column(naming)
    out, pieces = {}, {}
    for row in table:
        path, key = row[0], as_key(row[column])
        if key is None or path not in variables:
            continue
        value = key.from_ours(np.asarray(variables[path].numpy()))
        if key.transform == "split":
            pieces.setdefault(key.name, {})[key.arg] = (key.parts, value)
        else:
            out[key.name] = value
    for name, slices in pieces.items():  # fused tensors: concatenate the parts back
        parts = next(iter(slices.values()))[0]
        if sorted(slices) != list(range(parts)):
            raise ValueError(
                f"cannot export {name!r}: only parts {sorted(slices)} "
                f"of {parts} exist in this model"
            )
        out[name] = np.concatenate([slices[i][1] for i in range(parts)], axis=-1)
    return out
