"""`generate`: greedy, sampling and beam search with transformers' parameter names.

>>> import numpy as np
>>> from kerasformers import build_transformer_model
>>> from kerasformers.generation import GenerationConfig, generate
>>> gpt = build_transformer_model(None, model="gpt2", vocab_size=50, hidden_size=16,
...                               num_hidden_layers=1, num_attention_heads=2,
...                               intermediate_size=32, return_keras_model=False)
>>> out = generate(gpt, [[5, 6, 7], [8, 9]], max_new_tokens=4)
>>> out.shape
(2, 4)
>>> config = GenerationConfig(max_new_tokens=4, num_beams=2)
>>> device = generate(gpt, [[5, 6, 7]], config)
>>> device.shape == generate(gpt, [[5, 6, 7]], config, loop="host").shape
True
"""

import warnings

import numpy as np
from keras import ops

from kerasformers.generation import loops
from kerasformers.generation import processors as P
from kerasformers.generation.config import GenerationConfig
from kerasformers.generation.loops import LoopConfig
from kerasformers.generation.runner import Runner

LOOPS = ("device", "host")


def generate(model, inputs, config=None, *, return_scores=False, loop="device", **overrides):
    """Generate new tokens for each prompt.

    model: the Keras model `build_transformer_model(...)` returns, or its model
        object (`return_keras_model=False`): causal LM (gpt, gpt2, gpt2_ml,
        BERT-family application='lm'), UniLM
        (application='unilm'; prompts are the sources, e.g. [CLS] ... [SEP]) or T5/mT5
        (prompts are encoder inputs; the decoder starts from token 0).
    inputs: a list of prompts (token id lists, any lengths), a 2-D array, or one
        prompt (a flat list or 1-D array). Checked on the host before anything is
        compiled (`check_prompts`): integer ids in [0, vocab_size), no empty or nested
        prompt, and prompt + max_new_tokens within the model's `max_position`
        (GPT-2: 1024); a key/value cache of more than `Runner.max_cache_elements`
        (2**31) is refused too, which bounds T5 (no position limit). A ValueError
        names the prompt, the position and the value.
    config: a `GenerationConfig` (default: its defaults); keyword `overrides` replace
        its fields (`max_new_tokens=`, `num_beams=`, ...: see `GenerationConfig`).
    loop: "device" runs the whole search as one compiled loop (no_repeat_ngram_size
        and beam sampling always run on the host); "host" runs the same loop one
        compiled model step per token.
    Returns an int array [rows * num_return_sequences, longest new sequence] of
    the new tokens only (eos included, then padding); with return_scores=True
    also the sequence scores (beam search: transformers' length-penalised sum of
    log-probabilities; otherwise None).

    Compiled loops (jax, tensorflow) are made for max_new_tokens and the batch
    rounded up to powers of two (the extra rows copy the first prompt and are
    dropped), at most `Runner.max_loops` kept: 30 different max_new_tokens compile
    a handful of loops, with the same tokens.

    Speed: the first call compiles (jax, tensorflow) or prepares (torch) the
    model's steps, later calls reuse them. On torch (CPU) the layers keep a
    oneDNN-packed copy of their kernels for fast steps, one more copy of the
    weights in memory: `kerasformers.backends.torch.release(model)` frees it.
    """
    config = _config(config, overrides)
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    sequences, scores = next(_generate(model, inputs, config, loop, stream=False))
    return (sequences, scores) if return_scores else sequences


def stream_generate(model, inputs, tokenizer=None, config=None, **overrides):
    """Yield the new tokens as they are generated (greedy or sampling, on the host).

    model and inputs: as `generate`. Without a tokenizer: one int array [rows] per
    step (finished rows repeat the pad id). With one (anything with `decode(ids)`),
    one list of text pieces per step: each row's newly completed text, never a
    split multi-byte character. A tokenizer with a `vocab_size` smaller than the
    model's (real T5 checkpoints pad their embedding past the SentencePiece vocabulary)
    gives a warning naming both sizes at the start, and a ValueError naming the id if
    one it has no text for is generated.
    """
    config = _config(config, overrides)
    if config.num_beams != 1:
        raise ValueError("streaming needs num_beams=1 (beam search decides at the end)")
    limit = None if tokenizer is None else _check_tokenizer(tokenizer, _runner(model).vocab_size)
    steps = _generate(model, inputs, config, "host", stream=True)
    if tokenizer is None:  # as documented: an int array, pad_token_id for finished rows
        for step in steps:
            yield np.array([config.pad if t is None else t for t in step], "int64")
        return
    tokens = emitted = None
    for step in steps:
        if tokens is None:
            tokens, emitted = [[] for _ in step], [""] * len(step)
        pieces = []
        for row, token in enumerate(step):
            if token is not None:
                if limit is not None and int(token) >= limit:
                    raise ValueError(
                        f"row {row} generated id {int(token)}, which the "
                        f"tokenizer ({limit} tokens) has no text for"
                    )
                tokens[row].append(int(token))
            text = tokenizer.decode(tokens[row])
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                pieces.append("")
                continue
            pieces.append(text[len(emitted[row]) :])
            emitted[row] = text
        yield pieces


def _config(config, overrides):
    if config is None:
        config = GenerationConfig()
    elif not isinstance(config, GenerationConfig):
        raise TypeError(
            f"config must be a GenerationConfig, got {type(config).__name__} "
            "(pass the settings by keyword: max_new_tokens=...)"
        )
    return config.replace(**overrides) if overrides else config


def _runner(model):
    return model if isinstance(model, Runner) else Runner.of(model)


def _check_tokenizer(tokenizer, vocab_size):
    """The tokenizer's size if it is smaller than the model's vocabulary (with a warning:
    real T5/mT5 checkpoints pad their embedding past the SentencePiece vocabulary), else
    None."""
    size = getattr(tokenizer, "vocab_size", None)
    if size is None or int(size) >= vocab_size:
        return None
    warnings.warn(
        f"the tokenizer's vocabulary ({int(size)} tokens) is smaller than the "
        f"model's ({vocab_size}): if one of the ids {int(size)}..{vocab_size - 1} "
        "is generated, stream_generate raises (it has no text)",
        stacklevel=3,
    )
    return int(size)


def check_prompts(inputs, vocab_size):
    """The prompts as a list of int64 arrays, each checked on the host: integer ids
    (not float, bool, NaN or text), in [0, vocab_size), none empty or nested. A
    ValueError (TypeError for text) names the prompt, the position and the value.

    >>> check_prompts([[5, 6], [7]], vocab_size=50)[1]
    array([7])
    >>> check_prompts([[5, 60]], vocab_size=50)
    Traceback (most recent call last):
    ...
    ValueError: prompt 0 has token id 60 at position 1: ids must be in [0, 50) (the vocabulary)
    """
    if isinstance(inputs, (str, bytes)):
        raise TypeError("inputs are token ids, not text: encode the text with a tokenizer")
    if hasattr(inputs, "shape") and not isinstance(inputs, np.ndarray):
        inputs = np.asarray(inputs)  # a backend tensor
    if isinstance(inputs, np.ndarray):
        if inputs.ndim not in (1, 2):
            raise ValueError(f"inputs must be [rows, length] token ids, got shape {inputs.shape}")
        inputs = [inputs] if inputs.ndim == 1 else list(inputs)
    else:
        inputs = list(inputs)
        if inputs and all(isinstance(p, (int, float, np.number)) for p in inputs):
            inputs = [inputs]  # one prompt, as a 1-D array
    if not inputs:
        raise ValueError("no inputs: pass a list of prompts (token id lists)")
    return [_check_prompt(i, p, vocab_size) for i, p in enumerate(inputs)]


def _check_prompt(i, prompt, vocab_size):
    if isinstance(prompt, (str, bytes)):
        raise TypeError(
            f"prompt {i} is text ({prompt[:20]!r}): pass token ids "
            "(encode the text with a tokenizer)"
        )
    try:
        p = np.asarray(prompt)
    except ValueError:  # numpy refuses ragged nesting
        raise ValueError(
            f"prompt {i} is not a flat list of token ids (it nests lists of different lengths)"
        ) from None
    if p.ndim != 1:
        raise ValueError(f"prompt {i} must be a flat list of token ids, got shape {p.shape}")
    if p.size == 0:
        raise ValueError(
            f"prompt {i} is empty: generation needs at least one token (e.g. a start token)"
        )
    if p.dtype.kind not in "iu":
        if p.dtype.kind == "f":
            nan = np.flatnonzero(np.isnan(p))
            if nan.size:
                raise ValueError(f"prompt {i} has NaN at position {nan[0]}: token ids are integers")
            j = np.flatnonzero(p != np.round(p))
            j = j[0] if j.size else 0
            raise ValueError(
                f"prompt {i} has {p.dtype} value {p[j].item()!r} at position {j}: "
                "token ids must be an integer type (e.g. int32)"
            )
        raise ValueError(
            f"prompt {i} has {p.dtype} values ({p[0].item()!r} at position 0): token "
            "ids must be integers"
        )
    bad = np.flatnonzero((p < 0) | (p >= vocab_size))
    if bad.size:
        j = bad[0]
        raise ValueError(
            f"prompt {i} has token id {int(p[j])} at position {j}: ids must be "
            f"in [0, {vocab_size}) (the vocabulary)"
        )
    return p.astype("int64")


class _Search:
    """One generate call's settings: the config, where the loop runs and the
    sampling randomness (`rng` for beam sampling; `seed32` for the counter-based
    draws of `draws.uniform`, the same on the host and the device)."""

    def __init__(self, config, loop):
        self.config, self.loop = config, loop
        self.rng = np.random.default_rng(config.seed)
        self.seed32 = int(self.rng.integers(0, 2**31 - 1))

    def on_host(self):
        c = self.config
        return (
            self.loop == "host" or bool(c.no_repeat_ngram_size) or (c.do_sample and c.num_beams > 1)
        )

    def loop_config(self, batch):
        c = self.config
        return LoopConfig(
            max_new_tokens=int(c.max_new_tokens),
            min_new_tokens=int(c.min_new_tokens),
            repetition_penalty=float(c.repetition_penalty),
            eos=tuple(c.eos_ids),
            pad=int(c.pad),
            num_beams=int(c.num_beams),
            length_penalty=float(c.length_penalty),
            early_stopping=c.early_stopping,
            batch=batch,
            do_sample=bool(c.do_sample) and int(c.num_beams) == 1,
            temperature=float(c.temperature or 1.0),
            top_k=int(c.top_k) if c.top_k else None,
            top_p=None if c.top_p is None else float(c.top_p),
        )


def _generate(model, inputs, config, loop, stream):
    runner = _runner(model)
    prompts = check_prompts(inputs, runner.vocab_size)
    config.check_vocabulary(runner.vocab_size)
    copies = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    runner.check([len(p) for p in prompts], config.max_new_tokens, copies)
    search = _Search(config, loop)
    # the tokens the processors see: decoder-only and UniLM models see the prompt, T5's
    # decoder its own tokens (from the start token)
    if runner.kind == "seq2seq":
        start = [np.array([runner.transformer.pad_token_id])] * len(prompts)
    else:
        start = prompts
    lengths = [len(p) for p in prompts]
    if runner.needs_equal_lengths(lengths):
        if stream:
            raise ValueError(
                "streaming a batch of different prompt lengths needs a model "
                "without relative positions; stream one prompt at a time"
            )
        groups = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        results = [None] * len(prompts)
        scores = [None] * len(prompts)
        k = config.num_return_sequences
        for rows in groups.values():
            seq, sc = _search(runner, [prompts[i] for i in rows], [start[i] for i in rows], search)
            for j, i in enumerate(rows):
                results[i] = seq[j * k : (j + 1) * k]
                scores[i] = None if sc is None else sc[j * k : (j + 1) * k]
        yield (
            _pad_rows([r for rs in results for r in rs], config.pad),
            (None if scores[0] is None else np.concatenate(scores)),
        )
        return
    if stream:
        for _, tokens, before in _token_steps(runner, *_prefill(runner, prompts, start, search)):
            yield [None if f else int(t) for f, t in zip(before, tokens)]
        return
    yield _search(runner, prompts, start, search)


def _prefill(runner, prompts, start, search):
    """The prompts' logits and state, repeated per beam or returned sequence, with
    the loop's settings and the repetition penalty's seen tokens."""
    c = search.config
    cfg = search.loop_config(len(prompts))
    logits, state = runner.prefill(prompts, cfg.max_new_tokens)
    copies = cfg.num_beams if cfg.num_beams > 1 else c.num_return_sequences
    if copies > 1:
        flat = np.repeat(np.arange(len(prompts)), copies)
        logits, state = logits[flat], runner.reorder(state, flat)
        start = [start[i] for i in flat]
    if cfg.repetition_penalty != 1.0:
        seen = P.seen_mask(start, logits.shape[-1])
    else:
        seen = np.zeros((len(start), 1), bool)  # a placeholder: loops need no None
    return search, cfg, logits, state, seen, start


def _search(runner, prompts, start, search):
    """Greedy, sampling or beam search, compiled on the device or step by step on the
    host; returns (sequences, scores or None)."""
    n = len(prompts)
    if not search.on_host():  # a compiled loop per power-of-two batch: pad with row 0
        extra = runner.batch_rows(n) - n
        prompts, start = prompts + prompts[:1] * extra, start + start[:1] * extra
    search, cfg, logits, state, seen, start = _prefill(runner, prompts, start, search)
    c = search.config
    if not search.on_host():
        first, second = runner.run_loop(cfg, logits, state, seen, seed=search.seed32)
        if cfg.num_beams == 1:
            first = first[: n * c.num_return_sequences]
    elif cfg.num_beams > 1:
        first, second = _beam_steps(runner, search, cfg, logits, state, seen, start)
    else:
        for first, _, _ in _token_steps(runner, search, cfg, logits, state, seen, start):
            pass  # the tokens so far, after each step: keep the last
    if cfg.num_beams == 1:
        return _pad_rows([_until_eos(row, cfg.eos) for row in first], cfg.pad), None
    out, scores = [], []
    for b in range(n):
        for j in range(c.num_return_sequences):
            out.append(_until_eos(first[b, j], cfg.eos))
            scores.append(second[b, j])
    return _pad_rows(out, cfg.pad), np.asarray(scores, "float32")


# ------------------------------------------------------------------ on the host
def _host_step(runner):
    return lambda tokens, state: runner.step(ops.convert_to_numpy(tokens), state)


def _ngram_ban(n, start):
    """no_repeat_ngram over each row's history: its start tokens, then its new ones."""
    if not n:
        return None

    def ban(scores, step, generated):
        generated = ops.convert_to_numpy(generated)
        histories = [list(h) + list(generated[row, :step]) for row, h in enumerate(start)]
        return P.no_repeat_ngram(ops.convert_to_numpy(scores), histories, n)

    return ban


def _token_steps(runner, search, cfg, logits, state, seen, start):
    return loops.token_steps(
        _host_step(runner),
        logits,
        state,
        seen,
        cfg,
        loops.picker(cfg, search.seed32),
        _ngram_ban(search.config.no_repeat_ngram_size, start),
    )


def _beam_steps(runner, search, cfg, logits, state, seen, start):
    top = None
    if search.config.do_sample:  # beam sampling: `keep` candidates drawn without replacement

        def top(log_probs, keep):
            log_probs = ops.convert_to_numpy(log_probs)
            probs = ops.convert_to_numpy(ops.softmax(log_probs, axis=-1))
            picks = np.stack(
                [
                    search.rng.choice(probs.shape[-1], keep, replace=False, p=p / p.sum())
                    for p in probs
                ]
            )
            return (
                ops.convert_to_tensor(np.take_along_axis(log_probs, picks, axis=-1)),
                ops.convert_to_tensor(picks),
            )

    def reorder(state, rows):
        return runner.reorder(state, ops.convert_to_numpy(rows))

    return loops.beam_steps(
        _host_step(runner),
        reorder,
        logits,
        state,
        seen,
        cfg,
        top=top,
        ban=_ngram_ban(search.config.no_repeat_ngram_size, start),
    )


def _until_eos(row, eos):
    """The tokens up to and including the first eos id (all of them without one)."""
    hits = np.flatnonzero(np.isin(row, eos)) if eos else []
    return list(row[: hits[0] + 1] if len(hits) else row)


def _pad_rows(rows, pad):
    width = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), pad, "int64")
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
