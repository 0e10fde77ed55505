"""Logits processors with transformers' semantics, each written once in `keras.ops`.

The same functions run inside the compiled decode loops and, one step at a time,
in the host loop (given NumPy arrays they return backend tensors). Each takes
`scores` [rows, vocab] float32 and returns new scores, in transformers' order:
`repetition_penalty`, `no_repeat_ngram`, `min_length`; then for sampling `warp`
(`temperature_scale`, `top_k_filter`, `top_p_filter`).

no_repeat_ngram needs each row's token history, a ragged list: it is the one
processor that runs on the host only (NumPy in, NumPy out).

>>> import numpy as np
>>> from keras import ops
>>> scores = np.log(np.array([[0.5, 0.3, 0.1, 0.1]], "float32"))
>>> np.isfinite(ops.convert_to_numpy(top_k_filter(scores, 2))).tolist()
[[True, True, False, False]]
"""

import numpy as np
from keras import ops


def is_any(tokens, ids):
    """tokens == any of `ids` (a Python sequence), elementwise."""
    hit = ops.zeros(ops.shape(tokens), dtype="bool")
    for i in ids:
        hit = ops.logical_or(hit, ops.equal(tokens, i))
    return hit


def seen_mask(histories, vocab):
    """[rows, vocab] bool: the tokens each row has seen (one int sequence per row)."""
    seen = np.zeros((len(histories), vocab), bool)
    for row, history in enumerate(histories):
        seen[row, np.asarray(history, "int64")] = True
    return seen


def repetition_penalty(scores, seen, penalty):
    """Seen tokens (`seen` [rows, vocab] bool): negative scores times `penalty`,
    positive ones divided by it."""
    if penalty == 1.0:
        return scores
    scores = ops.convert_to_tensor(scores)
    penalised = ops.where(scores < 0, scores * penalty, scores / penalty)
    return ops.where(seen, penalised, scores)


def suppress_tokens(scores, token_ids, when=True):
    """-inf for the columns `token_ids` (all rows), if `when` (a bool or bool tensor)."""
    columns = is_any(ops.arange(ops.shape(scores)[-1], dtype="int32"), token_ids)
    return ops.where(ops.logical_and(columns, when)[None, :], float("-inf"), scores)


def min_length(scores, eos_ids, step, min_new_tokens):
    """No eos before `min_new_tokens` new tokens (`step`: the new tokens so far)."""
    if not eos_ids or min_new_tokens <= 0:
        return scores
    return suppress_tokens(scores, eos_ids, step < min_new_tokens)


def banned_ngram_tokens(history, n):
    """Tokens that would repeat an n-gram of `history` (after its last n-1 tokens)."""
    history = list(history)
    if n <= 0 or len(history) + 1 < n:
        return []
    prefix = tuple(history[len(history) - n + 1 :]) if n > 1 else ()
    banned = []
    for i in range(len(history) - n + 1):
        if tuple(history[i : i + n - 1]) == prefix:
            banned.append(history[i + n - 1])
    return banned


def no_repeat_ngram(scores, histories, n):
    """-inf for the tokens that would repeat an n-gram of the row's history (host only:
    NumPy scores, one int sequence per row)."""
    if not n:
        return scores
    scores = np.array(scores, copy=True)
    for row, history in enumerate(histories):
        banned = banned_ngram_tokens(history, n)
        if banned:
            scores[row, banned] = -np.inf
    return scores


def temperature_scale(scores, temperature):
    if temperature is None or temperature == 1.0:
        return scores
    return scores / temperature


def _top_k(scores, top_k):
    """(filtered scores, the k best values descending): ties with the k-th are kept."""
    scores = ops.convert_to_tensor(scores)
    k = min(int(top_k), ops.shape(scores)[-1])
    top = ops.top_k(scores, k)[0]
    return ops.where(scores < top[:, k - 1 : k], float("-inf"), scores), top


def top_k_filter(scores, top_k):
    """Keep the top_k highest scores per row (ties with the k-th kept)."""
    return _top_k(scores, top_k)[0] if top_k else scores


def top_p_filter(scores, top_p, ascending=None):
    """Nucleus filtering: keep the smallest set of top tokens whose probability mass
    exceeds `top_p` (transformers' ascending cumulative sum; at least one token).
    `ascending`: the candidates sorted ascending, if known (after top-k only its k
    values: no sort of the whole vocabulary, the same cut unless the k-th is tied)."""
    if top_p is None or top_p >= 1.0:
        return scores
    scores = ops.convert_to_tensor(scores)
    if ascending is None:
        ascending = ops.sort(scores, axis=-1)
    cumulative = ops.cumsum(ops.softmax(ascending, axis=-1), axis=-1)
    removed = ops.sum(ops.cast(cumulative <= 1.0 - top_p, "int32"), axis=-1)
    removed = ops.minimum(removed, ops.shape(ascending)[-1] - 1)[:, None]
    cut = ops.take_along_axis(ascending, removed, axis=-1)
    return ops.where(scores < cut, float("-inf"), scores)


def warp(scores, temperature=1.0, top_k=None, top_p=None):
    """transformers' sampling warpers in its order: temperature, top-k, top-p."""
    scores = temperature_scale(scores, temperature)
    if not top_k:
        return top_p_filter(scores, top_p)
    scores, top = _top_k(scores, top_k)
    return top_p_filter(scores, top_p, ascending=ops.flip(top, axis=-1))
