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

import numpy as np


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

    def beam_search(self, inputs, topk, states=None, temperature=1, min_ends=1):
        """Beam search of width topk; returns the best output ids."""
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

    def random_sample(
        self, inputs, n, topk=None, topp=None, states=None, temperature=1, min_ends=1, seed=None
    ):
        """n samples (top-k and/or nucleus filtering); returns a list of output ids.
        `seed` (an addition) makes the draws reproducible."""
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
