"""Drive a model's cached incremental call for generation: prefill, step, reorder.

`Runner(transformer)` wraps a built model object (`return_keras_model=False`):
a causal LM (GPT, GPT2, GPT2_ML, BERT-family `application='lm'`), a UniLM
seq2seq model (`application='unilm'`: the source is encoded once, the target
gets segment 1) or T5 / mT5 (the encoder runs once). Prompts of different
lengths are right-padded in one batch; padding is masked and every later
position is shifted back (`position_shift`), so each row is computed as if it
were alone. The model call is compiled once per shape: `jax.jit` over the
variables (Keras `StatelessScope`) on JAX, XLA `tf.function` on TensorFlow;
eager under `torch.no_grad()` on torch.
"""

import importlib

import keras
import numpy as np
from keras import ops

from kerasformers.backends import torch as torch_backend
from kerasformers.generation import loops
from kerasformers.layers import RelativePositionEmbedding


#: backend -> the module whose `compile_fn(fn, variables)` compiles generation's calls
#: (imported on first use: no backend imports another's framework)
_COMPILERS = {"jax": "kerasformers.backends.jax.compile",
              "tensorflow": "kerasformers.backends.tensorflow.compile",
              "torch": "kerasformers.backends.torch.compile"}


def _bucket(n, size):
    return -(-n // size) * size


class Runner:
    #: prompt and cache lengths are rounded up to these, to reuse compiled calls
    prompt_bucket = 16
    cache_bucket = 32

    @classmethod
    def of(cls, transformer):
        """The model's Runner, made once and kept on it, so compiled calls are reused
        by every later `generate` on the same model."""
        runner = getattr(transformer, "_generation_runner", None)
        if runner is None:
            runner = cls(transformer)
            try:
                transformer._generation_runner = runner
            except AttributeError:  # an object that takes no attributes: no reuse
                pass
        return runner

    def __init__(self, transformer):
        if isinstance(transformer, keras.Model):
            raise TypeError("generation needs the model object: build it with "
                            "build_transformer_model(..., return_keras_model=False)")
        self.transformer = transformer
        if getattr(transformer, "is_seq2seq", False):
            self.kind = "seq2seq"
        elif getattr(transformer, "step_attention_mode", None) == "unilm":
            self.kind = "unilm"
        elif getattr(transformer, "step_attention_mode", None) == "lm":
            self.kind = "causal"
        else:
            raise ValueError(f"{type(transformer).__name__} cannot generate: use a causal LM "
                             "(gpt, gpt2, gpt2_ml, application='lm'), application='unilm' "
                             "or a T5 model")
        if not transformer.built:
            transformer.build()
        model = transformer.model
        self.segments = self.kind != "seq2seq" and len(model.inputs) > 1
        self.max_position = getattr(transformer, "max_position", None)
        self.relative = any(isinstance(layer, RelativePositionEmbedding)
                            for layer in transformer.layers.values())
        self.vocab_size = transformer.vocab_size
        self._plan = None  # torch: torch_backend.Plan of the current generate call
        self._compiled = self._compile(self._call)
        self._loops = {}  # compiled decode loops, by LoopConfig

    # ------------------------------------------------------------------ compile
    def _call(self, inputs, cache, mask):
        t = self.transformer
        inplace = keras.backend.backend() == "torch"  # the runner owns its caches
        if self.kind == "seq2seq":
            return t.call_with_cache(inputs[0], cache, logits=True, inplace=inplace,
                                     plan=self._plan)
        return t.call_with_cache(inputs, cache, mask=mask, logits=True, inplace=inplace,
                                 plan=self._plan)

    def _compile(self, fn):
        """`fn(*tensors)` compiled for this backend (one trace per input shapes) by the
        backend's room (`kerasformers.backends.<name>.compile`); as is on others."""
        module = _COMPILERS.get(keras.backend.backend())
        if module is None:
            return fn
        return importlib.import_module(module).compile_fn(fn, self.transformer.model.variables)

    def call(self, inputs, cache, mask):
        inputs = [ops.convert_to_tensor(np.asarray(x, "int32")) for x in inputs]
        mask = ops.convert_to_tensor(np.asarray(mask, "bool"))
        logits, cache = self._compiled(inputs, cache, mask)
        return ops.convert_to_numpy(ops.cast(logits, "float32")), cache

    # ------------------------------------------------------------------ phases
    def needs_equal_lengths(self, lengths):
        """Relative-position models cannot shift rows: ragged prompts go one by one."""
        return self.kind != "seq2seq" and self.relative and len(set(lengths)) > 1

    def prefill(self, prompts, max_new_tokens):
        """Encode the prompts; returns (next-token logits [rows, vocab], state).
        Starts a generation: on torch the layers' kernels are prepared afresh (the
        weights may have changed since the last call)."""
        if torch_backend.available():
            self._plan = torch_backend.Plan()
        lengths = [len(p) for p in prompts]
        rows = len(prompts)
        if self.kind == "seq2seq":
            width = _bucket(max(lengths), self.prompt_bucket)
            ids = np.zeros((rows, width), "int32")  # T5 pads with 0, hidden from attention
            for i, p in enumerate(prompts):
                ids[i, :len(p)] = p
            t = self.transformer
            cache = t.init_cache(ids, _bucket(max_new_tokens + 1, self.cache_bucket))
            start = np.full((rows, 1), t.pad_token_id, "int32")
            logits, cache = self.call([start], cache, np.ones((rows, 1), bool))
            return logits[:, -1], {"cache": cache}
        width = max(lengths) if self.relative else _bucket(max(lengths), self.prompt_bucket)
        total = width + max_new_tokens
        if self.max_position is not None and max(lengths) + max_new_tokens > self.max_position:
            raise ValueError(f"prompt ({max(lengths)} tokens) + max_new_tokens "
                             f"({max_new_tokens}) exceed the model's {self.max_position} "
                             "positions")
        pad = self.transformer.pad_token_id or 0
        ids = np.full((rows, width), pad, "int32")
        mask = np.zeros((rows, width), bool)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
            mask[i, :len(p)] = True
        cache = self.transformer.init_cache(rows, _bucket(total, self.cache_bucket))
        inputs = [ids] + ([np.zeros_like(ids)] if self.segments else [])
        logits, cache = self.call(inputs, cache, mask)
        last = logits[np.arange(rows), np.asarray(lengths) - 1]
        shift = width - np.asarray(lengths, "int32")
        if shift.any():
            cache["position_shift"] = ops.convert_to_tensor(shift)
        return last, {"cache": cache}

    def step(self, tokens, state):
        """Feed one token per row; returns (next-token logits, state)."""
        tokens = np.asarray(tokens, "int32")[:, None]
        logits, cache = self.call(self._step_inputs(tokens), state["cache"],
                                  np.ones(tokens.shape, bool))
        return logits[:, -1], {"cache": cache}

    def _step_inputs(self, tokens):
        """The model inputs of one token per row, tokens [rows, 1]."""
        if self.segments:  # UniLM: the target is segment 1; an LM: segment 0
            return [tokens, ops.full_like(tokens, 1 if self.kind == "unilm" else 0)]
        return [tokens]

    # ------------------------------------------------------ loops on the device
    def _device_step(self, tokens, cache):
        """One token per row [rows] -> (next-token logits [rows, vocab] float32, cache)."""
        tokens = ops.expand_dims(ops.cast(tokens, "int32"), 1)
        logits, cache = self._call(self._step_inputs(tokens), cache,
                                   ops.ones(ops.shape(tokens), dtype="bool"))
        return ops.cast(logits[:, -1], "float32"), cache

    def run_loop(self, cfg, logits, state, seen, seed=0):
        """Run a whole decode loop (`loops.greedy`, `loops.sample` with cfg.do_sample,
        or `loops.beam_search` with cfg.num_beams > 1) compiled, from the prefill's
        logits and state (`seed`: sampling's int32 seed, an input, not compiled in).
        Returns NumPy arrays: greedy and sampling (tokens, steps), beam search
        (sequences, scores)."""
        loop = self._loops.get(cfg)
        if loop is None:
            if cfg.num_beams > 1:
                def run(logits, cache, seen, seed):
                    return loops.beam_search(self._device_step, self.transformer.reorder_cache,
                                             logits, cache, seen, cfg)
            elif cfg.do_sample:
                def run(logits, cache, seen, seed):
                    return loops.sample(self._device_step, logits, cache, seen, cfg, seed)
            else:
                def run(logits, cache, seen, seed):
                    return loops.greedy(self._device_step, logits, cache, seen, cfg)
            loop = self._loops[cfg] = self._compile(run)
        logits = ops.convert_to_tensor(np.asarray(logits, "float32"))
        a, b = loop(logits, state["cache"], ops.convert_to_tensor(seen),
                    ops.convert_to_tensor(seed, dtype="int32"))
        return ops.convert_to_numpy(a), ops.convert_to_numpy(b)

    def reorder(self, state, rows):
        """Keep/repeat rows of the cache (beams, num_return_sequences)."""
        return {"cache": self.transformer.reorder_cache(state["cache"], np.asarray(rows))}
