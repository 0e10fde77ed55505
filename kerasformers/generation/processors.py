"""Logits processors with transformers' semantics, in NumPy (one call per step).

Each function takes `scores` [rows, vocab] (float32) and returns new scores;
`histories` is one 1-D int array per row: the tokens the row has seen so far
(prompt and generated; padding excluded).

>>> import numpy as np
>>> scores = np.log(np.array([[0.5, 0.3, 0.1, 0.1]], "float32"))
>>> np.isfinite(top_k_filter(scores, 2)).tolist()
[[True, True, False, False]]
"""

import numpy as np

NEG_INF = -np.inf


def repetition_penalty(scores, histories, penalty):
    """Seen tokens: negative scores times `penalty`, positive ones divided by it."""
    if penalty == 1.0:
        return scores
    scores = scores.copy()
    for row, seen in enumerate(histories):
        seen = np.unique(seen)
        s = scores[row, seen]
        scores[row, seen] = np.where(s < 0, s * penalty, s / penalty)
    return scores


def banned_ngram_tokens(history, n):
    """Tokens that would repeat an n-gram of `history` (after its last n-1 tokens)."""
    history = list(history)
    if n <= 0 or len(history) + 1 < n:
        return []
    prefix = tuple(history[len(history) - n + 1:]) if n > 1 else ()
    banned = []
    for i in range(len(history) - n + 1):
        if tuple(history[i:i + n - 1]) == prefix:
            banned.append(history[i + n - 1])
    return banned


def no_repeat_ngram(scores, histories, n):
    if not n:
        return scores
    scores = scores.copy()
    for row, history in enumerate(histories):
        banned = banned_ngram_tokens(history, n)
        if banned:
            scores[row, banned] = NEG_INF
    return scores


def suppress_tokens(scores, token_ids, rows=None):
    """-inf for `token_ids` (e.g. the eos ids before min_new_tokens), in `rows` or all."""
    scores = scores.copy()
    if rows is None:
        scores[:, list(token_ids)] = NEG_INF
    else:
        for row in np.flatnonzero(rows):
            scores[row, list(token_ids)] = NEG_INF
    return scores


def temperature_scale(scores, temperature):
    if temperature is None or temperature == 1.0:
        return scores
    return scores / np.float32(temperature)


def top_k_filter(scores, top_k, min_tokens_to_keep=1):
    """Keep the top_k highest scores per row (ties with the k-th kept)."""
    if not top_k:
        return scores
    k = min(max(int(top_k), min_tokens_to_keep), scores.shape[-1])
    kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1:k]
    return np.where(scores < kth, NEG_INF, scores).astype(scores.dtype)


def top_p_filter(scores, top_p, min_tokens_to_keep=1):
    """Nucleus filtering: keep the smallest set of top tokens whose probability
    mass exceeds `top_p` (ascending sort and cumulative sum, as transformers)."""
    if top_p is None or top_p >= 1.0:
        return scores
    order = np.argsort(scores, axis=-1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    probs = _softmax(sorted_scores)
    remove_sorted = np.cumsum(probs, axis=-1) <= (1 - top_p)
    remove_sorted[:, -min_tokens_to_keep:] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, NEG_INF, scores).astype(scores.dtype)


def log_softmax(x):
    x = x.astype("float32")
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _softmax(x):
    return np.exp(log_softmax(x))


softmax = _softmax
