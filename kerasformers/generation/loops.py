"""The decode loops, each written once in `keras.ops`: greedy search / sampling
(`token_loop`) and beam search (`beam_loop`).

A loop is a body (`choose` / `select`: processors and the pick of the next
tokens; then one model step) and a driver that runs it in one of two places:

- on the device (`greedy`, `sample`, `beam_search`): one `ops.while_loop` that the
  Runner compiles with the model step inside it (`jax.jit` + `lax.while_loop` on
  JAX, XLA `tf.while_loop` on TensorFlow; on torch a Python loop of eager steps,
  the torch fast path). The host only sees the result: no per-step copy of the
  logits, no per-step dispatch;
- on the host (`token_steps`, `beam_steps`): the same body, one Python iteration
  (and one compiled model step) per token. It streams, and it takes the two
  host-only hooks: `ban` (no_repeat_ngram, over each row's ragged history) and
  `top` (beam sampling's draw without replacement).

Both stop as soon as every row (greedy) or every batch entry (beam search) is
done. Semantics are transformers' `generate`: repetition penalty and
min_new_tokens on the scores, eos ids end a row, finished rows are filled with
pad_token_id; beam search is transformers' v5 vectorised beam search; sampling
applies temperature, top-k and top-p and draws by Gumbel-max from
`draws.uniform(seed, step, shape)` (the same draws on every backend and in both
places).
"""

from collections import namedtuple

from keras import ops

from kerasformers import backend as K
from kerasformers.generation import processors as P
from kerasformers.generation.draws import gumbel_max, uniform  # noqa: F401 (uniform: API)

#: the static settings a loop is specialised for (a compiled loop per value)
LoopConfig = namedtuple(
    "LoopConfig",
    [
        "max_new_tokens",
        "min_new_tokens",
        "repetition_penalty",
        "eos",
        "pad",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "batch",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
    ],
    defaults=(False, 1.0, None, None),
)

_NEG = -1e9


def _process(scores, seen, step, cfg):
    """transformers' order: repetition penalty, then min-length eos suppression."""
    scores = P.repetition_penalty(scores, seen, cfg.repetition_penalty)
    return P.min_length(scores, cfg.eos, step, cfg.min_new_tokens)


def _mark_seen(seen, tokens, vocab):
    return ops.logical_or(seen, ops.cast(ops.one_hot(tokens, vocab), "bool"))


def _true(x):
    return bool(ops.convert_to_numpy(x))


def picker(cfg, seed=0):
    """`pick(processed scores, step)` -> token ids: argmax, or (cfg.do_sample) a
    Gumbel-max draw from the warped scores."""
    if not cfg.do_sample:
        return lambda scores, i: ops.argmax(scores, axis=-1)
    return lambda scores, i: gumbel_max(
        P.warp(scores, cfg.temperature, cfg.top_k, cfg.top_p), seed, i
    )


# ------------------------------------------------------------- greedy / sampling
def token_loop(cfg, pick, ban=None, limit=None):
    """The body of greedy search / sampling, one token per row and step:
    (start, choose, more). start(logits) -> (tokens [rows, max_new_tokens] of pad,
    finished [rows]); choose(i, tokens, finished, logits, seen) -> (tokens,
    finished, seen, next tokens [rows]); more(i, finished) -> another model step?
    `limit` (a tensor <= cfg.max_new_tokens; default cfg.max_new_tokens): the
    tokens to make, so one compiled loop serves every length up to its width."""
    limit = cfg.max_new_tokens if limit is None else limit

    def start(logits):
        rows = ops.shape(logits)[0]
        return (
            ops.full((rows, cfg.max_new_tokens), cfg.pad, dtype="int32"),
            ops.zeros((rows,), dtype="bool"),
        )

    def choose(i, tokens, finished, logits, seen):
        scores = _process(ops.cast(logits, "float32"), seen, i, cfg)
        if ban is not None:
            scores = ops.convert_to_tensor(ban(scores, i, tokens))
        nxt = ops.cast(pick(scores, i), "int32")
        nxt = ops.where(finished, cfg.pad, nxt)
        tokens = K.slice_update(tokens, (0, i), nxt[:, None])
        if cfg.repetition_penalty != 1.0:
            seen = _mark_seen(seen, nxt, ops.shape(logits)[-1])
        if cfg.eos:
            finished = ops.logical_or(finished, P.is_any(nxt, cfg.eos))
        return tokens, finished, seen, nxt

    def more(i, finished):
        return ops.logical_and(i < limit - 1, ops.logical_not(ops.all(finished)))

    return start, choose, more


def _token_device(step_fn, logits, cache, seen, cfg, pick, limit=None):
    start, choose, more = token_loop(cfg, pick, limit=limit)

    def cond(i, tokens, finished, logits, cache, seen):
        return more(i, finished)

    def body(i, tokens, finished, logits, cache, seen):
        tokens, finished, seen, nxt = choose(i, tokens, finished, logits, seen)
        logits, cache = step_fn(nxt, cache)
        return i + 1, tokens, finished, logits, cache, seen

    i = ops.convert_to_tensor(0, dtype="int32")
    i, tokens, finished, logits, cache, seen = ops.while_loop(
        cond, body, (i, *start(logits), logits, cache, seen)
    )
    # the last token needs no model call (if every row has ended it writes padding)
    tokens, _, _, _ = choose(i, tokens, finished, logits, seen)
    return tokens, i + 1


def greedy(step_fn, logits, cache, seen, cfg, limit=None):
    """Greedy search on the device. logits [rows, vocab] (the prompt's next-token
    logits), seen [rows, vocab] bool (tokens for the repetition penalty; any
    [rows, 1] placeholder without one), step_fn(tokens [rows], cache) -> (logits,
    cache). Returns (tokens [rows, max_new_tokens] with pad after each row's end,
    steps taken); `limit`: see `token_loop`."""
    return _token_device(step_fn, logits, cache, seen, cfg, picker(cfg), limit)


def sample(step_fn, logits, cache, seen, cfg, seed, limit=None):
    """Sampling on the device: Gumbel-max over the warped scores. Same arguments and
    returns as `greedy`, plus an int32 `seed`."""
    return _token_device(step_fn, logits, cache, seen, cfg, picker(cfg, seed), limit)


def token_steps(step_fn, logits, cache, seen, cfg, pick, ban=None):
    """`token_loop` on the host, one model step per iteration. Yields, per step i,
    (tokens so far [rows, max_new_tokens], step i's tokens [rows], finished before
    step i [rows]) as NumPy; nothing after every row has ended."""
    start, choose, more = token_loop(cfg, pick, ban)
    tokens, finished = start(logits)
    i = 0
    while True:
        go_on = _true(more(i, finished))
        if not go_on and _true(ops.all(finished)):
            return
        before = finished
        tokens, finished, seen, nxt = choose(i, tokens, finished, logits, seen)
        yield (
            ops.convert_to_numpy(tokens),
            ops.convert_to_numpy(nxt),
            ops.convert_to_numpy(before),
        )
        if not go_on:
            return
        logits, cache = step_fn(nxt, cache)
        i += 1


# ------------------------------------------------------------------ beam search
def beam_loop(cfg, top=None, ban=None, limit=None):
    """The body of transformers' (v5) beam search: (start, select, advance).
    start(logits) -> the search state; select(cur, *state, logits, seen) -> (state,
    done, rows, tokens): the step's hypotheses, whether the search is over, the
    cache rows and tokens of the next step; advance(rows, tokens, cache, seen,
    step_fn, reorder_fn) -> (logits, cache, seen). `top(log_probs [batch, beams *
    vocab], keep)` -> (scores, indices) of the candidates, best first (default
    `ops.top_k`). `limit`: the tokens to make (see `token_loop`)."""
    batch, beams, length = cfg.batch, cfg.num_beams, cfg.max_new_tokens
    limit = length if limit is None else limit
    keep = max(2, 1 + len(cfg.eos)) * beams
    top_mask = ops.arange(keep) < beams
    offsets = ops.arange(batch, dtype="int32")[:, None] * beams
    top = top or ops.top_k

    def start(logits):
        running = ops.full((batch, beams, length), cfg.pad, dtype="int32")
        first = ops.cast(ops.arange(beams) == 0, "float32")
        running_scores = ops.tile(((1.0 - first) * _NEG)[None, :], (batch, 1))
        return (
            running,
            running_scores,
            running,
            ops.full((batch, beams), _NEG, "float32"),
            ops.zeros((batch, beams), dtype="bool"),
            ops.ones((batch, 1), dtype="bool"),
        )

    def select(
        cur, running, running_scores, sequences, beam_scores, finished, improvable, logits, seen
    ):
        vocab = ops.shape(logits)[-1]
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        log_probs = _process(log_probs, seen, cur, cfg)
        if ban is not None:
            log_probs = ops.convert_to_tensor(
                ban(log_probs, cur, ops.reshape(running, (batch * beams, length)))
            )
        log_probs = ops.reshape(log_probs, (batch, beams, vocab)) + running_scores[:, :, None]
        log_probs = ops.reshape(log_probs, (batch, beams * vocab))
        top_scores, candidates = top(log_probs, keep)
        candidates = ops.cast(candidates, "int32")
        source_beam, token = candidates // vocab, candidates % vocab
        top_sequences = ops.take_along_axis(running, source_beam[:, :, None], axis=1)
        top_sequences = K.slice_update(top_sequences, (0, 0, cur), token[:, :, None])
        hits = ops.logical_or(P.is_any(token, cfg.eos), cur + 1 >= limit)
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
            best_len = ops.cast(limit, "float32")
        else:
            best_len = ops.cast(cur + 1, "float32")
        best_running = running_scores[:, :1] / ops.power(best_len, cfg.length_penalty)
        worst_done = ops.where(finished, ops.min(beam_scores, axis=-1, keepdims=True), _NEG)
        improvable = ops.logical_and(
            improvable, ops.any(best_running > worst_done, axis=-1, keepdims=True)
        )
        keep_going = ops.logical_and(ops.any(improvable), ops.logical_not(ops.all(hits)))
        if cfg.early_stopping is True:
            keep_going = ops.logical_and(keep_going, ops.logical_not(ops.all(finished)))
        rows = ops.reshape(chosen_beam + offsets, (-1,))
        tokens = ops.take(ops.reshape(running, (batch * beams, length)), cur, axis=1)
        state = (running, running_scores, sequences, beam_scores, finished, improvable)
        return state, ops.logical_not(keep_going), rows, tokens

    def advance(rows, tokens, cache, seen, step_fn, reorder_fn):
        cache = reorder_fn(cache, rows)
        if cfg.repetition_penalty != 1.0:
            seen = _mark_seen(ops.take(seen, rows, axis=0), tokens, ops.shape(seen)[-1])
        logits, cache = step_fn(tokens, cache)
        return logits, cache, seen

    return start, select, advance


def beam_search(step_fn, reorder_fn, logits, cache, seen, cfg, limit=None):
    """Beam search on the device. logits [batch * beams, vocab], cache and seen
    already repeated per beam; reorder_fn(cache, rows) selects cache rows.
    Returns (sequences [batch, beams, max_new_tokens], scores [batch, beams]),
    best first; `limit`: see `token_loop`."""
    start, select, advance = beam_loop(cfg, limit=limit)

    def cond(cur, *state):
        return ops.logical_not(state[6])

    def body(cur, *state):
        state, logits, cache, seen = state[:6], state[7], state[8], state[9]
        state, done, rows, tokens = select(cur, *state, logits, seen)
        # the next step, also after the last one (a loop body has one shape)
        logits, cache, seen = advance(rows, tokens, cache, seen, step_fn, reorder_fn)
        return (cur + 1, *state, done, logits, cache, seen)

    cur = ops.convert_to_tensor(0, dtype="int32")
    state = ops.while_loop(
        cond, body, (cur, *start(logits), ops.convert_to_tensor(False), logits, cache, seen)
    )
    return state[3], state[4]


def beam_steps(step_fn, reorder_fn, logits, cache, seen, cfg, top=None, ban=None):
    """`beam_loop` on the host, one model step per iteration (no step after the
    last). Same arguments and returns (NumPy) as `beam_search`, plus the hooks."""
    start, select, advance = beam_loop(cfg, top, ban)
    state = start(logits)
    for cur in range(cfg.max_new_tokens):
        state, done, rows, tokens = select(cur, *state, logits, seen)
        if _true(done):
            break
        logits, cache, seen = advance(rows, tokens, cache, seen, step_fn, reorder_fn)
    return ops.convert_to_numpy(state[2]), ops.convert_to_numpy(state[3])
