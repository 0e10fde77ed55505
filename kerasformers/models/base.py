"""The `Transformer` base: template hooks, a name-keyed layer registry, weight tables.

A model is a thin subclass that overrides a hook or two (`get_inputs`,
`apply_embeddings`, `apply_main_layers`, `apply_final_layers`) and declares
`weight_table()`: rows `(our variable path, google key, hf key)`.

>>> from kerasformers.models.bert import BERT
>>> bert = BERT(vocab_size=50, hidden_size=16, num_hidden_layers=1,
...             num_attention_heads=2, intermediate_size=32)
>>> model = bert.build()
>>> [t.name for t in model.inputs]
['Input-Token', 'Input-Segment']
"""

import inspect
import threading

import keras
import numpy as np

from kerasformers import config as config_lib
from kerasformers.backends import torch as torch_backend
from kerasformers.checkpoints import loader
from kerasformers.layers import (
    AttentionMask,
    FeedForward,
    LayerNormalization,
    MultiHeadAttention,
)
from kerasformers.layers import linear_attention as linear_lib
from kerasformers.layers.attention import check_attention_options
from kerasformers.models import cache as cache_lib

#: the attention options every model takes, with their defaults
ATTENTION_OPTIONS = {
    "attention_type": "softmax",
    "feature_map": "elu",
    "num_random_features": None,
    "redraw_features": False,
    "attention_scale": None,
    "training_length": 512,
}


class Transformer:
    """Base class of every architecture (bert4keras' template, Keras 3 inside)."""

    #: default LayerNorm epsilon (bert4keras used the Keras default unless the model says)
    layer_norm_epsilon = 1e-7
    #: HF base-model prefixes tolerated when reading safetensors/bin keys
    hf_prefixes = ()
    #: HF `model_type` written by save_weights_as_checkpoint(..., naming='hf')
    hf_model_type = None
    #: attention-mask mode: 'padding' (encoder), 'lm' or 'unilm'
    attention_mode = "padding"
    #: applications this class may be wrapped with
    allowed_applications = ("encoder", "lm", "unilm")
    #: encoder-decoder (T5): `init_cache` takes the encoder input, not a batch size
    is_seq2seq = False

    def __new__(cls, *args, **kwargs):
        """Check every constructor argument before any `__init__` runs: unknown
        names are a TypeError with the closest valid name, bad values an error
        naming key and value (`config.check_arguments`)."""
        init = next(k.__dict__["__init__"] for k in cls.__mro__ if "__init__" in k.__dict__)
        params = [
            p.name
            for p in inspect.signature(init).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ][1:]
        arguments = {**dict(zip(params, args)), **kwargs}
        config_lib.refuse_unknown(kwargs, cls.accepted_arguments(), f"{cls.__name__}()")
        cls.check_arguments(arguments)
        return super().__new__(cls)

    @classmethod
    def accepted_arguments(cls):
        """Every keyword argument this class's constructor accepts."""
        return set(cls._defaults())

    @classmethod
    def _defaults(cls):
        """{argument: default} over the constructors of the class and its bases."""
        defaults = {}
        for klass in cls.__mro__:
            for p in inspect.signature(
                klass.__dict__.get("__init__", object.__init__)
            ).parameters.values():
                if (
                    klass is not object
                    and p.name != "self"
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                ):
                    defaults.setdefault(p.name, p.default)
        return defaults

    @classmethod
    def check_arguments(cls, arguments):
        """Check argument values (a hook: subclasses add their own rules).
        None is accepted where the constructor's default is None."""
        optional = {k for k, v in cls._defaults().items() if v is None} | {"pad_token_id"}
        attention = {k: arguments.pop(k) for k in ATTENTION_OPTIONS if k in arguments}
        config_lib.check_arguments(arguments, cls.__name__, optional)
        arguments.update(attention)
        cls.check_condition_arguments(arguments)
        cls.check_attention_arguments(arguments)
        hidden, heads = arguments.get("hidden_size"), arguments.get("num_attention_heads")
        if arguments.get("attention_head_size") is None and hidden and heads and hidden % heads:
            names = config_lib.FILE_NAMES
            raise ValueError(
                f"{cls.__name__}: hidden_size {hidden} is not divisible by num_attention_heads "
                f"{heads} (in config files: {names['hidden_size']}; "
                f"{names['num_attention_heads']}); pass attention_head_size to choose the "
                "size of each head"
            )

    #: False where the model's attention cannot be linear (a score-matrix position bias)
    supports_linear_attention = True
    #: False where the model's attention is unscaled (T5)
    supports_entropy_scale = True

    @classmethod
    def check_attention_arguments(cls, arguments):
        """attention_type / feature_map / num_random_features / redraw_features /
        attention_scale / training_length (see `MultiHeadAttention`)."""
        options = {
            **ATTENTION_OPTIONS,
            **{k: arguments[k] for k in ATTENTION_OPTIONS if k in arguments},
        }
        scale = options["attention_scale"]
        check_attention_options(
            options["attention_type"],
            options["feature_map"],
            True if scale is None else scale,
            options["training_length"],
            options["num_random_features"],
        )
        if options["attention_type"] != "softmax" and not cls.supports_linear_attention:
            raise ValueError(
                f"{cls.__name__}: attention_type={options['attention_type']!r} is not available: "
                "its relative position bias acts on the attention score matrix, which linear "
                "attention never forms"
            )
        if scale is not None and not cls.supports_entropy_scale:
            raise ValueError(
                f"{cls.__name__}: attention_scale={scale!r} is not available: the model's "
                "attention is not MultiHeadAttention's 1/sqrt(d)-scaled softmax (T5 is unscaled, "
                "GAU-alpha has its own softmax_plus)"
            )
        if options["attention_type"] != "softmax" and arguments.get("residual_attention_scores"):
            raise ValueError(
                f"{cls.__name__}: residual_attention_scores needs the attention scores, which "
                f"attention_type={options['attention_type']!r} never forms"
            )
        if not isinstance(options["redraw_features"], bool):
            raise TypeError(
                f"redraw_features must be True or False, got {options['redraw_features']!r}"
            )
        if options["feature_map"] != "elu" and options["attention_type"] != "linear":
            raise ValueError("feature_map is an option of attention_type='linear'")
        if options["attention_type"] != "performer" and (
            options["num_random_features"] is not None or options["redraw_features"]
        ):
            raise ValueError(
                "num_random_features and redraw_features are options of attention_type='performer'"
            )
        if scale is not None and scale != "entropy_invariant":
            raise ValueError(
                f"{cls.__name__}: attention_scale must be None (the model's own) or "
                f"'entropy_invariant', got {scale!r}"
            )
        if options["training_length"] != 512 and scale != "entropy_invariant":
            raise ValueError("training_length is an option of attention_scale='entropy_invariant'")

    def attention_options(self):
        """The MultiHeadAttention keywords of the attention options (none by default)."""
        options = {}
        if self.attention_type != "softmax":
            options.update(attention_type=self.attention_type, feature_map=self.feature_map)
            if self.attention_type == "performer":
                options.update(
                    num_random_features=self.num_random_features,
                    redraw_features=self.redraw_features,
                )
        if self.attention_scale is not None:
            options.update(
                attention_scale=self.attention_scale, training_length=self.training_length
            )
        return options

    #: False where the model's norms have no scale or offset for a condition to change
    supports_layer_norm_cond = True

    @classmethod
    def check_condition_arguments(cls, arguments):
        """layer_norm_cond must be a Keras tensor (a functional-API output, e.g.
        of an Embedding of a class-label Input); its options need it; extra
        inputs must be Keras tensors."""
        cond = arguments.get("layer_norm_cond")
        where = f"{cls.__name__}: layer_norm_cond"
        if cond is not None:
            if not cls.supports_layer_norm_cond:
                raise ValueError(
                    f"{where} is not available: {cls.__name__}'s norms have no scale or offset "
                    "for a condition to change (bert4keras ignored it silently)"
                )
            if not isinstance(cond, keras.KerasTensor):
                raise TypeError(
                    f"{where} must be a Keras tensor of shape (batch, size) (e.g. "
                    f"keras.layers.Embedding(...)(keras.Input((1,)))), got {type(cond).__name__}; "
                    "its inputs go into additional_input_layers"
                )
        else:
            for option in ("layer_norm_cond_hidden_size", "layer_norm_cond_hidden_act"):
                if arguments.get(option) is not None:
                    raise ValueError(f"{cls.__name__}: {option} needs layer_norm_cond")
        extra = arguments.get("additional_input_layers")
        if extra is not None:
            items = extra if isinstance(extra, (list, tuple)) else [extra]
            bad = [type(t).__name__ for t in items if not isinstance(t, keras.KerasTensor)]
            if bad:
                raise TypeError(
                    f"{cls.__name__}: additional_input_layers must be Keras inputs "
                    f"(keras.Input), got {', '.join(bad)}"
                )

    def __init__(
        self,
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        intermediate_size,
        hidden_act="gelu",
        dropout_rate=None,
        attention_dropout_rate=None,
        embedding_size=None,
        attention_head_size=None,
        attention_key_size=None,
        sequence_length=None,
        keep_tokens=None,
        compound_tokens=None,
        residual_attention_scores=False,
        ignore_invalid_weights=False,
        layer_norm_eps=None,
        pad_token_id=0,
        dtype=None,
        remat=False,
        layer_norm_cond=None,
        layer_norm_cond_hidden_size=None,
        layer_norm_cond_hidden_act=None,
        additional_input_layers=None,
        layers=None,
        prefix=None,
        name=None,
        attention_type="softmax",
        feature_map="elu",
        num_random_features=None,
        redraw_features=False,
        attention_scale=None,
        training_length=512,
    ):
        if keep_tokens is not None:
            vocab_size = len(keep_tokens)
        if compound_tokens is not None:
            vocab_size += len(compound_tokens)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = attention_head_size or hidden_size // num_attention_heads
        self.attention_key_size = attention_key_size or self.attention_head_size
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.dropout_rate = dropout_rate or 0
        self.attention_dropout_rate = attention_dropout_rate or 0
        self.embedding_size = embedding_size or hidden_size
        self.sequence_length = sequence_length
        self.keep_tokens = keep_tokens
        self.compound_tokens = compound_tokens
        self.residual_attention_scores = residual_attention_scores
        self.ignore_invalid_weights = ignore_invalid_weights
        self.layer_norm_eps = layer_norm_eps or self.layer_norm_epsilon
        self.pad_token_id = pad_token_id
        self.dtype = dtype
        self.remat = remat
        self.layer_norm_cond = layer_norm_cond
        self.layer_norm_cond_hidden_size = layer_norm_cond_hidden_size
        self.layer_norm_cond_hidden_act = layer_norm_cond_hidden_act or "linear"
        if additional_input_layers is None:
            additional_input_layers = []
        elif not isinstance(additional_input_layers, (list, tuple)):
            additional_input_layers = [additional_input_layers]
        self.additional_input_layers = list(additional_input_layers)
        self.layers = {} if layers is None else layers
        self.prefix = prefix or ""
        self.name = name
        self.attention_type = attention_type
        self.feature_map = feature_map
        self.num_random_features = num_random_features
        self.redraw_features = redraw_features
        self.attention_scale = attention_scale
        self.training_length = training_length
        self.attention_scores = None
        self.attention_bias = None
        self.position_bias = None
        self.built = False
        self.model = None
        self._step = None  # a cache_lib.Step while call_with_cache runs
        self._step_lock = threading.RLock()

    # ------------------------------------------------------------------ graph
    def build(self, **kwargs):
        """Build the functional Keras model once; returns it."""
        if self.built:
            return self.model
        inputs = self.get_inputs()
        self.inputs = inputs
        outputs = self.call(inputs)
        self.outputs = outputs
        self.model = keras.Model(self.model_inputs(inputs), outputs, name=self.name)
        self.built = True
        return self.model

    def call(self, inputs):
        x = self.apply_embeddings(inputs)
        for i in range(self.num_hidden_layers):
            x = self.apply_main_layers(x, i)
        return self.apply_final_layers(x)

    def model_inputs(self, inputs):
        """The Keras model's inputs: `inputs` and then `additional_input_layers`
        (bert4keras' `set_inputs`)."""
        return list(inputs) + self.additional_input_layers

    def apply_layer_norm(self, x, name, **kwargs):
        """The LayerNormalization named `name` on `x`; conditional on
        `layer_norm_cond` when the model has one (bert4keras' Conditional
        LayerNorm: zero-initialised `beta_dense`/`gamma_dense` of the condition,
        optionally through `hidden_dense`, are added to beta/gamma)."""
        if self.layer_norm_cond is not None:
            x = [x, self.layer_norm_cond]
            kwargs.update(
                conditional=True,
                hidden_units=self.layer_norm_cond_hidden_size,
                hidden_activation=self.layer_norm_cond_hidden_act,
                hidden_initializer=self.initializer,
            )
        return self.apply(inputs=x, layer=LayerNormalization, name=name, **kwargs)

    def prefixed(self, name):
        return None if name is None else self.prefix + name

    def apply(self, inputs=None, layer=None, arguments=None, **kwargs):
        """Create-or-reuse the layer named `kwargs['name']`, then call it on `inputs`.

        Dropout is skipped entirely when the model's dropout rate is 0.
        """
        if layer is keras.layers.Dropout and self.dropout_rate == 0:
            return inputs
        if layer is MultiHeadAttention and self.residual_attention_scores:
            kwargs["return_attention_scores"] = True
        if layer is MultiHeadAttention:
            kwargs.update(self.attention_options())
        arguments = dict(arguments or {})
        name = self.prefixed(kwargs.get("name"))
        kwargs["name"] = name
        if name not in self.layers:
            if self.dtype is not None and "dtype" not in kwargs:
                kwargs["dtype"] = self.dtype
            if self.remat and layer in (MultiHeadAttention, FeedForward):
                kwargs.setdefault("remat", True)  # gradient checkpointing per sublayer
            self.layers[name] = layer(**kwargs)
        layer = self.layers[name]
        if inputs is None:
            return layer
        residual = isinstance(layer, MultiHeadAttention) and self.residual_attention_scores
        if residual and self.attention_scores is not None:
            # RealFormer as bert4keras: each layer adds the previous layer's own scaled
            # scores (returned without the bias they received, so no running sum).
            arguments["attention_bias"] = self.attention_scores
        if self._step is not None:
            outputs = self._step.call(layer, inputs, arguments)
        else:
            outputs = layer(inputs, **arguments)
        if residual:
            outputs, self.attention_scores = outputs
        return outputs

    def get_inputs(self):
        raise NotImplementedError

    def apply_embeddings(self, inputs):
        raise NotImplementedError

    def apply_main_layers(self, inputs, index):
        raise NotImplementedError

    def apply_final_layers(self, inputs):
        raise NotImplementedError

    def compute_attention_bias(self, inputs=None):
        """Boolean attention mask from the token (and segment) ids, built once."""
        if self._step is not None:
            return self._step.attention_mask
        if self.attention_bias is None:
            names = {
                "padding": "Attention-Mask",
                "lm": "Attention-LM-Mask",
                "unilm": "Attention-UniLM-Mask",
            }
            ids = self.inputs[:2] if self.attention_mode == "unilm" else self.inputs[0]
            self.attention_bias = self.apply(
                inputs=ids,
                layer=AttentionMask,
                mode=self.attention_mode,
                pad_token_id=self.pad_token_id,
                key_sets=self.attention_type != "softmax",
                name=names[self.attention_mode],
            )
        return self.attention_bias

    def compute_position_bias(self, inputs=None):
        return None

    # ------------------------------------------------------- incremental decoding
    #: the self-attention mask of a cached step: 'lm' or 'unilm' (None: not causal)
    @property
    def step_attention_mode(self):
        return self.attention_mode if self.attention_mode in ("lm", "unilm") else None

    def cached_attention_shapes(self):
        """(heads, key_size, head_size) of each self-attention call, in call order."""
        shape = (self.num_attention_heads, self.attention_key_size, self.attention_head_size)
        return [shape] * self.num_hidden_layers

    def init_cache(self, batch_size, max_length, dtype=None):
        """An empty key/value cache for `max_length` positions (see `call_with_cache`).

        Every model decodes as `cache = init_cache(first, max_length)`, then
        `call_with_cache(new_tokens, cache)` repeatedly. `first` is the batch size
        for decoder-only models, and the encoder token ids [b, n] (encoded once,
        here) when `is_seq2seq` is True (`T5.init_cache`). `T5_Decoder` alone,
        having no encoder, takes the encoder states instead.
        """
        self._check_incremental()
        dtype = dtype or cache_lib.compute_dtype_of(self.layers)
        states = None
        if self.attention_type != "softmax":  # a constant-size recurrent state per layer
            states = [
                linear_lib.empty_state(
                    batch_size, heads, self.feature_count(key_size), head_size, self.feature_map
                )
                for heads, key_size, head_size in self.cached_attention_shapes()
            ]
        return cache_lib.empty_cache(
            batch_size,
            max_length,
            self.cached_attention_shapes(),
            dtype,
            unilm=self.step_attention_mode == "unilm",
            states=states,
        )

    def feature_count(self, key_size):
        """The features per head of linear attention (its recurrent state's rows)."""
        if self.attention_type == "performer":
            return self.num_random_features or 2 * key_size
        return key_size

    #: layers whose activation `call_with_cache(logits=True)` skips (the LM heads)
    logit_layer_names = (
        "MLM-Activation",
        "LM-Activation",
        "Output-MLM-Activation",
        "Decoder-Output-LM-Activation",
        "Decoder-Output-LM",
    )

    def call_with_cache(self, inputs, cache, mask=None, logits=False, inplace=False, plan=None):
        """Run the model on new tokens only, attending to everything cached.

        inputs: the model's inputs for the new positions (token ids, plus segment
            ids / position ids where the model takes them), [batch, new_length];
            any number of new positions per call (e.g. the whole UniLM source
            once, then one target token at a time).
        mask: [batch, new_length], 1 = real token, 0 = padding (default: tokens
            equal to pad_token_id are padding); padded keys are never attended.
        logits: return the LM head's logits instead of its probabilities.
        inplace: torch only, write the new keys/values into the given cache's
            buffers instead of copies (the given cache is then updated too);
            generation uses it to avoid copying the whole cache every step.
        plan: torch only, a `kerasformers.backends.torch.Plan` to reuse over many steps (the
            layers' torch kernels prepared once; generation makes one per call);
            by default each call prepares its own.
        Returns (outputs for the new positions, updated cache). Outputs equal the
        uncached model's at those positions. Thread-safe (calls are serialised).

        >>> import numpy as np
        >>> from kerasformers import build_transformer_model
        >>> gpt = build_transformer_model(None, model="gpt2", vocab_size=50, hidden_size=16,
        ...                               num_hidden_layers=1, num_attention_heads=2,
        ...                               intermediate_size=32, return_keras_model=False)
        >>> cache = gpt.init_cache(batch_size=1, max_length=8)
        >>> probs, cache = gpt.call_with_cache(np.array([[5, 6, 7]]), cache)
        >>> probs, cache = gpt.call_with_cache(np.array([[8]]), cache)
        >>> tuple(probs.shape), int(cache["index"])
        ((1, 1, 50), 4)
        """
        self._check_incremental()
        inputs = self.step_inputs(cache_lib.as_int_inputs(inputs), cache)
        with self._step_lock:
            step = cache_lib.Step(
                inputs[self.step_token_input :],
                cache,
                self.step_attention_mode,
                self.step_pad_token_id,
                mask=mask,
                key_sets=self.attention_type != "softmax",
                logit_layers=[self.prefixed(n) for n in self.logit_layer_names] if logits else (),
                plan=plan
                if plan is not None or not torch_backend.available()
                else torch_backend.Plan(),
                inplace=inplace,
            )
            saved = (self.inputs, self.attention_bias, self.position_bias, self.attention_scores)
            self._step = step
            self.inputs = inputs
            self.attention_bias = self.position_bias = self.attention_scores = None
            try:
                outputs = self.call(inputs)
            finally:
                self._step = None
                (self.inputs, self.attention_bias, self.position_bias, self.attention_scores) = (
                    saved
                )
        return outputs, step.updated_cache(inputs[self.step_token_input].shape[1])

    #: index of the token ids among the step inputs
    step_token_input = 0

    @property
    def step_pad_token_id(self):
        return self.pad_token_id

    def step_inputs(self, inputs, cache):
        """The inputs `call` takes in a step (a hook: T5's decoder adds its context)."""
        return inputs

    def _check_incremental(self):
        self._refuse_conditional_cache()
        if self.step_attention_mode is None:
            raise ValueError(
                f"{type(self).__name__} is not causal: incremental decoding "
                "needs application='lm' or 'unilm' (or a decoder model)"
            )
        if not self.built:
            self.build()

    def _refuse_conditional_cache(self):
        if self.layer_norm_cond is not None:
            raise ValueError(
                f"{type(self).__name__} has a conditional LayerNorm (layer_norm_cond): cached "
                "decoding (init_cache / call_with_cache / generate) does not feed the "
                "condition; decode with the full model instead (AutoRegressiveDecoder with "
                "model.predict, as bert4keras' task_conditional_language_model.py does)"
            )

    reorder_cache = staticmethod(cache_lib.reorder_cache)

    @property
    def initializer(self):
        return keras.initializers.TruncatedNormal(stddev=0.02)

    # ---------------------------------------------------------------- weights
    def weight_table(self):
        """Rows (our variable path, google key, hf key); see checkpoints.loader."""
        raise NotImplementedError

    def vocab_paths(self):
        """Variable paths whose first axis is the vocabulary (keep/compound tokens)."""
        return {self.prefixed("Embedding-Token/embeddings")}

    def variables(self):
        return {v.path: v for v in self.model.weights}

    def load_embeddings(self, embeddings):
        """Apply keep_tokens and compound_tokens to a vocabulary-first array."""
        if self.keep_tokens is not None:
            embeddings = embeddings[np.asarray(self.keep_tokens)]
        if self.compound_tokens is not None:
            rows = []
            for item in self.compound_tokens:
                if (
                    isinstance(item, (list, tuple))
                    and len(item) == 2
                    and isinstance(item[0], (list, tuple))
                ):
                    ids, weights = item
                else:
                    ids, weights = item, [1.0] * len(item)
                weights = np.asarray(weights, dtype="float64")
                weights = weights / weights.sum()
                rows.append(np.einsum("n,n...->...", weights, embeddings[np.asarray(ids)]))
            embeddings = np.concatenate(
                [embeddings, np.asarray(rows, dtype=embeddings.dtype)], axis=0
            )
        return embeddings

    def load_weights_from_checkpoint(self, checkpoint, naming=None):
        """Load a checkpoint (TF prefix, safetensors, .bin, directory or dict).

        Matching is by name through `weight_table()`; every problem is reported
        at once (CheckpointError) and nothing is assigned unless all fit.
        Returns a LoadReport.
        """
        if not self.built:
            self.build()
        return loader.load_weights(
            self.variables(),
            self.weight_table(),
            checkpoint,
            naming=naming,
            prefixes=self.hf_prefixes,
            vocab_fn=self.load_embeddings,
            vocab_paths=self.vocab_paths(),
            ignore_invalid_weights=self.ignore_invalid_weights,
        )

    def export_weights(self, naming="google"):
        """{checkpoint key: array} in the original ('google') or HF ('hf') names."""
        return loader.export_weights(self.variables(), self.weight_table(), naming)

    def save_weights_as_checkpoint(self, path, naming="google", dtype=None):
        """Write the weights as a Google TF checkpoint (naming='google', `path` is
        the prefix, e.g. 'out/bert_model.ckpt') or as HF safetensors
        (naming='hf', `path` is a directory: model.safetensors + config.json).
        """
        from kerasformers.checkpoints import writers

        tensors = self.export_weights(naming)
        if dtype is not None:
            tensors = {k: v.astype(dtype) for k, v in tensors.items()}
        if naming == "google":
            return writers.save_google_checkpoint(path, tensors)
        if naming == "hf":
            return writers.save_hf_directory(path, tensors, self.hf_config())
        raise ValueError(f"naming must be 'google' or 'hf', got {naming!r}")

    def hf_config(self):
        """An HF `config.json` dict describing this model (for save, naming='hf')."""
        raise NotImplementedError(f"{type(self).__name__} has no HF config mapping")
