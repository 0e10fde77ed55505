"""A served model: a model directory loaded once, and the batched work the server runs on it.

`ServedModel(path)` reads an HF directory (``config.json`` + weights + tokenizer files, as
`build_transformer_model(checkpoint_path=path)` and `tokenizers.from_pretrained(path)` do) and
decides what it can serve from the model type:

* BERT family (bert, roberta, albert, nezha, roformer, electra): ``embeddings`` (last hidden
  layer, "mean" or "cls" pooled, L2-normalised by default) and, when the checkpoint has the MLM
  head, ``fill-mask``;
* causal LMs (gpt, gpt2, gpt2_ml) and BERT with ``application="lm"`` / ``"unilm"``:
  ``completions``;
* every model: ``tokenize``.

The batch methods (`embed`, `fill_mask`, `complete`, `stream`) are called by the server's one
worker thread with many requests at once. Batch shapes are rounded up to buckets (rows to a power
of two, lengths to a power of two >= 8) so JAX and TensorFlow compile a few shapes, not one per
request mix.
"""

import os

import keras
import numpy as np

from kerasformers import config as config_lib
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.generation import GenerationConfig, generate, stream_generate
from kerasformers.models import build_transformer_model
from kerasformers.tokenizers import from_pretrained

CAUSAL_MODELS = ("gpt", "gpt2", "gpt2_ml")
ENCODER_MODELS = ("bert", "roberta", "albert", "albert_unshared", "nezha", "roformer", "electra")
POOLS = ("mean", "cls")
MIN_LENGTH = 8


def bucket(n, minimum=1):
    """The smallest power of two >= max(n, minimum): the batch shapes compiled.

    >>> [bucket(n) for n in (1, 2, 3, 5, 32)], bucket(3, minimum=8)
    ([1, 2, 4, 8, 32], 8)
    """
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


class ServedModel:
    """One model directory, loaded for serving.

    path: an HF model directory (``config.json``, weights, ``vocab.txt`` / BPE files).
    name: the id clients pass as ``model`` (default: the directory's name).
    application: None (from the model type), "lm" or "unilm" to serve a BERT-family
        model's completions.
    pool: "mean" (over the real tokens) or "cls" for embeddings; normalize: L2-normalise
        them (as OpenAI's embeddings).
    """

    def __init__(self, path, name=None, application=None, pool="mean", normalize=True):
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model directory {path!r} does not exist")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if application not in (None, "encoder", "lm", "unilm"):
            raise ValueError(f"application must be None, 'lm' or 'unilm', got {application!r}")
        self.path = path
        self.name = name or os.path.basename(os.path.normpath(path))
        self.pool, self.normalize = pool, bool(normalize)
        raw = config_lib.load_json(config_lib.find_config(path))
        key = config_lib.detect_model(raw) or "bert"
        self.model_type = key
        self.tokenizer = from_pretrained(path)
        self.tasks = ["tokenize"]
        self.encoder = self.mlm = self.lm = None
        self.mask_id = self.mask_token = None
        if key in CAUSAL_MODELS or application in ("lm", "unilm"):
            if key not in CAUSAL_MODELS and key not in ENCODER_MODELS:
                raise ValueError(f"completions are not served for model type {key!r}")
            kwargs = {} if key in CAUSAL_MODELS else {"application": application}
            self.lm = build_transformer_model(
                checkpoint_path=path, return_keras_model=False, **kwargs
            )
            self.application = "unilm" if application == "unilm" else "lm"
            self.vocab_size = self.lm.vocab_size
            self.max_position = getattr(self.lm, "max_position", None)
            self.eos_id = self._eos_id(raw, key)
            self.tasks.append("completions")
        elif key in ENCODER_MODELS:
            self.application = "encoder"
            self._load_encoder(path)
        else:
            raise ValueError(
                f"model type {key!r} is not served: encoders ({', '.join(ENCODER_MODELS)}) "
                f"and causal LMs ({', '.join(CAUSAL_MODELS)})"
            )
        if self.tokenizer.vocab_size > self.vocab_size:
            raise ValueError(
                f"the tokenizer of {path!r} has {self.tokenizer.vocab_size} tokens, more "
                f"than the model's vocabulary ({self.vocab_size})"
            )

    def _load_encoder(self, path):
        try:
            transformer = build_transformer_model(
                checkpoint_path=path, with_mlm=True, return_keras_model=False
            )
            has_mlm = True
        except CheckpointError:  # no MLM weights in the checkpoint (e.g. sentence encoders)
            transformer = build_transformer_model(checkpoint_path=path, return_keras_model=False)
            has_mlm = False
        model = transformer.model
        self.vocab_size = transformer.vocab_size
        self.max_position = getattr(transformer, "max_position", None)
        if has_mlm:
            hidden = model.get_layer("MLM-Dense").input
            self.encoder = keras.Model(model.inputs, hidden)
            self.mlm = keras.Model(model.inputs, [hidden, model.output])
        else:
            self.encoder = model
        self.tasks.append("embeddings")
        self.mask_id = getattr(self.tokenizer, "mask_id", None)
        if self.mlm is not None and self.mask_id is not None:
            self.mask_token = self.tokenizer.id_to_token(self.mask_id)
            self.tasks.append("fill-mask")

    def _eos_id(self, raw, key):
        if raw.get("eos_token_id") is not None:
            return int(raw["eos_token_id"])
        if key in CAUSAL_MODELS:
            token = "<|endoftext|>"
        else:
            token = getattr(self.tokenizer, "token_end", None) or "[SEP]"
        try:
            return self.tokenizer.token_to_id(token)
        except (KeyError, ValueError):
            return None

    # -- per request, on the event loop: text -> ids, checked ---------------------------------
    @property
    def max_length(self):
        """The longest token sequence the model takes (None: no limit)."""
        return self.max_position

    def encode(self, text):
        """Token ids of one text for embeddings / fill-mask / tokenize (with the
        tokenizer's start and end tokens)."""
        return [int(i) for i in self.tokenizer.encode(text)[0]]

    def masked_ids(self, text):
        """Token ids of a fill-mask text: each mask token (``[MASK]``) written in the text
        becomes the mask id (the tokenizer alone would split it into characters)."""
        if self.mask_token is None:
            return self.encode(text)
        pieces = text.split(self.mask_token)
        start, end = self.tokenizer.start_id, self.tokenizer.end_id
        ids = [] if start is None else [start]
        for i, piece in enumerate(pieces):
            if i:
                ids.append(self.mask_id)
            if piece:
                inner = self.encode(piece)
                if start is not None:
                    inner = inner[1:]
                if end is not None:
                    inner = inner[:-1]
                ids.extend(inner)
        return ids if end is None else ids + [end]

    def prompt_ids(self, text):
        """Token ids of a completion prompt: GPT's plain ids; BERT-as-LM's [CLS] + text
        (no [SEP], it would end the text); UniLM's [CLS] source [SEP]."""
        ids = self.encode(text)
        if self.application == "lm" and self.model_type not in CAUSAL_MODELS:
            ids = ids[:-1]
        return ids

    # -- batched, on the worker thread -------------------------------------------------------
    def _pad(self, rows):
        """[bucket(rows), bucket(longest)] token ids (padding 0; extra rows copy row 0)."""
        length = bucket(max(len(r) for r in rows), MIN_LENGTH)
        if self.max_position:
            length = min(length, self.max_position)
        tokens = np.zeros((bucket(len(rows)), length), "int32")
        for i in range(tokens.shape[0]):
            r = rows[i] if i < len(rows) else rows[0]
            tokens[i, : len(r)] = r
        return tokens

    def _predict(self, model, rows):
        tokens = self._pad(rows)
        out = model.predict_on_batch([tokens, np.zeros_like(tokens)])
        return tokens, out

    def embed(self, rows):
        """One vector per row of token ids: a padded forward pass for all of them."""
        tokens, hidden = self._predict(self.encoder, rows)
        hidden = np.asarray(hidden, "float32")[: len(rows)]
        if self.pool == "cls":
            vectors = hidden[:, 0]
        else:
            mask = (tokens[: len(rows)] != 0).astype("float32")[:, :, None]
            vectors = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
        if self.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return vectors

    def fill_mask(self, rows, top_k):
        """For each row, for each [MASK] position: the top_k (token id, probability)."""
        _, (_, probs) = self._predict(self.mlm, rows)
        probs = np.asarray(probs, "float32")
        out = []
        for i, row in enumerate(rows):
            found = []
            for j in [j for j, t in enumerate(row) if t == self.mask_id]:
                p = probs[i, j]
                best = np.argsort(-p, kind="stable")[:top_k]
                found.append((j, [(int(t), float(p[t])) for t in best]))
            out.append(found)
        return out

    def generation_config(self, max_new_tokens, temperature, top_p, top_k, seed, penalty):
        """The GenerationConfig of an OpenAI-style request (temperature 0: greedy)."""
        sample = temperature > 0
        return GenerationConfig(
            max_new_tokens=int(max_new_tokens),
            do_sample=sample,
            temperature=float(temperature) if sample else 1.0,
            top_p=float(top_p) if sample and top_p < 1.0 else None,
            top_k=int(top_k) if sample and top_k else None,
            seed=seed,
            repetition_penalty=float(penalty),
            eos_token_id=self.eos_id,
        )

    def complete(self, prompts, config):
        """New tokens per prompt (one batched `generate`), each cut after its eos."""
        out = np.asarray(generate(self.lm, prompts, config))
        rows = []
        for row in out:
            tokens = [int(t) for t in row]
            if self.eos_id is not None and self.eos_id in tokens:
                tokens = tokens[: tokens.index(self.eos_id) + 1]
            rows.append(tokens)
        return rows

    def stream(self, prompts, config):
        """Steps of new tokens for a batch of prompts (`stream_generate`): per step a list
        with each row's token, None once a row has finished. The batch is padded to a power
        of two rows (copies of the first prompt, dropped) so few step shapes are compiled."""
        n = len(prompts)
        extra = bucket(n) - n  # a compiled step per power-of-two batch: pad with row 0
        steps = stream_generate(self.lm, list(prompts) + list(prompts[:1]) * extra, config=config)
        try:
            for step in steps:
                yield list(step)[:n]
        finally:
            steps.close()


class Detokenizer:
    """Token ids in, text pieces out: never half a character, and cut before the first stop
    string (text that could be the start of one is held back until it is not).

    >>> from kerasformers.tokenizers import Tokenizer
    >>> tok = Tokenizer({'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, '你': 3, '好': 4, '吗': 5})
    >>> d = Detokenizer(tok, eos_id=2, stop=["好吗"])
    >>> [d.push(t) for t in (3, 4, 5)], d.finish_reason
    (['你', '', ''], 'stop')
    """

    def __init__(self, tokenizer, eos_id=None, stop=(), limit=None):
        self.tokenizer, self.eos_id, self.stop = tokenizer, eos_id, list(stop or ())
        self.limit = limit
        self.tokens, self.emitted, self.finish_reason = [], "", None
        self.count = 0  # tokens consumed, the eos included (usage.completion_tokens)

    @property
    def done(self):
        return self.finish_reason is not None

    def push(self, token):
        """The new text after one more generated token ('' if none can be shown yet)."""
        if self.done:
            return ""
        self.count += token is not None
        if token is None or token == self.eos_id:
            self.finish_reason = "stop"
            return self.flush()
        self.tokens.append(int(token))
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return self._at_limit("")
        cut = [text.find(s, max(len(self.emitted) - len(s), 0)) for s in self.stop]
        cut = [c for c in cut if c >= 0]
        if cut:
            self.finish_reason = "stop"
            return self._emit(text[: min(cut)])
        safe = len(text)
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return self._at_limit(self._emit(text[:safe]))

    def _at_limit(self, piece):
        if self.limit is not None and len(self.tokens) >= self.limit and not self.done:
            self.finish_reason = "length"
            return piece + self.flush()
        return piece

    def flush(self):
        """The held-back text (at the end of the stream)."""
        text = self.tokenizer.decode(self.tokens) if self.tokens else ""
        if self.stop:
            cut = [c for c in (text.find(s) for s in self.stop) if c >= 0]
            if cut:
                text = text[: min(cut)]
        return self._emit(text)

    def _emit(self, text):
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text if len(text) > len(self.emitted) else self.emitted
        return piece
