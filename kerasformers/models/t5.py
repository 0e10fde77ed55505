"""Google T5 (t5.1.0), T5.1.1 and mT5: encoder, decoder and the joint seq2seq model.

Versions (`version=`): 't5.1.0' (ReLU FFN, LM head tied to the shared
embedding), 't5.1.1' (gated-GELU FFN `hidden_act=['gelu', 'linear']`, separate
`Decoder-Output-LM`) and 'mt5.1.1' (t5.1.1 whose Mesh TF checkpoint names its
norms `rms_norm`). Everything is pre-norm with RMSNorm (scale only, eps 1e-6);
attention has no biases and no 1/sqrt(d) scaling; positions come from T5's
bucketed relative bias, computed once per stack (`*-Embedding-Relative-Position`).

>>> from kerasformers import build_transformer_model
>>> t5 = build_transformer_model(None, model="t5.1.1", vocab_size=50, hidden_size=16,
...                              num_hidden_layers=1, num_attention_heads=2,
...                              intermediate_size=32, return_keras_model=False)
>>> [t.name for t in t5.model.inputs], t5.model.output_shape
(['Encoder-Input-Token', 'Decoder-Input-Token'], (None, None, 50))
>>> [t.name for t in t5.decoder.inputs]
['Input-Context', 'Decoder-Input-Token']
"""

import keras
from keras import ops

from kerasformers import config as config_lib
from kerasformers.checkpoints import loader
from kerasformers.checkpoints.loader import Key, T, VocabColumns
from kerasformers.checkpoints.sources import AliasedSource, open_checkpoint
from kerasformers.layers import (
    AttentionMask,
    Embedding,
    FeedForward,
    MultiHeadAttention,
    RelativePositionEmbeddingT5,
    ScaleOffset,
)
from kerasformers.models.base import Transformer

VERSIONS = ("t5.1.0", "t5.1.1", "mt5.1.1")


def _t5_activation(act):
    """'gelu' in a T5 config means the tanh approximation (Mesh TF's gelu, HF's gelu_new)."""
    if isinstance(act, (list, tuple)):
        return [_t5_activation(a) for a in act]
    return "gelu_tanh" if act == "gelu" else act


class T5_Base(Transformer):
    """Shared parts of the T5 family (bert4keras' `T5_Base`).

    version: 't5.1.0' | 't5.1.1' | 'mt5.1.1' (naming and defaults, see the module doc).
    hidden_act: default 'relu' (t5.1.0) or ['gelu', 'linear'] (t5.1.1, mT5); a
        plain 'gelu' is read as the tanh approximation, which is what Mesh TF and
        transformers ('gated-gelu' = gelu_new) compute; pass 'gelu_erf' for erf.
    tie_word_embeddings: the LM head is the transposed shared embedding and the
        decoder output is first scaled by hidden_size**-0.5 (default: only for
        t5.1.0). Untied (t5.1.1, mT5): a separate `Decoder-Output-LM`, no scaling
        (bert4keras scaled every version: T5_Decoder's scale_decoder_outputs).
    relative_attention_num_buckets (32), relative_attention_max_distance (128).
    num_decoder_layers: decoder depth (default num_hidden_layers).
    max_position: accepted, so that one dict of arguments builds every model,
        and not used: T5's relative positions have no length limit.
    Token id 0 (`pad_token_id`) is padding in the encoder and the start token of
    the decoder.
    """

    #: a relative position bias on the score matrix
    supports_linear_attention = False
    supports_entropy_scale = False

    layer_norm_epsilon = 1e-6
    hf_prefixes = ()
    hf_model_type = "t5"
    allowed_applications = ("encoder",)

    @classmethod
    def check_arguments(cls, arguments):
        """As Transformer's, and the relative-position buckets must make sense:
        each direction needs an exact bucket (num_buckets >= 4), and the
        log-spaced buckets need max_distance beyond the exact ones."""
        super().check_arguments(arguments)
        buckets = arguments.get("relative_attention_num_buckets", 32)
        distance = arguments.get("relative_attention_max_distance", 128)
        if buckets < 4 or distance <= buckets // 2:
            raise ValueError(
                f"{cls.__name__}: relative_attention_num_buckets {buckets} must be >= 4 and "
                f"relative_attention_max_distance {distance} greater than half of it "
                "(T5 uses 32 and 128)"
            )

    def __init__(
        self,
        version="t5.1.0",
        hidden_act=None,
        tie_word_embeddings=None,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        num_decoder_layers=None,
        max_position=None,
        **kwargs,
    ):
        version = (version or "t5.1.0").lower()
        if version not in VERSIONS:
            raise ValueError(f"Unknown T5 version {version!r}; use one of {', '.join(VERSIONS)}")
        if hidden_act is None:
            hidden_act = "relu" if version == "t5.1.0" else ["gelu", "linear"]
        super().__init__(hidden_act=_t5_activation(hidden_act), **kwargs)
        self.version = version
        self.tie_word_embeddings = (
            version == "t5.1.0" if tie_word_embeddings is None else bool(tie_word_embeddings)
        )
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.num_encoder_layers = self.num_hidden_layers
        self.num_decoder_layers = num_decoder_layers or self.num_hidden_layers

    @property
    def gated(self):
        return isinstance(self.hidden_act, (list, tuple)) and len(self.hidden_act) > 1

    # ------------------------------------------------------------- pieces
    def apply_token_embedding(self, x, stack):
        x = self.apply(
            inputs=x,
            layer=Embedding,
            input_dim=self.vocab_size,
            output_dim=self.embedding_size,
            embeddings_initializer=self.initializer,
            mask_zero=True,
            pad_token_id=self.pad_token_id,
            first_token_valid=True,
            name="Embedding-Token",
        )
        x = self.apply(
            inputs=x,
            layer=keras.layers.Dropout,
            rate=self.dropout_rate,
            name=f"{stack}-Embedding-Dropout",
        )
        if self.embedding_size != self.hidden_size:
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.hidden_size,
                kernel_initializer=self.initializer,
                name=f"{stack}-Embedding-Mapping",
            )
        return x

    def apply_norm(self, x, name):
        return self.apply_layer_norm(
            x, name, zero_mean=False, offset=False, epsilon=self.layer_norm_eps
        )

    def apply_attention(self, inputs, name, arguments):
        return self.apply(
            inputs=inputs,
            layer=MultiHeadAttention,
            arguments=arguments,
            heads=self.num_attention_heads,
            head_size=self.attention_head_size,
            out_dim=self.hidden_size,
            key_size=self.attention_key_size,
            use_bias=False,
            attention_scale=False,
            attention_dropout=self.attention_dropout_rate,
            kernel_initializer=self.initializer,
            name=name,
        )

    def residual(self, xi, x, name):
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name=f"{name}-Dropout"
        )
        return self.apply(inputs=[xi, x], layer=keras.layers.Add, name=f"{name}-Add")

    def apply_feed_forward(self, x, name):
        xi = x
        x = self.apply_norm(x, f"{name}-Norm")
        x = self.apply(
            inputs=x,
            layer=FeedForward,
            units=self.intermediate_size,
            activation=self.hidden_act,
            use_bias=False,
            kernel_initializer=self.initializer,
            name=name,
        )
        return self.residual(xi, x, name)

    def apply_relative_position(self, inputs, name, bidirectional):
        return self.apply(
            inputs=inputs,
            layer=RelativePositionEmbeddingT5,
            input_dim=self.relative_attention_num_buckets,
            output_dim=self.num_attention_heads,
            max_distance=self.relative_attention_max_distance,
            bidirectional=bidirectional,
            embeddings_initializer=self.initializer,
            name=name,
        )

    # ------------------------------------------------------------- weights
    @property
    def norm_name(self):
        return "rms_norm" if self.version == "mt5.1.1" else "layer_norm"

    def _attention_rows(self, layer, google, hf):
        return [
            (f"{self.prefixed(layer)}/{n}_dense/kernel", f"{google}/{n}", T(f"{hf}.{n}.weight"))
            for n in "qkvo"
        ]

    def _norm_row(self, layer, google, hf):
        return (f"{self.prefixed(layer)}/gamma", f"{google}/scale", f"{hf}.weight")

    def _block_rows(self, stack, i, sublayers):
        """Rows of block i; sublayers: [(our name, mesh layer name, hf layer name)]."""
        s = stack.lower()
        g, h = f"{s}/block_{i:03d}", f"{s}.block.{i}"
        rows = []
        for j, (ours, mesh, torch_name) in enumerate(sublayers):
            gj, hj = f"{g}/layer_{j:03d}", f"{h}.layer.{j}"
            name = f"{stack}-Transformer-{i}-{ours}"
            rows.append(
                self._norm_row(f"{name}-Norm", f"{gj}/{self.norm_name}", f"{hj}.layer_norm")
            )
            if ours == "FeedForward":
                p = self.prefixed(name)
                wi = (
                    [("i0_dense", "wi_0"), ("i1_dense", "wi_1")]
                    if self.gated
                    else [("i0_dense", "wi")]
                )
                for ours_w, w in wi + [("o_dense", "wo")]:
                    rows.append(
                        (
                            f"{p}/{ours_w}/kernel",
                            f"{gj}/{mesh}/{w}/kernel",
                            T(f"{hj}.{torch_name}.{w}.weight"),
                        )
                    )
            else:
                rows += self._attention_rows(name, f"{gj}/{mesh}", f"{hj}.{torch_name}")
        return rows

    def _final_norm_row(self, stack):
        s = stack.lower()
        google = f"{s}/rms_norm" if self.version == "mt5.1.1" else f"{s}/final_layer_norm"
        return self._norm_row(f"{stack}-Output-Norm", google, f"{s}.final_layer_norm")

    def _relative_row(self, stack):
        s = stack.lower()
        return (
            f"{self.prefixed(stack + '-Embedding-Relative-Position')}/embeddings",
            T(f"{s}/block_000/layer_000/SelfAttention/relative_attention_bias"),
            f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )

    def shared_rows(self):
        return [
            (self.prefixed("Embedding-Token/embeddings"), "shared/embedding", "shared.weight"),
            # transformers' tied copies of the shared embedding: read silently, never written
            ("(tied) encoder.embed_tokens", None, "encoder.embed_tokens.weight"),
            ("(tied) decoder.embed_tokens", None, "decoder.embed_tokens.weight"),
        ]

    def encoder_rows(self):
        rows = [self._relative_row("Encoder")]
        for i in range(self.num_encoder_layers):
            rows += self._block_rows(
                "Encoder",
                i,
                [
                    ("MultiHeadSelfAttention", "SelfAttention", "SelfAttention"),
                    ("FeedForward", "DenseReluDense", "DenseReluDense"),
                ],
            )
        return rows + [self._final_norm_row("Encoder")]

    def decoder_rows(self):
        rows = [self._relative_row("Decoder")]
        for i in range(self.num_decoder_layers):
            rows += self._block_rows(
                "Decoder",
                i,
                [
                    ("MultiHeadSelfAttention", "SelfAttention", "SelfAttention"),
                    ("MultiHeadCrossAttention", "EncDecAttention", "EncDecAttention"),
                    ("FeedForward", "DenseReluDense", "DenseReluDense"),
                ],
            )
        rows.append(self._final_norm_row("Decoder"))
        lm_google, lm_hf = Key("decoder/logits/kernel"), T("lm_head.weight")
        if self.keep_tokens is not None or self.compound_tokens is not None:
            lm_google = VocabColumns(lm_google.name, vocab_fn=self.load_embeddings)
            lm_hf = VocabColumns(lm_hf.name, "transpose", vocab_fn=self.load_embeddings)
        if self.tie_word_embeddings:
            rows.append(("(tied) lm_head", None, "lm_head.weight"))
        else:
            rows.append((self.prefixed("Decoder-Output-LM/kernel"), lm_google, lm_hf))
        # Old transformers checkpoints may hold a cross-attention bias nobody uses.
        rows.append(
            (
                "(unused) cross-attention bias",
                None,
                "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
            )
        )
        return rows

    def weight_table(self):
        """Every T5 row: an encoder or decoder alone skips (silently) the other
        half's tensors of a full checkpoint, and exports only its own."""
        return self.shared_rows() + self.encoder_rows() + self.decoder_rows()

    def load_weights_from_checkpoint(self, checkpoint, naming=None):
        """As Transformer's; an untied model also reads a transformers checkpoint
        that stores no `lm_head.weight` (transformers 5 ties it to `shared.weight`
        unless the two differ), taking the shared embedding as its LM head."""
        if not self.built:
            self.build()
        source = open_checkpoint(checkpoint)
        needs_head = self.prefixed("Decoder-Output-LM/kernel") in self.variables()
        if (
            needs_head
            and (naming or source.naming) == "hf"
            and loader.resolve(source, "lm_head.weight") is None
            and loader.resolve(source, "shared.weight") is not None
        ):
            source = AliasedSource(source, {"lm_head.weight": "shared.weight"})
        return super().load_weights_from_checkpoint(source, naming=naming)

    def hf_architecture(self, mt5):
        return "MT5ForConditionalGeneration" if mt5 else "T5ForConditionalGeneration"

    def hf_config(self):
        """transformers' config.json for this model (read and written in kerasformers.config)."""
        return config_lib.write_t5(self)


class T5_Encoder(T5_Base):
    """T5 encoder: `Encoder-Input-Token` -> `Encoder-Output-Norm` states.

    Padding (token id 0) is hidden from self-attention (`Attention-Mask`).
    """

    def build(self, **kwargs):
        """As Transformer.build, with the single input not wrapped in a list."""
        if not self.built:
            self.inputs = self.get_inputs()
            self.outputs = self.call(self.inputs)
            inputs = self.model_inputs(self.inputs)
            inputs = inputs[0] if len(inputs) == 1 else inputs
            self.model = keras.Model(inputs, self.outputs, name=self.name)
            self.built = True
        return self.model

    def get_inputs(self):
        return [
            keras.Input(
                shape=(self.sequence_length,),
                dtype="int32",
                name=self.prefixed("Encoder-Input-Token"),
            )
        ]

    def apply_embeddings(self, inputs):
        return self.apply_token_embedding(inputs[0], "Encoder")

    def apply_main_layers(self, inputs, index):
        """LN -> self-attention -> Add -> LN -> FFN -> Add."""
        x = inputs
        name = f"Encoder-Transformer-{index}-MultiHeadSelfAttention"
        position_bias = self.compute_position_bias(x)
        xi = x
        x = self.apply_norm(x, f"{name}-Norm")
        x = self.apply_attention(
            [x, x, x],
            name,
            {
                "attention_mask": self.compute_attention_bias(),
                "position_bias": position_bias,
                "p_bias": "t5_relative",
            },
        )
        x = self.residual(xi, x, name)
        return self.apply_feed_forward(x, f"Encoder-Transformer-{index}-FeedForward")

    def apply_final_layers(self, inputs):
        x = self.apply_norm(inputs, "Encoder-Output-Norm")
        return self.apply(
            inputs=x,
            layer=keras.layers.Dropout,
            rate=self.dropout_rate,
            name="Encoder-Output-Dropout",
        )

    def compute_position_bias(self, inputs=None):
        if self.position_bias is None:
            self.position_bias = self.apply_relative_position(
                [inputs, inputs], "Encoder-Embedding-Relative-Position", bidirectional=True
            )
        return self.position_bias

    def hf_architecture(self, mt5):
        return "MT5EncoderModel" if mt5 else "T5EncoderModel"


class T5_Decoder(T5_Base):
    """T5 decoder: inputs [`Input-Context` (encoder states), `Decoder-Input-Token`].

    with_lm: True (softmax probabilities), an activation ('linear' = logits), or
        False (the decoder states after `Decoder-Output-Norm`, unscaled unless
        scale_decoder_outputs=True).
        `final_activation`, if given, is taken as the LM activation (GPT spelling).
    cross_position_bias: False (default) = no position bias in cross-attention,
        as in transformers' T5, which reproduces the released checkpoints.
        bert4keras (<= 0.11.5) defaulted to True: cross-attention also added the
        decoder's unidirectional relative bias (`Decoder-Embedding-Relative-Position`
        on decoder x encoder positions). Keep True only for models trained that way.
    context_mask: add a third input `Input-Context-Mask` ([batch, context_len],
        1 = real, 0 = padding) hiding padded encoder positions from
        cross-attention. Without it (the original's inputs) every context
        position is attended, which is right for unpadded contexts only. The
        joint `T5` model always masks by the encoder token ids.
    scale_decoder_outputs: multiply the decoder output by hidden_size**-0.5
        (`Decoder-Output-Scale`, after `Decoder-Output-Dropout`).
        None (default, as Mesh TF and transformers): only before a tied head
        (t5.1.0, or tie_word_embeddings=True); untied heads (t5.1.1, mT5) and
        with_lm=False are unscaled.
        True (bert4keras <= 0.11.5, every version): always, also before an
        untied `Decoder-Output-LM` and for with_lm=False. Use it to rebuild
        models trained with bert4keras (T5-PEGASUS, its mT5 fine-tunes), whose
        LM head learned the scaled states; with cross_position_bias=True the
        decoder then equals the original's.
        False: never (not even before a tied head).
    Self-attention is causal only: the first decoder token is the start token,
    id 0 = pad, and trailing padding cannot reach earlier positions. The Keras
    mask of the output marks position 0 and the non-pad tokens (loss masking).
    """

    def __init__(
        self,
        with_lm=True,
        final_activation=None,
        cross_position_bias=False,
        context_mask=False,
        scale_decoder_outputs=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.scale_decoder_outputs = (
            bool(with_lm) and self.tie_word_embeddings
            if scale_decoder_outputs is None
            else bool(scale_decoder_outputs)
        )
        if final_activation is not None and with_lm is True:
            with_lm = final_activation
        self.with_lm = with_lm
        self.cross_position_bias = cross_position_bias
        self.context_mask = context_mask
        self.num_hidden_layers = self.num_decoder_layers
        self.context_attention_mask = None  # set by T5 for the joint model

    def get_inputs(self):
        inputs = [
            keras.Input(
                shape=(self.sequence_length, self.hidden_size), name=self.prefixed("Input-Context")
            ),
            keras.Input(
                shape=(self.sequence_length,),
                dtype="int32",
                name=self.prefixed("Decoder-Input-Token"),
            ),
        ]
        if self.context_mask:
            inputs.append(
                keras.Input(
                    shape=(self.sequence_length,),
                    dtype="int32",
                    name=self.prefixed("Input-Context-Mask"),
                )
            )
        return inputs

    def apply_embeddings(self, inputs):
        c, x = inputs[:2]
        return [c, self.apply_token_embedding(x, "Decoder")]

    def apply_main_layers(self, inputs, index):
        """LN -> self-attention -> Add -> LN -> cross-attention -> Add -> LN -> FFN -> Add."""
        c, x = inputs
        self_name = f"Decoder-Transformer-{index}-MultiHeadSelfAttention"
        cross_name = f"Decoder-Transformer-{index}-MultiHeadCrossAttention"
        self_bias, cross_bias = self.compute_position_bias([x, c])

        xi = x
        x = self.apply_norm(x, f"{self_name}-Norm")
        x = self.apply_attention(
            [x, x, x],
            self_name,
            {
                "attention_mask": self.compute_attention_bias(),
                "position_bias": self_bias,
                "p_bias": "t5_relative",
            },
        )
        x = self.residual(xi, x, self_name)

        xi = x
        x = self.apply_norm(x, f"{cross_name}-Norm")
        arguments = {"attention_mask": self.compute_context_mask()}
        if self.cross_position_bias:
            arguments.update(position_bias=cross_bias, p_bias="t5_relative")
        x = self.apply_attention([x, c, c], cross_name, arguments)
        x = self.residual(xi, x, cross_name)

        x = self.apply_feed_forward(x, f"Decoder-Transformer-{index}-FeedForward")
        return [c, x]

    def apply_final_layers(self, inputs):
        c, x = inputs
        x = self.apply_norm(x, "Decoder-Output-Norm")
        x = self.apply(
            inputs=x,
            layer=keras.layers.Dropout,
            rate=self.dropout_rate,
            name="Decoder-Output-Dropout",
        )
        if self.scale_decoder_outputs:
            x = self.apply(
                inputs=x,
                layer=ScaleOffset,
                scale=self.hidden_size**-0.5,
                offset=False,
                name="Decoder-Output-Scale",
            )
        if not self.with_lm:
            return x
        lm_activation = "softmax" if self.with_lm is True else self.with_lm
        if self.embedding_size != self.hidden_size:
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.embedding_size,
                kernel_initializer=self.initializer,
                name="Decoder-Output-Mapping",
            )
        if self.tie_word_embeddings:
            x = self.apply(
                inputs=x, layer=Embedding, arguments={"mode": "dense"}, name="Embedding-Token"
            )
            return self.apply(
                inputs=x,
                layer=keras.layers.Activation,
                activation=lm_activation,
                name="Decoder-Output-LM-Activation",
            )
        return self.apply(
            inputs=x,
            layer=keras.layers.Dense,
            units=self.vocab_size,
            activation=lm_activation,
            use_bias=False,
            kernel_initializer=self.initializer,
            name="Decoder-Output-LM",
        )

    def compute_attention_bias(self, inputs=None):
        """Causal mask from the decoder tokens (no padding mask: token 0 starts)."""
        if self._step is not None:
            return self._step.attention_mask
        if self.attention_bias is None:
            self.attention_bias = self.apply(
                inputs=self.inputs[1],
                layer=AttentionMask,
                mode="lm",
                pad_token_id=None,
                name="Attention-LM-Mask",
            )
        return self.attention_bias

    def compute_context_mask(self):
        """Cross-attention mask [batch, 1, 1, context_len], or None (attend everything)."""
        if self._step is not None:
            return self._step.context_mask
        if self.context_attention_mask is None and self.context_mask:
            self.context_attention_mask = self.apply(
                inputs=self.inputs[2],
                layer=AttentionMask,
                mode="padding",
                pad_token_id=0,
                name="Context-Attention-Mask",
            )
        return self.context_attention_mask

    def compute_position_bias(self, inputs=None):
        """(self-attention bias, cross-attention bias or None), from one shared layer."""
        if self.position_bias is None:
            x, c = inputs
            name = "Decoder-Embedding-Relative-Position"
            self_bias = self.apply_relative_position([x, x], name, bidirectional=False)
            cross_bias = None
            if self.cross_position_bias:
                cross_bias = self.apply_relative_position([x, c], name, bidirectional=False)
            self.position_bias = (self_bias, cross_bias)
        return self.position_bias

    # ------------------------------------------------------- incremental decoding
    step_attention_mode = "lm"
    step_pad_token_id = None
    step_token_input = 1

    def cached_attention_shapes(self):
        shape = (self.num_attention_heads, self.attention_key_size, self.attention_head_size)
        return [shape] * self.num_decoder_layers

    def cross_attention_key_values(self, context):
        """The cross-attention keys and values of every decoder layer for the encoder
        states `context` [b, n, hidden]: a tuple, one `(k [b, n, heads, key_size],
        v [b, n, heads, head_size])` per layer, in the layer's compute dtype. They
        depend on the context only, so a cache projects them once (`cache["cross"]`).

        >>> import numpy as np
        >>> from kerasformers import build_transformer_model
        >>> decoder = build_transformer_model(None, model="t5.1.1_decoder", vocab_size=50,
        ...                                   hidden_size=16, num_hidden_layers=2,
        ...                                   num_attention_heads=2, intermediate_size=32,
        ...                                   return_keras_model=False)
        >>> _ = decoder.build()
        >>> kv = decoder.cross_attention_key_values(np.ones((1, 4, 16), "float32"))
        >>> len(kv), tuple(kv[0][0].shape), tuple(kv[0][1].shape)
        (2, (1, 4, 2, 8), (1, 4, 2, 8))
        """
        context = ops.convert_to_tensor(context)
        cross = []
        for i in range(self.num_decoder_layers):
            layer = self.layers[self.prefixed(f"Decoder-Transformer-{i}-MultiHeadCrossAttention")]
            cross.append(layer.project_key_value(ops.cast(context, layer.compute_dtype)))
        return tuple(cross)

    def init_cache(self, context, max_length, context_mask=None, dtype=None):
        """A cache for decoding against `context` (encoder states [b, n, hidden]).

        The decoder alone starts from encoder states; the joint `T5` starts from
        encoder token ids (`T5.init_cache`). The cross-attention keys/values are
        projected once, here (`cross_attention_key_values`). context_mask: [b, n]
        (1 = real, 0 = padding) or None (every position is real).
        """
        self._check_incremental()
        context = ops.convert_to_tensor(context)
        batch_size, context_length = context.shape[0], context.shape[1]
        cache = super().init_cache(batch_size, max_length, dtype=dtype)
        cache["cross"] = self.cross_attention_key_values(context)
        if context_mask is None:
            context_mask = ops.ones((batch_size, context_length), dtype="bool")
        cache["context_mask"] = ops.cast(context_mask, "bool")[:, None, None, :]
        return cache

    def step_inputs(self, inputs, cache):
        """[context stand-in, decoder token ids]: the context is read from the cache,
        the stand-in only carries its length (for the cross position bias)."""
        token_ids = inputs[0]
        length = cache["context_mask"].shape[-1]
        return [ops.zeros((ops.shape(token_ids)[0], length, 1)), token_ids]


#: T5_Decoder's own arguments, which the joint T5 passes to its decoder only
_DECODER_OPTIONS = (
    "with_lm",
    "final_activation",
    "cross_position_bias",
    "context_mask",
    "scale_decoder_outputs",
)


class T5(T5_Base):
    """Encoder + decoder sharing `Embedding-Token` (and every layer, by name).

    `.encoder` (ids -> states) and `.decoder` ([states, decoder ids] -> LM) are
    Keras models, built from the `.encoder_transformer` (a T5_Encoder) and
    `.decoder_transformer` (a T5_Decoder) objects; `.model` maps [encoder ids,
    decoder ids] to the LM output, with encoder padding hidden from self- and
    cross-attention. Decoder options (with_lm, final_activation,
    cross_position_bias, context_mask, scale_decoder_outputs) as T5_Decoder.

    Seq2seq (`is_seq2seq = True`): `init_cache(encoder_token_ids, max_length)`
    encodes once, then `call_with_cache(decoder_token_ids, cache)` decodes.
    """

    is_seq2seq = True

    @classmethod
    def _defaults(cls):
        """The shared arguments plus the decoder's own (with_lm, ...)."""
        return {**T5_Decoder._defaults(), **super()._defaults()}

    def __init__(self, **kwargs):
        decoder_options = {k: kwargs.pop(k) for k in _DECODER_OPTIONS if k in kwargs}
        super().__init__(**kwargs)
        kwargs["layers"] = self.layers
        e_name, d_name = "Encoder", "Decoder"
        name = kwargs.pop("name", None)
        if name is not None:
            e_name, d_name = f"{name}_{e_name}", f"{name}_{d_name}"
        self.encoder_transformer = T5_Encoder(name=e_name, **kwargs)
        self.decoder_transformer = T5_Decoder(name=d_name, **kwargs, **decoder_options)
        self.with_lm = self.decoder_transformer.with_lm
        self.cross_position_bias = self.decoder_transformer.cross_position_bias
        self.scale_decoder_outputs = self.decoder_transformer.scale_decoder_outputs
        self.encoder = self.decoder = None

    def build(self, **kwargs):
        if self.built:
            return self.model
        self.encoder = self.encoder_transformer.build()
        self.decoder = self.decoder_transformer.build()
        decoder = self.decoder_transformer
        token = decoder.inputs[1]
        decoder.position_bias = decoder.attention_bias = None  # rebuilt on the joint graph
        saved = decoder.context_attention_mask
        decoder.context_attention_mask = self.encoder_transformer.compute_attention_bias()
        try:
            self.outputs = decoder.call([self.encoder.outputs[0], token])
        finally:
            decoder.context_attention_mask = saved
        self.inputs = [self.encoder_transformer.inputs[0], token]
        self.model = keras.Model(self.model_inputs(self.inputs), self.outputs, name=self.name)
        self.built = True
        return self.model

    def init_cache(self, encoder_token_ids, max_length, dtype=None):
        """Encode `encoder_token_ids` once and return a decoder cache for
        `max_length` decoder positions (padding, id 0, is hidden from cross-attention).

        >>> import numpy as np
        >>> from kerasformers import build_transformer_model
        >>> t5 = build_transformer_model(None, model="t5.1.1", vocab_size=50, hidden_size=16,
        ...                              num_hidden_layers=1, num_attention_heads=2,
        ...                              intermediate_size=32, return_keras_model=False)
        >>> cache = t5.init_cache(np.array([[7, 8, 9, 1]]), max_length=5)
        >>> probs, cache = t5.call_with_cache(np.array([[0]]), cache)   # start token
        >>> tuple(probs.shape)
        (1, 1, 50)
        """
        self._refuse_conditional_cache()
        if not self.built:
            self.build()
        ids = ops.convert_to_tensor(encoder_token_ids, dtype="int32")
        context = self.encoder(ids, training=False)
        return self.decoder_transformer.init_cache(
            context, max_length, context_mask=ops.not_equal(ids, self.pad_token_id), dtype=dtype
        )

    def call_with_cache(self, decoder_token_ids, cache, logits=False, inplace=False, plan=None):
        """(LM output for the new decoder tokens, updated cache); see Transformer."""
        return self.decoder_transformer.call_with_cache(
            decoder_token_ids, cache, logits=logits, inplace=inplace, plan=plan
        )

    reorder_cache = staticmethod(T5_Base.reorder_cache)
