"""bert4keras' `AutoRegressiveDecoder`, API-compatible: subclass, write `predict`,
call `beam_search` / `random_sample`.

The original's example scripts port with import changes only. `predict` is the
user's: typically it runs the model on the whole sequence every step (simple,
slow); `kerasformers.generation.generate` does the same search over a key/value
cache and compiled steps. With topk=1 both give the same tokens.

>>> import numpy as np
>>> from kerasformers.generation import AutoRegressiveDecoder
>>> class Counter(AutoRegressiveDecoder):
...     @AutoRegressiveDecoder.wraps(default_rtype="probas")
...     def predict(self, inputs, output_ids, states):
...         probas = np.full((len(output_ids), 5), 0.01)
...         probas[:, (output_ids.shape[1] + 1) % 5] = 1.0   # 1, 2, 3, 4, 0=end
...         return probas / probas.sum(1, keepdims=True)
>>> Counter(start_id=None, end_id=0, maxlen=8).beam_search([np.array([7])], topk=2).tolist()
[1, 2, 3, 4, 0]
"""

import contextlib
import functools

import numpy as np


@contextlib.contextmanager
def outside_distribution():
    """Run a block without the active `keras.distribution` (restored afterwards).

    Under ``keras.distribution.set_distribution(DataParallel(...))`` Keras splits every
    batch that ``model.predict`` gets across the devices, so a decoding step on 1 row (or
    on 3 beams with 2 devices) fails with JAX's ``IndivisibleError``.  Decoding is small
    batches on one device: `AutoRegressiveDecoder.beam_search` / `random_sample` run
    inside this context, and so can your own ``model.predict`` loops.  The model's
    weights stay where the distribution put them (replicated by `DataParallel`).

    >>> import keras
    >>> with outside_distribution():
    ...     keras.distribution.distribution() is None
    True
    """
    import keras

    current = keras.distribution.distribution()
    if current is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def _outside_distribution(search):
    @functools.wraps(search)
    def run(*args, **kwargs):
        with outside_distribution():
            return search(*args, **kwargs)

    return run


def _log_softmax(x):
    x = x.astype("float32")
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _softmax(x, axis=-1):
    return np.exp(_log_softmax(np.moveaxis(np.asarray(x, "float32"), axis, -1)))


class AutoRegressiveDecoder:
    """Base class of autoregressive decoders (beam search and random sampling).

    start_id: the first output token (None: start from nothing, e.g. UniLM);
    end_id: the token that ends a sequence; maxlen: the most steps;
    minlen: the fewest tokens before an end may be accepted.
    """

    def __init__(self, start_id, end_id, maxlen, minlen=1):
        self.start_id = start_id
        self.end_id = end_id
        self.maxlen = maxlen
        self.minlen = minlen
        self.models = {}
        if start_id is None:
            self.first_output_ids = np.empty((1, 0), dtype=int)
        else:
            self.first_output_ids = np.array([[self.start_id]])

    @staticmethod
    def wraps(default_rtype="probas", use_states=False):
        """Decorate `predict(self, inputs, output_ids, states)`.

        default_rtype: what `predict` returns, 'probas' or 'logits'; use_states:
        whether it returns (scores, states). The wrapped method takes
        temperature and rtype ('probas' or 'logits' = log-probabilities).
        """

        def actual_decorator(predict):
            def new_predict(self, inputs, output_ids, states, temperature=1, rtype=default_rtype):
                assert rtype in ("probas", "logits")
                prediction = predict(self, inputs, output_ids, states)
                if not use_states:
                    prediction = (prediction, None)
                scores = np.asarray(prediction[0], "float32")
                if default_rtype == "logits":
                    scores = _softmax(scores / temperature)
                elif temperature != 1:
                    scores = np.power(scores, 1.0 / temperature)
                    scores = scores / scores.sum(axis=-1, keepdims=True)
                if rtype == "probas":
                    return scores, prediction[1]
                return np.log(scores + 1e-12), prediction[1]

            return new_predict

        return actual_decorator

    def last_token(self, model):
        """A Keras model returning only `model`'s last position (cached per model)."""
        import keras

        from kerasformers.layers import TokenSelect

        if model not in self.models:
            outputs = [
                TokenSelect(index=-1)(output)
                for output in (model.outputs if len(model.outputs) > 1 else [model.output])
            ]
            outputs = outputs[0] if len(outputs) == 1 else outputs
            self.models[model] = keras.Model(model.inputs, outputs)
        return self.models[model]

    def predict(self, inputs, output_ids, states=None):
        """Scores of the next token for every row of output_ids (override this)."""
        raise NotImplementedError

    @_outside_distribution
    def beam_search(
        self,
        inputs,
        topk,
        states=None,
        temperature=1,
        min_ends=1,
        rule="bert4keras",
        length_penalty=1.0,
        early_stopping=False,
    ):
        """Beam search of width topk; returns the best output ids (with `start_id` and the
        `end_id` that ended them).  Runs outside an active `keras.distribution`
        (`outside_distribution`), so a batch of one decodes under `DataParallel`.

        Two rules decide which hypothesis wins (they differ on some inputs, see the
        README's "Beam search: two rules"):

        - ``rule="bert4keras"`` (default, the original's): each step keeps the `topk`
          best continuations; when the best of them ends with `end_id` (after `min_ends`
          ends) it is returned at once; the other ended ones are dropped and the beam
          narrows; at `maxlen` the best unfinished one.  Scores are plain sums of log
          probabilities (no length normalisation).
        - ``rule="transformers"``: `generate(num_beams=topk)`'s search, run over this
          `predict` (the same loop code, `generation.loops.beam_steps`): `topk` beams stay
          alive, every ended hypothesis among each step's best `topk` is kept, ranked by
          ``sum of log probabilities / generated length ** length_penalty``, and the
          search stops per `early_stopping` (True, False or "never").  ``minlen``
          becomes ``min_new_tokens = minlen - len(first output ids) - 1`` (`end_id` is
          suppressed before it, as `generate` does); `min_ends` must be 1.  Returns
          what ``generate(model, [source], num_beams=topk, eos_token_id=end_id,
          max_new_tokens=maxlen, length_penalty=..., early_stopping=...)`` returns for
          the same model (after the first output ids).
        """
        if rule == "transformers":
            if min_ends != 1:
                raise ValueError('min_ends must be 1 with rule="transformers"')
            return self._transformers_beam_search(
                inputs, topk, states, temperature, length_penalty, early_stopping
            )
        if rule != "bert4keras":
            raise ValueError(f'rule must be "bert4keras" or "transformers", got {rule!r}')
        if length_penalty != 1.0 or early_stopping is not False:
            raise ValueError(
                'length_penalty and early_stopping belong to rule="transformers" '
                "(bert4keras' rule has no length normalisation and stops at the first "
                "best hypothesis that ends)"
            )
        inputs = [np.array([i]) for i in inputs]
        output_ids, output_scores = self.first_output_ids, np.zeros(1)
        for step in range(self.maxlen):
            scores, states = self.predict(inputs, output_ids, states, temperature, "logits")
            if step == 0:  # after the first step, every input is repeated topk times
                inputs = [np.repeat(i, topk, axis=0) for i in inputs]
            scores = output_scores.reshape((-1, 1)) + scores
            indices = scores.argpartition(-topk, axis=None)[-topk:]
            rows, columns = indices // scores.shape[1], (indices % scores.shape[1])
            output_ids = np.concatenate([output_ids[rows], columns.reshape((-1, 1))], 1)
            output_scores = np.take_along_axis(scores, indices, axis=None)
            is_end = output_ids[:, -1] == self.end_id
            end_counts = (output_ids == self.end_id).sum(1)
            if output_ids.shape[1] >= self.minlen:
                best = output_scores.argmax()
                if is_end[best] and end_counts[best] >= min_ends:
                    return output_ids[best]
                flag = ~is_end | (end_counts < min_ends)
                if not flag.all():
                    inputs = [i[flag] for i in inputs]
                    output_ids, output_scores = output_ids[flag], output_scores[flag]
                    end_counts = end_counts[flag]
                    topk = int(flag.sum())
        return output_ids[output_scores.argmax()]

    def _transformers_beam_search(
        self, inputs, topk, states, temperature, length_penalty, early_stopping
    ):
        from keras import ops

        from kerasformers.generation.loops import LoopConfig, beam_steps

        first = self.first_output_ids
        scores, states = self.predict(
            [np.array([i]) for i in inputs], first, states, temperature, "logits"
        )
        repeated = [np.repeat(np.array([i]), topk, axis=0) for i in inputs]
        box = {"states": states}

        def step_fn(tokens, output_ids):
            tokens = ops.convert_to_numpy(tokens).reshape((-1, 1)).astype(output_ids.dtype)
            output_ids = np.concatenate([output_ids, tokens], 1)
            scores, box["states"] = self.predict(
                repeated, output_ids, box["states"], temperature, "logits"
            )
            return scores, output_ids

        def reorder_fn(output_ids, rows):
            return output_ids[ops.convert_to_numpy(rows)]

        eos = () if self.end_id is None else (int(self.end_id),)
        cfg = LoopConfig(
            max_new_tokens=int(self.maxlen),
            min_new_tokens=max(0, int(self.minlen) - first.shape[1] - 1),
            repetition_penalty=1.0,
            eos=eos,
            pad=eos[0] if eos else 0,
            num_beams=int(topk),
            length_penalty=float(length_penalty),
            early_stopping=early_stopping,
            batch=1,
        )
        sequences, _ = beam_steps(
            step_fn,
            reorder_fn,
            np.repeat(np.asarray(scores, "float32"), topk, axis=0),
            np.repeat(first, topk, axis=0),
            np.zeros((topk, 1), bool),
            cfg,
        )
        best = sequences[0, 0]
        ends = np.flatnonzero(np.isin(best, eos)) if eos else []
        if len(ends):
            best = best[: ends[0] + 1]
        return np.concatenate([first[0], best]).astype(first.dtype)

    @_outside_distribution
    def random_sample(
        self, inputs, n, topk=None, topp=None, states=None, temperature=1, min_ends=1, seed=None
    ):
        """n samples (top-k and/or nucleus filtering); returns a list of output ids.
        `seed` (an addition) makes the draws reproducible.  Runs outside an active
        `keras.distribution` (`outside_distribution`)."""
        rng = np.random.default_rng(seed)
        inputs = [np.array([i]) for i in inputs]
        output_ids = self.first_output_ids
        results = []
        for step in range(self.maxlen):
            probas, states = self.predict(inputs, output_ids, states, temperature, "probas")
            probas = probas / probas.sum(axis=1, keepdims=True)
            if step == 0:  # after the first step, every input is repeated n times
                probas = np.repeat(probas, n, axis=0)
                inputs = [np.repeat(i, n, axis=0) for i in inputs]
                output_ids = np.repeat(output_ids, n, axis=0)
            if topk is not None:
                k_indices = probas.argpartition(-topk, axis=1)[:, -topk:]
                probas = np.take_along_axis(probas, k_indices, axis=1)
                probas = probas / probas.sum(axis=1, keepdims=True)
            if topp is not None:
                p_indices = probas.argsort(axis=1)[:, ::-1]
                probas = np.take_along_axis(probas, p_indices, axis=1)
                cumulative = np.cumsum(probas, axis=1)
                flag = np.roll(cumulative >= topp, 1, axis=1)
                flag[:, 0] = False  # keep at least the most likely token
                probas[flag] = 0
                probas = probas / probas.sum(axis=1, keepdims=True)
            sample_ids = np.array([rng.choice(len(p), p=p) for p in probas]).reshape((-1, 1))
            if topp is not None:
                sample_ids = np.take_along_axis(p_indices, sample_ids, axis=1)
            if topk is not None:
                sample_ids = np.take_along_axis(k_indices, sample_ids, axis=1)
            output_ids = np.concatenate([output_ids, sample_ids], 1)
            is_end = output_ids[:, -1] == self.end_id
            end_counts = (output_ids == self.end_id).sum(1)
            if output_ids.shape[1] >= self.minlen:
                flag = is_end & (end_counts >= min_ends)
                if flag.any():
                    results.extend(output_ids[flag])
                    flag = ~flag
                    inputs = [i[flag] for i in inputs]
                    output_ids = output_ids[flag]
                    end_counts = end_counts[flag]
                    if len(output_ids) == 0:
                        break
        results.extend(output_ids)
        return results
