"""Decode loops on the device: greedy search, sampling and beam search as one while loop.

Written once in `keras.ops` (`ops.while_loop`), so the Runner compiles the
whole loop with the model step inside it: `jax.jit` + `lax.while_loop` on JAX,
XLA `tf.while_loop` on TensorFlow; on torch it is a Python loop of eager steps
(the torch fast path of `models.eager_step`). The host only sees the result:
no per-step copy of the logits, no per-step dispatch. The loop stops as soon as
every row (greedy) or every batch entry (beam search) is done.

Semantics are those of the NumPy host loops in `generate.py` (transformers'
`generate`): repetition penalty and min_new_tokens on the scores, eos ids end a
row, finished rows are filled with pad_token_id; beam search is transformers'
v5 vectorised beam search. Sampling applies transformers' temperature, top-k
and top-p and draws by Gumbel-max from `uniform(seed, step, shape)`, a
counter-based hash (integer arithmetic, so the same draws on every backend, in
compiled loops and in the host loop: streaming gives generate's samples).
no_repeat_ngram_size, beam sampling and streaming run on the host loop.
"""

from collections import namedtuple

from keras import ops

from kerasformers import ops as K

#: the static settings a compiled loop is specialised for
LoopConfig = namedtuple("LoopConfig", [
    "max_new_tokens", "min_new_tokens", "repetition_penalty", "eos", "pad", "num_beams",
    "length_penalty", "early_stopping", "batch", "do_sample", "temperature", "top_k",
    "top_p"], defaults=(False, 1.0, None, None))

_NEG = -1e9


def _is_eos(tokens, eos):
    hit = ops.zeros(ops.shape(tokens), dtype="bool")
    for e in eos:
        hit = ops.logical_or(hit, ops.equal(tokens, e))
    return hit


def _process(scores, seen, step, cfg):
    """transformers' order: repetition penalty, then min-length eos suppression."""
    if cfg.repetition_penalty != 1.0:
        p = cfg.repetition_penalty
        penalised = ops.where(scores < 0, scores * p, scores / p)
        scores = ops.where(seen, penalised, scores)
    if cfg.eos and cfg.min_new_tokens > 0:
        vocab = ops.shape(scores)[-1]
        columns = _is_eos(ops.arange(vocab, dtype="int32"), cfg.eos)
        block = ops.logical_and(columns, step < cfg.min_new_tokens)
        scores = ops.where(block[None, :], float("-inf"), scores)
    return scores


def _mark_seen(seen, tokens, vocab):
    return ops.logical_or(seen, ops.cast(ops.one_hot(tokens, vocab), "bool"))


def greedy(step_fn, logits, cache, seen, cfg):
    """Greedy search. logits [rows, vocab] (the prompt's next-token logits), seen
    [rows, vocab] bool (tokens for the repetition penalty; any [rows, 1]
    placeholder without one), step_fn(tokens [rows], cache) -> (logits, cache).
    Returns (tokens [rows, max_new_tokens] with pad after each row's end, steps
    taken)."""
    return _token_loop(step_fn, logits, cache, seen, cfg,
                       lambda scores, i: ops.argmax(scores, axis=-1))


def _token_loop(step_fn, logits, cache, seen, cfg, pick):
    """One token per row and step: `pick(processed scores, step)` -> token ids."""
    rows, vocab = ops.shape(logits)[0], ops.shape(logits)[-1]
    tokens = ops.full((rows, cfg.max_new_tokens), cfg.pad, dtype="int32")
    finished = ops.zeros((rows,), dtype="bool")

    def choose(i, tokens, finished, logits, seen):
        scores = _process(ops.cast(logits, "float32"), seen, i, cfg)
        nxt = ops.cast(pick(scores, i), "int32")
        nxt = ops.where(finished, cfg.pad, nxt)
        tokens = K.slice_update(tokens, (0, i), nxt[:, None])
        if cfg.repetition_penalty != 1.0:
            seen = _mark_seen(seen, nxt, vocab)
        if cfg.eos:
            finished = ops.logical_or(finished, _is_eos(nxt, cfg.eos))
        return tokens, finished, seen, nxt

    def cond(i, tokens, finished, logits, cache, seen):
        return ops.logical_and(i < cfg.max_new_tokens - 1,
                               ops.logical_not(ops.all(finished)))

    def body(i, tokens, finished, logits, cache, seen):
        tokens, finished, seen, nxt = choose(i, tokens, finished, logits, seen)
        logits, cache = step_fn(nxt, cache)
        return i + 1, tokens, finished, logits, cache, seen

    start = ops.convert_to_tensor(0, dtype="int32")
    i, tokens, finished, logits, cache, seen = ops.while_loop(
        cond, body, (start, tokens, finished, logits, cache, seen))
    # the last token needs no model call (if every row has ended it writes padding)
    tokens, _, _, _ = choose(i, tokens, finished, logits, seen)
    return tokens, i + 1


def beam_search(step_fn, reorder_fn, logits, cache, seen, cfg):
    """transformers' (v5) beam search. logits [batch * beams, vocab], cache and
    seen already repeated per beam; reorder_fn(cache, rows) selects cache rows.
    Returns (sequences [batch, beams, max_new_tokens],
    scores [batch, beams]), best first."""
    batch, beams, length = cfg.batch, cfg.num_beams, cfg.max_new_tokens
    vocab = ops.shape(logits)[-1]
    keep = max(2, 1 + len(cfg.eos)) * beams
    top_mask = ops.arange(keep) < beams
    running = ops.full((batch, beams, length), cfg.pad, dtype="int32")
    first = ops.cast(ops.arange(beams) == 0, "float32")
    running_scores = ops.tile(((1.0 - first) * _NEG)[None, :], (batch, 1))
    sequences = running
    beam_scores = ops.full((batch, beams), _NEG, dtype="float32")
    finished = ops.zeros((batch, beams), dtype="bool")
    improvable = ops.ones((batch, 1), dtype="bool")
    offsets = ops.arange(batch, dtype="int32")[:, None] * beams

    def cond(cur, running, running_scores, sequences, beam_scores, finished, improvable,
             done, logits, cache, seen):
        return ops.logical_not(done)

    def body(cur, running, running_scores, sequences, beam_scores, finished, improvable,
             done, logits, cache, seen):
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        log_probs = _process(log_probs, seen, cur, cfg)
        log_probs = ops.reshape(log_probs, (batch, beams, vocab)) + running_scores[:, :, None]
        log_probs = ops.reshape(log_probs, (batch, beams * vocab))
        top_scores, top = ops.top_k(log_probs, keep)
        top = ops.cast(top, "int32")
        source_beam, token = top // vocab, top % vocab
        top_sequences = ops.take_along_axis(running, source_beam[:, :, None], axis=1)
        top_sequences = K.slice_update(top_sequences, (0, 0, cur), token[:, :, None])
        hits = ops.logical_or(_is_eos(token, cfg.eos), cur + 1 >= length)
        # the running beams for the next step: the best unfinished continuations
        run_scores = top_scores + ops.cast(hits, "float32") * _NEG
        running_scores, nxt = ops.top_k(run_scores, beams)
        running = ops.take_along_axis(top_sequences, ops.cast(nxt, "int32")[:, :, None], axis=1)
        chosen_beam = ops.take_along_axis(source_beam, ops.cast(nxt, "int32"), axis=-1)
        # finished hypotheses
        just_finished = ops.logical_and(hits, top_mask[None, :])
        penalised = top_scores / ops.power(ops.cast(cur + 1, "float32"), cfg.length_penalty)
        if cfg.early_stopping is True:
            full = ops.all(finished, axis=-1, keepdims=True)
            penalised = penalised + ops.cast(full, "float32") * _NEG
        penalised = penalised + ops.cast(ops.logical_not(improvable), "float32") * _NEG
        penalised = penalised + ops.cast(ops.logical_not(just_finished), "float32") * _NEG
        merged_seq = ops.concatenate([sequences, top_sequences], axis=1)
        merged_scores = ops.concatenate([beam_scores, penalised], axis=1)
        merged_done = ops.concatenate([finished, just_finished], axis=1)
        beam_scores, best = ops.top_k(merged_scores, beams)
        best = ops.cast(best, "int32")
        sequences = ops.take_along_axis(merged_seq, best[:, :, None], axis=1)
        finished = ops.take_along_axis(merged_done, best, axis=-1)
        # stop?
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_len = ops.convert_to_tensor(float(length))
        else:
            best_len = ops.cast(cur + 1, "float32")
        best_running = running_scores[:, :1] / ops.power(best_len, cfg.length_penalty)
        worst_done = ops.where(finished, ops.min(beam_scores, axis=-1, keepdims=True), _NEG)
        improvable = ops.logical_and(
            improvable, ops.any(best_running > worst_done, axis=-1, keepdims=True))
        keep_going = ops.logical_and(ops.any(improvable), ops.logical_not(ops.all(hits)))
        if cfg.early_stopping is True:
            keep_going = ops.logical_and(keep_going, ops.logical_not(ops.all(finished)))
        done = ops.logical_not(keep_going)
        # the next step (also after the last one: a loop body has one shape)
        rows = ops.reshape(chosen_beam + offsets, (-1,))
        cache = reorder_fn(cache, rows)
        tokens = ops.reshape(running[:, :, 0:length], (batch * beams, length))
        tokens = ops.take(tokens, cur, axis=1)
        if cfg.repetition_penalty != 1.0:
            seen = _mark_seen(ops.take(seen, rows, axis=0), tokens, vocab)
        logits, cache = step_fn(tokens, cache)
        return (cur + 1, running, running_scores, sequences, beam_scores, finished, improvable,
                done, logits, cache, seen)

    start = ops.convert_to_tensor(0, dtype="int32")
    state = ops.while_loop(cond, body, (start, running, running_scores, sequences, beam_scores,
                                        finished, improvable,
                                        ops.convert_to_tensor(False), logits, cache, seen))
    return state[3], state[4]


# ------------------------------------------------------------------ sampling
def _shr(x, k):
    """Logical right shift of int32 x by k bits (ops.right_shift is arithmetic)."""
    return ops.bitwise_and(ops.right_shift(x, k), (1 << (32 - k)) - 1)


def _hash(x):
    """lowbias32 (C. Wellons) on int32 with wrapping multiplies: a counter-based
    integer hash, identical on every backend (integer arithmetic only)."""
    x = ops.bitwise_xor(x, _shr(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, dtype="int32"))
    x = ops.bitwise_xor(x, _shr(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B - (1 << 32), dtype="int32"))
    return ops.bitwise_xor(x, _shr(x, 16))


def uniform(seed, step, shape):
    """Uniform floats in (0, 1), [rows, columns] = shape, a pure function of (seed,
    step, row, column): the same draws on every backend and inside compiled loops
    (Keras' random ops take no tensor seed there)."""
    rows, columns = shape
    key = _hash(ops.bitwise_xor(_hash(ops.cast(step, "int32") + 0x632BE5AB),
                                ops.cast(seed, "int32")))
    counter = ops.reshape(ops.arange(rows * columns, dtype="int32"), (rows, columns))
    bits = _hash(_hash(ops.bitwise_xor(counter, key)) + key)
    return (ops.cast(_shr(bits, 8), "float32") + 0.5) / 16777216.0


def warp(scores, cfg):
    """transformers' sampling warpers in its order: temperature, top-k, top-p."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    vocab = ops.shape(scores)[-1]
    top = None
    if cfg.top_k:
        k = min(int(cfg.top_k), vocab)
        top = ops.top_k(scores, k)[0]  # descending
        scores = ops.where(scores < top[:, k - 1:k], float("-inf"), scores)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        # keep the tokens at or above the cut of transformers' ascending cumulative sum;
        # after top-k only its k values are candidates (no sort of the whole vocabulary;
        # the same cut unless the k-th value is tied)
        ascending = ops.sort(scores, axis=-1) if top is None else ops.flip(top, axis=-1)
        cumulative = ops.cumsum(ops.softmax(ascending, axis=-1), axis=-1)
        removed = ops.sum(ops.cast(cumulative <= 1.0 - cfg.top_p, "int32"), axis=-1)
        removed = ops.minimum(removed, ops.shape(ascending)[-1] - 1)[:, None]
        cut = ops.take_along_axis(ascending, removed, axis=-1)
        scores = ops.where(scores < cut, float("-inf"), scores)
    return scores


def sample(step_fn, logits, cache, seen, cfg, seed):
    """Sampling: Gumbel-max over the warped scores (a categorical draw from their
    softmax). Same arguments and returns as `greedy`, plus an int32 `seed`."""
    def pick(scores, i):
        draws = uniform(seed, i, tuple(ops.shape(scores)))
        return ops.argmax(warp(scores, cfg) - ops.log(-ops.log(draws)), axis=-1)
    return _token_loop(step_fn, logits, cache, seen, cfg, pick)
