"""NEZHA: BERT with classical (Shaw) relative positions instead of absolute ones.

Distances j - i are clipped at +-max_relative_position (64) and embedded with a
fixed interleaved sin/cos table of size attention_key_size (no weight).

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="nezha", vocab_size=50, hidden_size=16,
...                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
>>> "Embedding-Position" in [l.name for l in m.layers]
False
"""

from kerasformers.layers import RelativePositionEmbedding
from kerasformers.models.bert import BERT


class NEZHA(BERT):
    #: a relative position bias on the score matrix
    supports_linear_attention = False

    layer_norm_epsilon = 1e-7
    hf_prefixes = ("nezha",)
    hf_model_type = "nezha"

    @classmethod
    def check_arguments(cls, arguments):
        """As Transformer's; the sinusoidal position code (relative here, rotary
        in RoFormer) pairs dimensions, so the key size per head must be even."""
        super().check_arguments(arguments)
        hidden, heads = arguments.get("hidden_size"), arguments.get("num_attention_heads")
        size = (
            arguments.get("attention_key_size")
            or arguments.get("attention_head_size")
            or (hidden // heads if hidden and heads else None)
        )
        if size is not None and size % 2:
            raise ValueError(
                f"{cls.__name__}: the key size per head ({size}: "
                "attention_key_size, attention_head_size or hidden_size / "
                "num_attention_heads) must be even for sinusoidal positions"
            )

    def __init__(self, max_relative_position=64, **kwargs):
        super().__init__(**kwargs)
        self.max_relative_position = max_relative_position

    def apply_embeddings(self, inputs):
        x, _ = self.embed_tokens_and_segments(inputs)
        return self.finish_embeddings(x)

    def attention_arguments(self, x):
        return {
            "attention_mask": self.compute_attention_bias(),
            "position_bias": self.compute_position_bias(x),
            "p_bias": "typical_relative",
        }

    def compute_position_bias(self, inputs=None):
        if self.position_bias is None:
            x = inputs
            self.position_bias = self.apply(
                inputs=[x, x],
                layer=RelativePositionEmbedding,
                input_dim=2 * self.max_relative_position + 1,
                output_dim=self.attention_key_size,
                sinusoidal=True,
                name="Embedding-Relative-Position",
            )
        return self.position_bias

    def hf_config(self):
        config = super().hf_config()
        config["max_relative_position"] = self.max_relative_position
        return config

    def hf_architecture(self):
        if self.with_mlm and self.with_nsp:
            return "NezhaForPreTraining"
        return "NezhaForMaskedLM" if self.with_mlm else "NezhaModel"
