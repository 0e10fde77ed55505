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

import collections
import importlib

import keras
import numpy as np
from keras import ops

from kerasformers.backends import torch as torch_backend
from kerasformers.generation import loops
from kerasformers.layers import RelativePositionEmbedding

#: backend -> the module whose `compile_fn(fn, variables)` compiles generation's calls
#: (imported on first use: no backend imports another's framework)
_COMPILERS = {
    "jax": "kerasformers.backends.jax.compile",
    "tensorflow": "kerasformers.backends.tensorflow.compile",
    "torch": "kerasformers.backends.torch.compile",
}


def _bucket(n, size):
    return -(-n // size) * size


def _power_of_two(n, least=1):
    """The smallest power of two >= max(n, least)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def transformer_of(model):
    """The Transformer object behind `model`: the model itself, or for a Keras model
    from `build_transformer_model(...)` (the default return) the object it was built
    from. Any other Keras model is a TypeError saying what is needed."""
    if isinstance(model, keras.Model):
        transformer = getattr(model, "_kerasformers_transformer", None)
        if transformer is None or transformer.model is not model:
            raise TypeError(
                f"generation needs a model built by build_transformer_model: the Keras model "
                f"{model.name!r} has no kerasformers Transformer attached (a model loaded "
                "from a .keras file, cloned or built by hand); build it with "
                "build_transformer_model(...) and load its weights into that model"
            )
        return transformer
    return model


class Runner:
    #: prompt and cache lengths are rounded up to these, to reuse compiled calls
    prompt_bucket = 16
    cache_bucket = 32
    #: the compiled device loops kept (least recently used dropped beyond this); the
    #: batch and max_new_tokens are rounded up to powers of two (at least
    #: `least_loop_length` tokens), so 30 different lengths compile a handful of loops
    max_loops = 16
    least_loop_length = 8
    bucket_loops = True
    #: a generate call whose key/value cache would hold more elements than this is
    #: refused before anything is allocated (2**31: 8 GiB in float32). T5 has no
    #: position limit (relative position buckets): this bounds it
    max_cache_elements = 2**31

    @classmethod
    def of(cls, model):
        """The model's Runner, made once and kept on it, so compiled calls are reused
        by every later `generate` on the same model. `model`: the Transformer object
        or the Keras model `build_transformer_model` returns."""
        transformer = transformer_of(model)
        runner = getattr(transformer, "_generation_runner", None)
        if runner is None:
            runner = cls(transformer)
            try:
                transformer._generation_runner = runner
            except AttributeError:  # an object that takes no attributes: no reuse
                pass
        return runner

    def __init__(self, transformer):
        transformer = transformer_of(transformer)
        self.transformer = transformer
        if getattr(transformer, "is_seq2seq", False):
            self.kind = "seq2seq"
        elif getattr(transformer, "step_attention_mode", None) == "unilm":
            self.kind = "unilm"
        elif getattr(transformer, "step_attention_mode", None) == "lm":
            self.kind = "causal"
        else:
            raise ValueError(
                f"{type(transformer).__name__} cannot generate: use a causal LM "
                "(gpt, gpt2, gpt2_ml, application='lm'), application='unilm' "
                "or a T5 model"
            )
        if not transformer.built:
            transformer.build()
        model = transformer.model
        self.segments = self.kind != "seq2seq" and len(model.inputs) > 1
        self.max_position = getattr(transformer, "max_position", None)
        self.relative = any(
            isinstance(layer, RelativePositionEmbedding) for layer in transformer.layers.values()
        )
        self.vocab_size = transformer.vocab_size
        self._plan = None  # torch: torch_backend.Plan of the current generate call
        self._compiled = self._compile(self._call)
        self._loops = collections.OrderedDict()  # compiled decode loops, least recent first
        self.loop_traces = 0  # how often a loop was traced (jax, tensorflow: compiled)

    # ------------------------------------------------------------------ compile
    def _call(self, inputs, cache, mask):
        t = self.transformer
        inplace = keras.backend.backend() == "torch"  # the runner owns its caches
        if self.kind == "seq2seq":
            return t.call_with_cache(
                inputs[0], cache, logits=True, inplace=inplace, plan=self._plan
            )
        return t.call_with_cache(
            inputs, cache, mask=mask, logits=True, inplace=inplace, plan=self._plan
        )

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

    def loop_length(self, max_new_tokens):
        """The tokens a compiled loop and its cache are made for: max_new_tokens
        rounded up to a power of two (at least `least_loop_length`); the loop stops
        at max_new_tokens, an input, so one compiled loop serves every length up to it."""
        if not self.bucket_loops:
            return int(max_new_tokens)
        return _power_of_two(max_new_tokens, self.least_loop_length)

    def batch_rows(self, rows):
        """The batch a compiled loop is made for: rows rounded up to a power of two."""
        return _power_of_two(rows) if self.bucket_loops else rows

    def _width(self, longest):
        if self.kind == "seq2seq" or not self.relative:
            return _bucket(longest, self.prompt_bucket)
        return longest

    def cache_length(self, longest, max_new_tokens):
        """The cache positions a generate call allocates (prompts of up to `longest` tokens)."""
        n = self.loop_length(max_new_tokens)
        if self.kind == "seq2seq":
            return _bucket(n + 1, self.cache_bucket)
        return _bucket(self._width(longest) + n, self.cache_bucket)

    def check(self, lengths, max_new_tokens, copies=1):
        """Refuse, on the host and before anything is allocated or compiled, prompts +
        max_new_tokens beyond the model's positions, or a key/value cache of more
        than `max_cache_elements` (T5, which has no position limit, included; linear
        attention counts its constant-size recurrent state instead)."""
        longest, max_new_tokens = max(lengths), int(max_new_tokens)
        if self.max_position is not None and longest + max_new_tokens > self.max_position:
            raise ValueError(
                f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                f"exceed the model's {self.max_position} positions: ask for at "
                f"most {max(self.max_position - longest, 0)} new tokens"
            )
        t = getattr(self.transformer, "decoder_transformer", self.transformer)
        rows = len(lengths) * copies
        if getattr(t, "attention_type", "softmax") != "softmax":
            # linear attention: a recurrent state (S [m, e], z [m], softmax's max [m]) per
            # head, whatever the length: only more rows can make it too big
            per_row = sum(
                h * t.feature_count(k) * (v + 2) for h, k, v in t.cached_attention_shapes()
            )
            elements = rows * per_row
            if elements > self.max_cache_elements:
                raise ValueError(
                    f"{rows} rows need a recurrent state of {elements:,} elements ({per_row:,} "
                    f"per row), more than Runner.max_cache_elements "
                    f"({self.max_cache_elements:,}): ask for fewer rows (or raise it)"
                )
            return
        per_position = sum(h * (k + v) for h, k, v in t.cached_attention_shapes())
        length = self.cache_length(longest, max_new_tokens)
        elements = rows * length * per_position
        if elements > self.max_cache_elements:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} needs a key/value cache of {elements:,} "
                f"elements ({rows} rows x {length} positions x {per_position} per position), "
                f"more than Runner.max_cache_elements ({self.max_cache_elements:,}): ask for "
                "fewer new tokens or rows (or raise Runner.max_cache_elements)"
            )

    def prefill(self, prompts, max_new_tokens):
        """Encode the prompts; returns (next-token logits [rows, vocab], state) with a
        cache for `loop_length(max_new_tokens)` new tokens. Starts a generation: on
        torch the layers' kernels are prepared afresh (the weights may have changed
        since the last call)."""
        lengths = [len(p) for p in prompts]
        self.check(lengths, max_new_tokens)
        if torch_backend.available():
            self._plan = torch_backend.Plan()
        rows = len(prompts)
        width = self._width(max(lengths))
        cache_length = self.cache_length(max(lengths), max_new_tokens)
        if self.kind == "seq2seq":
            ids = np.zeros((rows, width), "int32")  # T5 pads with 0, hidden from attention
            for i, p in enumerate(prompts):
                ids[i, : len(p)] = p
            t = self.transformer
            cache = t.init_cache(ids, cache_length)
            start = np.full((rows, 1), t.pad_token_id, "int32")
            logits, cache = self.call([start], cache, np.ones((rows, 1), bool))
            return logits[:, -1], {"cache": cache}
        pad = self.transformer.pad_token_id or 0
        ids = np.full((rows, width), pad, "int32")
        mask = np.zeros((rows, width), bool)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = p
            mask[i, : len(p)] = True
        cache = self.transformer.init_cache(rows, cache_length)
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
        logits, cache = self.call(
            self._step_inputs(tokens), state["cache"], np.ones(tokens.shape, bool)
        )
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
        logits, cache = self._call(
            self._step_inputs(tokens), cache, ops.ones(ops.shape(tokens), dtype="bool")
        )
        return ops.cast(logits[:, -1], "float32"), cache

    def run_loop(self, cfg, logits, state, seen, seed=0):
        """Run a whole decode loop (`loops.greedy`, `loops.sample` with cfg.do_sample,
        or `loops.beam_search` with cfg.num_beams > 1) compiled, from the prefill's
        logits and state (`seed`: sampling's int32 seed, an input, not compiled in).
        Returns NumPy arrays: greedy and sampling (tokens, steps), beam search
        (sequences, scores).

        A loop is compiled per (settings, input shapes) with max_new_tokens rounded
        up (`loop_length`; the real one is an input) and kept in an LRU of
        `max_loops`."""
        limit = int(cfg.max_new_tokens)
        cfg = cfg._replace(max_new_tokens=self.loop_length(limit))
        logits = ops.convert_to_tensor(np.asarray(logits, "float32"))
        seen = ops.convert_to_tensor(seen)
        key = (cfg, _shapes((logits, state["cache"], seen)))
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = self._compile(self._loop_fn(cfg))
            while len(self._loops) > self.max_loops:
                self._loops.popitem(last=False)
        else:
            self._loops.move_to_end(key)
        a, b = loop(
            logits,
            state["cache"],
            seen,
            ops.convert_to_tensor(seed, dtype="int32"),
            ops.convert_to_tensor(limit, dtype="int32"),
        )
        return ops.convert_to_numpy(a)[..., :limit], ops.convert_to_numpy(b)

    def _loop_fn(self, cfg):
        def run(logits, cache, seen, seed, limit):
            self.loop_traces += 1  # jax, tensorflow: runs once per trace
            if cfg.num_beams > 1:
                return loops.beam_search(
                    self._device_step,
                    self.transformer.reorder_cache,
                    logits,
                    cache,
                    seen,
                    cfg,
                    limit=limit,
                )
            if cfg.do_sample:
                return loops.sample(self._device_step, logits, cache, seen, cfg, seed, limit=limit)
            return loops.greedy(self._device_step, logits, cache, seen, cfg, limit=limit)

        return run

    def compiled_loops(self):
        """How many compiled decode loops are kept now."""
        return len(self._loops)

    def reorder(self, state, rows):
        """Keep/repeat rows of the cache (beams, num_return_sequences)."""
        return {"cache": self.transformer.reorder_cache(state["cache"], np.asarray(rows))}


def _shapes(tree):
    """The (shape, dtype) of every tensor in `tree`: a compiled loop's input signature."""
    return tuple((tuple(x.shape), str(x.dtype)) for x in keras.tree.flatten(tree))
