"""`generate`: greedy, sampling and beam search with transformers' parameter names.

>>> import numpy as np
>>> from kerasformers import build_transformer_model
>>> from kerasformers.generation import generate
>>> gpt = build_transformer_model(None, model="gpt2", vocab_size=50, hidden_size=16,
...                               num_hidden_layers=1, num_attention_heads=2,
...                               intermediate_size=32, return_keras_model=False)
>>> out = generate(gpt, [[5, 6, 7], [8, 9]], max_new_tokens=4)
>>> out.shape
(2, 4)
"""

import numpy as np
from keras import ops

from kerasformers.generation import loops
from kerasformers.generation import processors as P
from kerasformers.generation.loops import LoopConfig
from kerasformers.generation.runner import Runner


def _as_prompts(inputs):
    if isinstance(inputs, np.ndarray) and inputs.ndim == 1:
        inputs = [inputs]
    prompts = [np.asarray(p, "int64").reshape(-1) for p in inputs]
    if not prompts:
        raise ValueError("no inputs: pass a list of prompts (token id lists)")
    for i, p in enumerate(prompts):
        if p.size == 0:
            raise ValueError(f"prompt {i} is empty: generation needs at least one token "
                             "(e.g. a start token)")
    return prompts


def _check(vocab_size, max_new_tokens, min_new_tokens, num_beams, top_k, top_p, temperature,
           eos_token_id, num_return_sequences, do_sample, repetition_penalty):
    if max_new_tokens is None or int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    if min_new_tokens < 0 or min_new_tokens > max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
    if num_beams is None or int(num_beams) < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k!r}")
    if temperature is None or temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if repetition_penalty is None or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
    for e in eos_token_id:
        if not 0 <= e < vocab_size:
            raise ValueError(f"eos_token_id {e} is not in the vocabulary (size {vocab_size})")
    if num_return_sequences < 1 or (not do_sample and num_return_sequences > num_beams):
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be in "
                         f"[1, num_beams ({num_beams})] without sampling")


class _Settings:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def process(self, scores, histories, new_tokens):
        """Processors in transformers' order: penalties, min length; then (sampling)
        temperature, top-k, top-p."""
        scores = P.repetition_penalty(scores, histories, self.repetition_penalty)
        scores = P.no_repeat_ngram(scores, histories, self.no_repeat_ngram_size)
        if self.eos_token_id and new_tokens < self.min_new_tokens:
            scores = P.suppress_tokens(scores, self.eos_token_id)
        return scores

    def warp(self, scores):
        scores = P.temperature_scale(scores, self.temperature)
        scores = P.top_k_filter(scores, self.top_k)
        return P.top_p_filter(scores, self.top_p)


def generate(model, inputs, max_new_tokens=20, min_new_tokens=0, do_sample=False, num_beams=1,
             length_penalty=1.0, early_stopping=False, top_k=None, top_p=None, temperature=1.0,
             repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=None,
             pad_token_id=None, num_return_sequences=1, seed=None, return_scores=False):
    """Generate new tokens for each prompt.

    model: a model object from `build_transformer_model(..., return_keras_model=False)`:
        causal LM (gpt, gpt2, gpt2_ml, BERT-family application='lm'), UniLM
        (application='unilm'; prompts are the sources, e.g. [CLS] ... [SEP]) or T5/mT5
        (prompts are encoder inputs; the decoder starts from token 0).
    inputs: a list of prompts (token id lists, any lengths) or a 2-D array.
    eos_token_id: an id or a list of ids that end a sequence; pad_token_id fills
        the rest (default: the first eos id, else 0).
    Returns an int array [rows * num_return_sequences, longest new sequence] of
    the new tokens only (eos included, then padding); with return_scores=True
    also the sequence scores (beam search: transformers' length-penalised sum of
    log-probabilities; otherwise None).

    Speed: the first call compiles (jax, tensorflow) or prepares (torch) the
    model's steps, later calls reuse them. On torch (CPU) the layers keep a
    oneDNN-packed copy of their kernels for fast steps, one more copy of the
    weights in memory: `kerasformers.models.eager_step.release(model)` frees it.
    """
    it = _generate(model, inputs, max_new_tokens, min_new_tokens, do_sample, num_beams,
                   length_penalty, early_stopping, top_k, top_p, temperature, repetition_penalty,
                   no_repeat_ngram_size, eos_token_id, pad_token_id, num_return_sequences, seed,
                   stream=False)
    sequences, scores = next(it)
    return (sequences, scores) if return_scores else sequences


def stream_generate(model, inputs, tokenizer=None, **kwargs):
    """Yield the new tokens as they are generated (greedy or sampling).

    Without a tokenizer: one int array [rows] per step (finished rows repeat the
    pad id). With one (anything with `decode(ids)`), one list of text pieces per
    step: each row's newly completed text, never a split multi-byte character.
    """
    if kwargs.get("num_beams", 1) != 1:
        raise ValueError("streaming needs num_beams=1 (beam search decides at the end)")
    steps = _generate(model, inputs, stream=True, **_with_defaults(kwargs))
    if tokenizer is None:
        yield from steps
        return
    tokens = emitted = None
    for step in steps:
        if tokens is None:
            tokens, emitted = [[] for _ in step], [""] * len(step)
        pieces = []
        for row, token in enumerate(step):
            if token is not None:
                tokens[row].append(int(token))
            text = tokenizer.decode(tokens[row])
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                pieces.append("")
                continue
            pieces.append(text[len(emitted[row]):])
            emitted[row] = text
        yield pieces


def _with_defaults(kwargs):
    names = ("max_new_tokens", "min_new_tokens", "do_sample", "num_beams", "length_penalty",
             "early_stopping", "top_k", "top_p", "temperature", "repetition_penalty",
             "no_repeat_ngram_size", "eos_token_id", "pad_token_id", "num_return_sequences",
             "seed")
    defaults = dict(max_new_tokens=20, min_new_tokens=0, do_sample=False, num_beams=1,
                    length_penalty=1.0, early_stopping=False, top_k=None, top_p=None,
                    temperature=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                    eos_token_id=None, pad_token_id=None, num_return_sequences=1, seed=None)
    unknown = set(kwargs) - set(names)
    if unknown:
        raise TypeError(f"unknown generation arguments: {', '.join(sorted(unknown))}")
    return {**defaults, **kwargs}


def _generate(model, inputs, max_new_tokens, min_new_tokens, do_sample, num_beams,
              length_penalty, early_stopping, top_k, top_p, temperature, repetition_penalty,
              no_repeat_ngram_size, eos_token_id, pad_token_id, num_return_sequences, seed,
              stream):
    runner = model if isinstance(model, Runner) else Runner.of(model)
    prompts = _as_prompts(inputs)
    if eos_token_id is None:
        eos = []
    elif np.ndim(eos_token_id) == 0:
        eos = [int(eos_token_id)]
    else:
        eos = [int(e) for e in eos_token_id]
    _check(runner.vocab_size, max_new_tokens, min_new_tokens, num_beams, top_k, top_p,
           temperature, eos, num_return_sequences, do_sample, repetition_penalty)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    settings = _Settings(max_new_tokens=int(max_new_tokens), min_new_tokens=min_new_tokens,
                         do_sample=do_sample, num_beams=int(num_beams),
                         length_penalty=length_penalty, early_stopping=early_stopping,
                         top_k=top_k, top_p=top_p, temperature=temperature,
                         repetition_penalty=repetition_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size, eos_token_id=eos,
                         pad_token_id=pad_token_id, num_return_sequences=num_return_sequences,
                         rng=np.random.default_rng(seed))
    # sampling draws uniform(seed32, step, row, token): the same on the host and the device
    settings.seed32 = int(settings.rng.integers(0, 2**31 - 1))
    # the tokens the processors see: decoder-only and UniLM models see the prompt, T5's
    # decoder its own tokens (from the start token)
    if runner.kind == "seq2seq":
        start = [np.array([runner.transformer.pad_token_id])] * len(prompts)
    else:
        start = prompts
    lengths = [len(p) for p in prompts]
    if runner.needs_equal_lengths(lengths):
        if stream:
            raise ValueError("streaming a batch of different prompt lengths needs a model "
                             "without relative positions; stream one prompt at a time")
        groups = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        results = [None] * len(prompts)
        scores = [None] * len(prompts)
        for rows in groups.values():
            seq, sc = _search(runner, [prompts[i] for i in rows], [start[i] for i in rows],
                              settings)
            k = num_return_sequences
            for j, i in enumerate(rows):
                results[i] = seq[j * k:(j + 1) * k]
                scores[i] = None if sc is None else sc[j * k:(j + 1) * k]
        yield _pad_rows([r for rs in results for r in rs], pad_token_id), (
            None if scores[0] is None else np.concatenate(scores))
        return
    if stream:
        yield from _sample_loop(runner, prompts, start, settings, stream=True)
        return
    yield _search(runner, prompts, start, settings)


#: greedy and beam search as one compiled loop on the device (False: the host loops)
DEVICE_LOOPS = True


def _search(runner, prompts, start, s):
    """Greedy, sampling and beam search run as one compiled loop on the device;
    no-repeat-ngram and beam sampling on the host (one compiled model step per token)."""
    if DEVICE_LOOPS and not s.no_repeat_ngram_size and not (s.do_sample and s.num_beams > 1):
        return _device_search(runner, prompts, start, s)
    if s.num_beams > 1:
        return _beam_search(runner, prompts, start, s)
    sequences = None
    for sequences in _sample_loop(runner, prompts, start, s, stream=False):
        pass
    return sequences, None


def _device_search(runner, prompts, start, s):
    beams = s.num_beams
    cfg = LoopConfig(max_new_tokens=s.max_new_tokens, min_new_tokens=int(s.min_new_tokens),
                     repetition_penalty=float(s.repetition_penalty),
                     eos=tuple(s.eos_token_id), pad=int(s.pad_token_id), num_beams=beams,
                     length_penalty=float(s.length_penalty), early_stopping=s.early_stopping,
                     batch=len(prompts), do_sample=bool(s.do_sample) and beams == 1,
                     temperature=float(s.temperature or 1.0),
                     top_k=int(s.top_k) if s.top_k else None,
                     top_p=None if s.top_p is None else float(s.top_p))
    logits, state = runner.prefill(prompts, s.max_new_tokens)
    copies = beams if beams > 1 else s.num_return_sequences
    if copies > 1:
        flat = np.repeat(np.arange(len(prompts)), copies)
        logits, state = logits[flat], runner.reorder(state, flat)
        start = [start[i] for i in flat]
    vocab = logits.shape[-1]
    if cfg.repetition_penalty != 1.0:
        seen = np.zeros((len(start), vocab), bool)
        for row, history in enumerate(start):
            seen[row, np.asarray(history, "int64")] = True
    else:
        seen = np.zeros((len(start), 1), bool)  # a placeholder: loops need no None
    first, second = runner.run_loop(cfg, logits, state, seen, seed=s.seed32)
    if beams == 1:
        return _pad_rows([_until_eos(row, s.eos_token_id) for row in first],
                         s.pad_token_id), None
    out, scores = [], []
    for b in range(len(prompts)):
        for j in range(s.num_return_sequences):
            out.append(_until_eos(first[b, j], s.eos_token_id))
            scores.append(second[b, j])
    return _pad_rows(out, s.pad_token_id), np.asarray(scores, "float32")


def _until_eos(row, eos):
    """The tokens up to and including the first eos id (all of them without one)."""
    hits = np.flatnonzero(np.isin(row, eos)) if eos else []
    return list(row[:hits[0] + 1] if len(hits) else row)


def _pad_rows(rows, pad):
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), pad, "int64")
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _sample_loop(runner, prompts, start, s, stream):
    """Greedy / sampling. Streams one token per row per step, or yields the result."""
    k = s.num_return_sequences
    logits, state = runner.prefill(prompts, s.max_new_tokens)
    rows = len(prompts) * k
    if k > 1:
        repeat = np.repeat(np.arange(len(prompts)), k)
        logits, state = logits[repeat], runner.reorder(state, repeat)
        start = [start[i] for i in repeat]
    histories = [list(h) for h in start]
    generated = [[] for _ in range(rows)]
    finished = np.zeros(rows, bool)
    for step in range(s.max_new_tokens):
        scores = s.process(logits, histories, step)
        if s.do_sample:  # Gumbel-max: a categorical draw from softmax(warped scores)
            draws = ops.convert_to_numpy(loops.uniform(s.seed32, step, scores.shape))
            tokens = (s.warp(scores) - np.log(-np.log(draws))).argmax(-1)
        else:
            tokens = scores.argmax(-1)
        tokens = np.where(finished, s.pad_token_id, tokens)
        for r in np.flatnonzero(~finished):
            generated[r].append(int(tokens[r]))
            histories[r].append(int(tokens[r]))
        if stream:
            yield [None if f else int(t) for f, t in zip(finished, tokens)]
        finished |= np.isin(tokens, s.eos_token_id)
        if finished.all() or step == s.max_new_tokens - 1:
            break
        logits, state = runner.step(tokens, state)
    if not stream:
        yield _pad_rows(generated, s.pad_token_id)


def _beam_search(runner, prompts, start, s):
    """transformers' (v5) vectorised beam search, on the host, one model call per step."""
    batch, beams = len(prompts), s.num_beams
    n_eos = len(s.eos_token_id)
    keep = max(2, 1 + n_eos) * beams
    top_mask = np.arange(keep) < beams
    max_len = s.max_new_tokens
    logits, state = runner.prefill(prompts, max_len)
    flat = np.repeat(np.arange(batch), beams)
    logits, state = logits[flat], runner.reorder(state, flat)
    vocab = logits.shape[-1]
    running = np.full((batch, beams, max_len), s.pad_token_id, "int64")
    running_scores = np.zeros((batch, beams), "float32")
    running_scores[:, 1:] = -1e9
    sequences = running.copy()
    beam_scores = np.full((batch, beams), -1e9, "float32")
    finished = np.zeros((batch, beams), bool)
    improvable = np.ones((batch, 1), bool)
    prefix = [list(start[b]) for b in range(batch)]
    for cur in range(max_len):
        histories = [prefix[i // beams] + list(running[i // beams, i % beams, :cur])
                     for i in range(batch * beams)]
        log_probs = P.log_softmax(logits)
        log_probs = s.process(log_probs, histories, cur)
        log_probs = log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]
        log_probs = log_probs.reshape(batch, beams * vocab)
        if s.do_sample:
            probs = P.softmax(log_probs)
            top = np.stack([s.rng.choice(beams * vocab, keep, replace=False, p=p / p.sum())
                            for p in probs])
        else:  # the `keep` best, best first (argpartition: no full sort of beams x vocab)
            top = np.argpartition(-log_probs, keep - 1, axis=-1)[:, :keep]
            order = np.lexsort((top, -np.take_along_axis(log_probs, top, axis=-1)), axis=-1)
            top = np.take_along_axis(top, order, axis=-1)
        top_scores = np.take_along_axis(log_probs, top, axis=-1)
        source_beam, token = top // vocab, top % vocab
        top_sequences = np.take_along_axis(running, source_beam[:, :, None], axis=1)
        top_sequences[:, :, cur] = token
        hits = np.isin(token, s.eos_token_id) | (cur + 1 >= max_len)
        # the running beams for the next step: best unfinished continuations
        run_scores = top_scores + hits * np.float32(-1e9)
        nxt = np.argsort(-run_scores, axis=-1, kind="stable")[:, :beams]
        running = np.take_along_axis(top_sequences, nxt[:, :, None], axis=1)
        running_scores = np.take_along_axis(run_scores, nxt, axis=-1)
        chosen_beam = np.take_along_axis(source_beam, nxt, axis=-1)
        # finished hypotheses
        just_finished = hits & top_mask[None, :]
        penalised = top_scores / np.float32((cur + 1) ** s.length_penalty)
        full = finished.all(-1, keepdims=True) & (s.early_stopping is True)
        penalised = penalised + full * np.float32(-1e9) + (~improvable) * np.float32(-1e9)
        penalised = penalised + (~just_finished) * np.float32(-1e9)
        merged_seq = np.concatenate([sequences, top_sequences], axis=1)
        merged_scores = np.concatenate([beam_scores, penalised], axis=1)
        merged_done = np.concatenate([finished, just_finished], axis=1)
        best = np.argsort(-merged_scores, axis=-1, kind="stable")[:, :beams]
        sequences = np.take_along_axis(merged_seq, best[:, :, None], axis=1)
        beam_scores = np.take_along_axis(merged_scores, best, axis=-1)
        finished = np.take_along_axis(merged_done, best, axis=-1)
        # stop?
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_len = max_len
        else:
            best_len = cur + 1
        best_running = running_scores[:, :1] / np.float32(best_len ** s.length_penalty)
        worst_done = np.where(finished, beam_scores.min(-1, keepdims=True), -1e9)
        improvable = improvable & (best_running > worst_done).any(-1, keepdims=True)
        open_beams = not (finished.all() and s.early_stopping is True)
        if not (improvable.any() and open_beams and not hits.all()):
            break
        rows = (chosen_beam + np.arange(batch)[:, None] * beams).reshape(-1)
        state = runner.reorder(state, rows)
        logits, state = runner.step(running.reshape(-1, max_len)[:, cur], state)
    k = s.num_return_sequences
    out, scores = [], []
    for b in range(batch):
        for j in range(k):
            out.append(_until_eos(sequences[b, j], s.eos_token_id))
            scores.append(beam_scores[b, j])
    return _pad_rows(out, s.pad_token_id), np.asarray(scores, "float32")
