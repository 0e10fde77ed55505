"""RoFormer (rotary position embedding, interleaved pairs) and RoFormerV2.

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="roformer_v2", vocab_size=50, hidden_size=16,
...                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
>>> sorted({w.path.split("/")[-1] for w in m.weights})   # no biases, no norm weights
['embeddings', 'kernel']
"""

import keras
import numpy as np

from kerasformers.layers import Embedding, LayerNormalization, SinusoidalPositionEmbedding
from kerasformers.models.nezha import NEZHA
from kerasformers.saving import register


class RoFormer(NEZHA):
    """NEZHA's layout with RoPE on queries and keys (GPT-J style interleaved pairs)."""

    supports_linear_attention = True  # RoPE rotates the features, not the scores

    hf_prefixes = ("roformer",)
    hf_model_type = "roformer"
    hf_embedding_mapping = "embeddings_project"

    def attention_arguments(self, x):
        return {
            "attention_mask": self.compute_attention_bias(),
            "position_bias": self.compute_position_bias(x),
            "p_bias": "rotary",
        }

    def compute_position_bias(self, inputs=None):
        if self.position_bias is None:
            x = [inputs, self.inputs[-1]] if self.custom_position_ids else inputs
            self.position_bias = self.apply(
                inputs=x,
                layer=SinusoidalPositionEmbedding,
                output_dim=self.attention_key_size,
                merge_mode="zero",
                custom_position_ids=self.custom_position_ids,
                name="Embedding-Rotary-Position",
            )
        return self.position_bias

    def hf_config(self):
        config = super().hf_config()
        config.pop("max_relative_position", None)
        return config

    def export_weights(self, naming="google"):
        tensors = super().export_weights(naming)
        if naming == "hf":
            # transformers keeps its (frozen, half-split) sin/cos table as a weight
            # and reports it missing otherwise; it is not ours, so it is computed.
            tensors[f"{self.hf_prefixes[0]}.encoder.embed_positions.weight"] = hf_sinusoidal_table(
                self.max_position, self.hidden_size // self.num_attention_heads
            )
        return tensors

    def hf_architecture(self):
        return "RoFormerForMaskedLM" if self.with_mlm else "RoFormerModel"


class RoFormerV2(RoFormer):
    """RoFormer without biases, with a parameter-free RMS-style norm, post-norm."""

    #: a parameter-free norm has nothing for a condition to change
    supports_layer_norm_cond = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.with_pool or self.with_nsp:
            raise ValueError("roformer_v2 has no pooler/NSP head (with_pool/with_nsp)")

    @property
    def initializer(self):
        return RoFormerV2Initializer(self.num_hidden_layers)

    def apply_embeddings(self, inputs):
        x, _ = self.embed_tokens_and_segments(inputs)
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name="Embedding-Dropout"
        )
        x = self.apply_norm(x, "Embedding-Norm")
        if self.embedding_size != self.hidden_size:
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.hidden_size,
                use_bias=False,
                kernel_initializer=self.initializer,
                name="Embedding-Mapping",
            )
        return x

    def apply_self_attention(self, x, name, **kwargs):
        return super().apply_self_attention(x, name, use_bias=False, **kwargs)

    def apply_feed_forward(self, x, name, **kwargs):
        return super().apply_feed_forward(x, name, use_bias=False, **kwargs)

    def apply_norm(self, x, name):
        """Parameter-free RMS-style norm (no mean, no scale, no offset)."""
        return self.apply(
            inputs=x,
            layer=LayerNormalization,
            zero_mean=False,
            scale=False,
            offset=False,
            epsilon=self.layer_norm_eps,
            name=name,
        )

    def apply_final_layers(self, inputs):
        x = inputs
        if not self.with_mlm:
            return x
        if self.embedding_size != self.hidden_size:
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.embedding_size,
                use_bias=False,
                kernel_initializer=self.initializer,
                name="Output-Mapping",
            )
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name="Output-MLM-Dropout"
        )
        x = self.apply(
            inputs=x, layer=Embedding, arguments={"mode": "dense"}, name="Embedding-Token"
        )
        activation = "softmax" if self.with_mlm is True else self.with_mlm
        return self.apply(
            inputs=x,
            layer=keras.layers.Activation,
            activation=activation,
            name="Output-MLM-Activation",
        )

    def vocab_paths(self):
        return {self.prefixed("Embedding-Token/embeddings")}

    def weight_table(self):
        """BERT's table without any bias, beta or gamma; plus Output-Mapping."""
        keep = []
        for row in super().weight_table():
            path = row[0]
            if path.endswith(("/bias", "/beta", "/gamma")):
                continue
            keep.append(row)
        keep.append(
            (self.prefixed("Output-Mapping/kernel"), "cls/predictions/transform/dense/kernel", None)
        )
        return keep


def hf_sinusoidal_table(n_pos, dim):
    """transformers' RoFormerSinusoidalPositionalEmbedding weight: sin half, then cos half."""
    j = np.arange(dim)
    angles = np.arange(n_pos)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    sentinel = (dim + 1) // 2
    table = np.empty((n_pos, dim), dtype=np.float32)
    table[:, :sentinel] = np.sin(angles[:, 0::2])
    table[:, sentinel:] = np.cos(angles[:, 1::2])
    return table


@register
class RoFormerV2Initializer(keras.initializers.Initializer):
    """Truncated normal, std 1.13684723 / sqrt(fan) * num_layers^(-1/order)."""

    def __init__(self, num_layers, order=2, gain=1.0, seed=None):
        self.num_layers, self.order, self.gain, self.seed = num_layers, order, gain, seed

    def __call__(self, shape, dtype=None):
        fan = shape[1] if (shape[0] > 10000 or shape[0] < 10) else shape[0]
        std = 1.13684723 / fan**0.5 * self.gain * self.num_layers ** (-1.0 / self.order)
        return keras.random.truncated_normal(shape, stddev=std, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {
            "num_layers": self.num_layers,
            "order": self.order,
            "gain": self.gain,
            "seed": self.seed,
        }
