"""BERT (and Chinese RoBERTa-wwm, which ships in BERT's format).

>>> from kerasformers import build_transformer_model
>>> model = build_transformer_model(None, vocab_size=100, hidden_size=32, num_hidden_layers=2,
...                                 num_attention_heads=4, intermediate_size=64, with_mlm=True)
>>> model.output_shape
(None, None, 100)
"""

import warnings

import keras

from kerasformers.checkpoints import loader
from kerasformers.checkpoints.loader import T
from kerasformers.checkpoints.sources import open_checkpoint
from kerasformers.layers import (
    Embedding,
    FeedForward,
    MaskedAdd,
    MultiHeadAttention,
    PositionEmbedding,
    ScaleOffset,
    TokenSelect,
)
from kerasformers.models.base import Transformer


class BERT(Transformer):
    """Post-LN BERT: token + segment + learned position embeddings, optional heads.

    Heads: with_pool (True = tanh, or an activation), with_nsp (implies pool),
    with_mlm (True = softmax, or an activation). Outputs: no head -> sequence;
    one head -> that head only; both -> [pool_or_nsp, mlm].
    """

    layer_norm_epsilon = 1e-12
    hf_prefixes = ("bert",)
    hf_model_type = "bert"
    google_prefix = "bert"
    #: where the factorised embedding projection (`Embedding-Mapping`) is stored
    google_embedding_mapping = "encoder/embedding_hidden_mapping_in"
    hf_embedding_mapping = "encoder.embedding_hidden_mapping_in"

    def __init__(
        self,
        max_position=512,
        segment_vocab_size=2,
        with_pool=False,
        with_nsp=False,
        with_mlm=False,
        hierarchical_position=None,
        custom_position_ids=False,
        shared_segment_embeddings=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_position = max_position
        self.segment_vocab_size = segment_vocab_size
        self.with_pool = with_pool
        self.with_nsp = with_nsp
        self.with_mlm = with_mlm
        self.hierarchical_position = hierarchical_position
        self.custom_position_ids = custom_position_ids
        self.shared_segment_embeddings = shared_segment_embeddings
        if self.with_nsp and not self.with_pool:
            self.with_pool = True

    # ------------------------------------------------------------- hooks
    def get_inputs(self):
        inputs = [
            keras.Input(
                shape=(self.sequence_length,), name=self.prefixed("Input-Token"), dtype="int32"
            )
        ]
        if self.segment_vocab_size > 0:
            inputs.append(
                keras.Input(
                    shape=(self.sequence_length,),
                    dtype="int32",
                    name=self.prefixed("Input-Segment"),
                )
            )
        if self.custom_position_ids:
            inputs.append(
                keras.Input(
                    shape=(self.sequence_length,),
                    dtype="int32",
                    name=self.prefixed("Input-Position"),
                )
            )
        return inputs

    def embed_tokens_and_segments(self, inputs):
        """Token (+ segment) embeddings, summed; shared by all BERT-family models."""
        inputs = list(inputs)
        x = inputs.pop(0)
        x = self.apply(
            inputs=x,
            layer=Embedding,
            input_dim=self.vocab_size,
            output_dim=self.embedding_size,
            embeddings_initializer=self.initializer,
            mask_zero=True,
            pad_token_id=self.pad_token_id,
            name="Embedding-Token",
        )
        if self.segment_vocab_size > 0:
            s = inputs.pop(0)
            name = "Embedding-Token" if self.shared_segment_embeddings else "Embedding-Segment"
            s = self.apply(
                inputs=s,
                layer=Embedding,
                input_dim=self.segment_vocab_size,
                output_dim=self.embedding_size,
                embeddings_initializer=self.initializer,
                name=name,
            )
            x = self.apply(inputs=[x, s], layer=MaskedAdd, name="Embedding-Token-Segment")
        return x, inputs

    def apply_embeddings(self, inputs):
        x, rest = self.embed_tokens_and_segments(inputs)
        x = self.apply_position_embedding(x, rest[0] if self.custom_position_ids else None)
        return self.finish_embeddings(x)

    def apply_position_embedding(self, x, position_ids=None):
        """Learned absolute positions (`Embedding-Position`), added to x."""
        return self.apply(
            inputs=x if position_ids is None else [x, position_ids],
            layer=PositionEmbedding,
            input_dim=self.max_position,
            output_dim=self.embedding_size,
            merge_mode="add",
            hierarchical=self.hierarchical_position,
            embeddings_initializer=self.initializer,
            custom_position_ids=position_ids is not None,
            name="Embedding-Position",
        )

    def finish_embeddings(self, x):
        x = self.apply_layer_norm(x, "Embedding-Norm", epsilon=self.embedding_norm_eps)
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name="Embedding-Dropout"
        )
        if self.embedding_size != self.hidden_size:
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.hidden_size,
                kernel_initializer=self.initializer,
                name="Embedding-Mapping",
            )
        return x

    @property
    def embedding_norm_eps(self):
        return self.layer_norm_eps

    def attention_arguments(self, x):
        """Call arguments of every self-attention layer (mask and position bias)."""
        return {"attention_mask": self.compute_attention_bias()}

    def apply_main_layers(self, inputs, index, names=None):
        """Post-LN block: Att -> Dropout -> Add -> LN -> FFN -> Dropout -> Add -> LN."""
        attention_name, feed_forward_name = names or (
            f"Transformer-{index}-MultiHeadSelfAttention",
            f"Transformer-{index}-FeedForward",
        )
        x = xi = inputs
        x = self.apply_self_attention(x, attention_name)
        x = self.apply_residual(xi, x, attention_name)
        x = xi = self.apply_norm(x, f"{attention_name}-Norm")
        x = self.apply_feed_forward(x, feed_forward_name)
        x = self.apply_residual(xi, x, feed_forward_name)
        return self.apply_norm(x, f"{feed_forward_name}-Norm")

    # Sublayers of a block, shared by every BERT-family layout (pre-/post-LN, GPT2_ML).
    def apply_self_attention(self, x, name, **kwargs):
        """Multi-head self-attention `name`, masked and biased by `attention_arguments`."""
        return self.apply(
            inputs=[x, x, x],
            layer=MultiHeadAttention,
            arguments=self.attention_arguments(x),
            heads=self.num_attention_heads,
            head_size=self.attention_head_size,
            out_dim=self.hidden_size,
            key_size=self.attention_key_size,
            attention_dropout=self.attention_dropout_rate,
            kernel_initializer=self.initializer,
            name=name,
            **kwargs,
        )

    def apply_feed_forward(self, x, name, **kwargs):
        return self.apply(
            inputs=x,
            layer=FeedForward,
            units=self.intermediate_size,
            activation=self.hidden_act,
            kernel_initializer=self.initializer,
            name=name,
            **kwargs,
        )

    def apply_residual(self, xi, x, name):
        """`name`-Dropout on the sublayer output, then `name`-Add with its input xi."""
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name=f"{name}-Dropout"
        )
        return self.apply(inputs=[xi, x], layer=keras.layers.Add, name=f"{name}-Add")

    def apply_norm(self, x, name):
        return self.apply_layer_norm(x, name, epsilon=self.layer_norm_eps)

    def apply_final_layers(self, inputs):
        x = inputs
        outputs = [x]
        if self.with_pool:
            x = outputs[0]
            x = self.apply(inputs=x, layer=TokenSelect, index=0, name="Pooler")
            pool_activation = "tanh" if self.with_pool is True else self.with_pool
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.hidden_size,
                activation=pool_activation,
                kernel_initializer=self.initializer,
                name="Pooler-Dense",
            )
            if self.with_nsp:
                x = self.apply(
                    inputs=x,
                    layer=keras.layers.Dense,
                    units=2,
                    activation="softmax",
                    kernel_initializer=self.initializer,
                    name="NSP-Proba",
                )
            outputs.append(x)
        if self.with_mlm:
            outputs.append(self.apply_mlm_head(outputs[0]))
        if len(outputs) == 1:
            return outputs[0]
        if len(outputs) == 2:
            return outputs[1]
        return outputs[1:]

    def apply_mlm_head(self, x):
        x = self.apply(
            inputs=x,
            layer=keras.layers.Dense,
            units=self.embedding_size,
            activation=self.hidden_act_fn,
            kernel_initializer=self.initializer,
            name="MLM-Dense",
        )
        x = self.apply_layer_norm(x, "MLM-Norm", epsilon=self.layer_norm_eps)
        x = self.apply(
            inputs=x, layer=Embedding, arguments={"mode": "dense"}, name="Embedding-Token"
        )
        x = self.apply(inputs=x, layer=ScaleOffset, scale=False, name="MLM-Bias")
        mlm_activation = "softmax" if self.with_mlm is True else self.with_mlm
        return self.apply(
            inputs=x,
            layer=keras.layers.Activation,
            activation=mlm_activation,
            name="MLM-Activation",
        )

    @property
    def hidden_act_fn(self):
        from kerasformers.ops import get_activation

        act = self.hidden_act[0] if isinstance(self.hidden_act, (list, tuple)) else self.hidden_act
        return get_activation(act)

    # ------------------------------------------------------------- weights
    def vocab_paths(self):
        return super().vocab_paths() | {self.prefixed("MLM-Bias/beta")}

    def load_weights_from_checkpoint(self, checkpoint, naming=None):
        """As Transformer's. With segment_vocab_size=0, segment embeddings in the
        checkpoint are not loaded, and a warning says so: the model then equals
        the original fed segment 0 everywhere only if that row is zero."""
        source = open_checkpoint(checkpoint)
        if self.segment_vocab_size == 0:
            column = {"google": 1, "hf": 2}.get(naming or source.naming)
            for row in self.weight_table():
                key = loader.as_key(row[column]) if column else None
                if row[0] != self.prefixed("Embedding-Segment/embeddings") or key is None:
                    continue
                name = loader.resolve(source, key.name, self.hf_prefixes)
                if name is not None:
                    shape = tuple(source.shape(name))
                    warnings.warn(
                        f"{source.path}: the checkpoint has segment embeddings {name!r} "
                        f"{shape}, but segment_vocab_size=0 (type_vocab_size in config "
                        "files): they are not loaded, so outputs differ from the original "
                        "model's unless its segment-0 row is zero. Pass segment_vocab_size="
                        f"{shape[0]} to use them.",
                        UserWarning,
                        stacklevel=2,
                    )
        return super().load_weights_from_checkpoint(source, naming=naming)

    def embedding_rows(self, g, h):
        """Embedding rows of the table; g/h are the google/hf prefixes."""
        p = self.prefixed
        return [
            (
                p("Embedding-Token/embeddings"),
                f"{g}/embeddings/word_embeddings",
                f"{h}.embeddings.word_embeddings.weight",
            ),
            (
                p("Embedding-Segment/embeddings"),
                f"{g}/embeddings/token_type_embeddings",
                f"{h}.embeddings.token_type_embeddings.weight",
            ),
            (
                p("Embedding-Position/embeddings"),
                f"{g}/embeddings/position_embeddings",
                f"{h}.embeddings.position_embeddings.weight",
            ),
            *norm_rows(
                p("Embedding-Norm"), f"{g}/embeddings/LayerNorm", f"{h}.embeddings.LayerNorm"
            ),
            *dense_rows(
                p("Embedding-Mapping"),
                f"{g}/{self.google_embedding_mapping}",
                f"{h}.{self.hf_embedding_mapping}",
            ),
        ]

    def layer_rows(self, i, g, h, attention, feed_forward):
        """One Transformer block; `attention`/`feed_forward` are our layer names."""
        p = self.prefixed
        g, h = f"{g}/encoder/layer_{i}", f"{h}.encoder.layer.{i}"
        return [
            *dense_rows(
                f"{p(attention)}/q_dense", f"{g}/attention/self/query", f"{h}.attention.self.query"
            ),
            *dense_rows(
                f"{p(attention)}/k_dense", f"{g}/attention/self/key", f"{h}.attention.self.key"
            ),
            *dense_rows(
                f"{p(attention)}/v_dense", f"{g}/attention/self/value", f"{h}.attention.self.value"
            ),
            *dense_rows(
                f"{p(attention)}/o_dense",
                f"{g}/attention/output/dense",
                f"{h}.attention.output.dense",
            ),
            *norm_rows(
                p(f"{attention}-Norm"),
                f"{g}/attention/output/LayerNorm",
                f"{h}.attention.output.LayerNorm",
            ),
            *dense_rows(
                f"{p(feed_forward)}/i0_dense", f"{g}/intermediate/dense", f"{h}.intermediate.dense"
            ),
            *dense_rows(f"{p(feed_forward)}/o_dense", f"{g}/output/dense", f"{h}.output.dense"),
            *norm_rows(p(f"{feed_forward}-Norm"), f"{g}/output/LayerNorm", f"{h}.output.LayerNorm"),
        ]

    def head_rows(self, g, h):
        p = self.prefixed
        return [
            *dense_rows(p("Pooler-Dense"), f"{g}/pooler/dense", f"{h}.pooler.dense"),
            (
                p("NSP-Proba/kernel"),
                T("cls/seq_relationship/output_weights"),
                T("cls.seq_relationship.weight"),
            ),
            (p("NSP-Proba/bias"), "cls/seq_relationship/output_bias", "cls.seq_relationship.bias"),
            *dense_rows(
                p("MLM-Dense"), "cls/predictions/transform/dense", "cls.predictions.transform.dense"
            ),
            *norm_rows(
                p("MLM-Norm"),
                "cls/predictions/transform/LayerNorm",
                "cls.predictions.transform.LayerNorm",
            ),
            (p("MLM-Bias/beta"), "cls/predictions/output_bias", "cls.predictions.bias"),
        ]

    def weight_table(self):
        g, h = self.google_prefix, self.hf_prefixes[0]
        rows = self.embedding_rows(g, h)
        for i in range(self.num_hidden_layers):
            rows += self.layer_rows(
                i, g, h, f"Transformer-{i}-MultiHeadSelfAttention", f"Transformer-{i}-FeedForward"
            )
        return rows + self.head_rows(g, h)

    def hf_config(self):
        act = self.hidden_act if isinstance(self.hidden_act, str) else "gelu"
        return {
            "model_type": self.hf_model_type,
            "architectures": [self.hf_architecture()],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": act,
            "hidden_dropout_prob": self.dropout_rate,
            "attention_probs_dropout_prob": self.attention_dropout_rate,
            "max_position_embeddings": getattr(self, "max_position", 512),
            "type_vocab_size": self.segment_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "embedding_size": self.embedding_size,
        }

    def hf_architecture(self):
        name = {"bert": "Bert"}.get(self.hf_model_type, "Bert")
        if self.with_mlm and self.with_nsp:
            return f"{name}ForPreTraining"
        return f"{name}ForMaskedLM" if self.with_mlm else f"{name}Model"


def dense_rows(path, google, hf, bias=True):
    """kernel (+ bias) rows of a Dense layer; HF Linear weights are transposed."""
    rows = [(f"{path}/kernel", f"{google}/kernel", T(f"{hf}.weight"))]
    if bias:
        rows.append((f"{path}/bias", f"{google}/bias", f"{hf}.bias"))
    return rows


def norm_rows(path, google, hf):
    return [
        (f"{path}/gamma", f"{google}/gamma", f"{hf}.weight"),
        (f"{path}/beta", f"{google}/beta", f"{hf}.bias"),
    ]
