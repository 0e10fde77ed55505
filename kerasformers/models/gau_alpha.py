"""GAU-α (ZhuiyiTechnology/GAU-alpha): RoFormerV2 whose blocks are one Gated Attention Unit.

Each block: GatedAttentionUnit (softmax_plus, RoPE, no bias) -> Dropout -> Add ->
parameter-free norm; embeddings and initializer as RoFormerV2 (order 3). The
released checkpoints name their weights `bert/embeddings/...` and
`GAU_alpha/encoder/layer_{i}/gau/...` (naming='google'); naming='hf' is the
`gau_alpha.` naming of the PyTorch port (JunnYu/GAU-alpha-pytorch), not a
transformers model.

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="gau_alpha", vocab_size=50, hidden_size=16,
...                             num_hidden_layers=2, num_attention_heads=1,
...                             intermediate_size=32, attention_key_size=8)
>>> sorted({"/".join(w.path.split("/")[1:]) for w in m.weights if "GatedAttention" in w.path})
['i_dense/kernel', 'k_scaleoffset/gamma', 'o_dense/kernel', 'q_scaleoffset/gamma']
"""

import keras

from kerasformers.checkpoints.loader import T
from kerasformers.layers import GatedAttentionUnit
from kerasformers.models.roformer import RoFormerV2, RoFormerV2Initializer


class GAU_alpha(RoFormerV2):
    """GAU-α: `intermediate_size` is the GAU's width (units), `attention_key_size`
    its single head's key size (128 in the released base model)."""

    hf_prefixes = ("gau_alpha",)
    hf_model_type = "gau_alpha"
    #: GAU has its own attention: the MultiHeadAttention options do not apply
    supports_linear_attention = False
    supports_entropy_scale = False

    @classmethod
    def check_arguments(cls, arguments):
        super().check_arguments(arguments)
        embedding = arguments.get("embedding_size")
        if embedding is not None and embedding != arguments.get("hidden_size"):
            raise ValueError(
                "GAU_alpha: embedding_size must equal hidden_size (the released checkpoints "
                "have no embedding mapping)"
            )

    @property
    def initializer(self):
        return RoFormerV2Initializer(self.num_hidden_layers, order=3)

    def apply_main_layers(self, inputs, index):
        """GAU -> Dropout -> Add -> norm (no feed-forward: the GAU is the whole block)."""
        name = f"Transformer-{index}-GatedAttentionUnit"
        xi = inputs
        x = self.apply(
            inputs=inputs,
            layer=GatedAttentionUnit,
            arguments={
                "attention_mask": self.compute_attention_bias(),
                "position_bias": self.compute_position_bias(inputs),
                "p_bias": "rotary",
            },
            units=self.intermediate_size,
            key_size=self.attention_key_size,
            activation=self.hidden_act,
            use_bias=False,
            normalization="softmax_plus",
            attention_dropout=self.attention_dropout_rate,
            kernel_initializer=self.initializer,
            name=name,
        )
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name=f"{name}-Dropout"
        )
        x = self.apply(inputs=[xi, x], layer=keras.layers.Add, name=f"{name}-Add")
        return self.apply_norm(x, f"{name}-Norm")

    def cached_attention_shapes(self):
        """One head per block: keys [key_size], values [units]."""
        return [(1, self.attention_key_size, self.intermediate_size)] * self.num_hidden_layers

    def weight_table(self):
        """The released GAU-α names (bert4keras >= 0.10.4 order; matched by name)."""
        p, h = self.prefixed, self.hf_prefixes[0]
        rows = [
            (
                p("Embedding-Token/embeddings"),
                "bert/embeddings/word_embeddings",
                f"{h}.embeddings.word_embeddings.weight",
            ),
            (
                p("Embedding-Segment/embeddings"),
                "bert/embeddings/token_type_embeddings",
                f"{h}.embeddings.token_type_embeddings.weight",
            ),
        ]
        for i in range(self.num_hidden_layers):
            ours = p(f"Transformer-{i}-GatedAttentionUnit")
            g, hf = f"GAU_alpha/encoder/layer_{i}/gau", f"{h}.encoder.layer.{i}.gau"
            rows += [
                (f"{ours}/i_dense/kernel", f"{g}/i_dense/kernel", T(f"{hf}.i_dense.weight")),
                (
                    f"{ours}/q_scaleoffset/gamma",
                    f"{g}/q_scaleoffset/gamma",
                    f"{hf}.q_scaleoffset.weight",
                ),
                (
                    f"{ours}/k_scaleoffset/gamma",
                    f"{g}/k_scaleoffset/gamma",
                    f"{hf}.k_scaleoffset.weight",
                ),
                (f"{ours}/o_dense/kernel", f"{g}/o_dense/kernel", T(f"{hf}.o_dense.weight")),
            ]
        return rows

    def hf_config(self):
        """The PyTorch port's GAUAlphaConfig."""
        return {
            "model_type": self.hf_model_type,
            "architectures": ["GAUAlphaForMaskedLM" if self.with_mlm else "GAUAlphaModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "attention_key_size": self.attention_key_size,
            "max_position_embeddings": self.max_position,
            "type_vocab_size": self.segment_vocab_size,
            "hidden_act": self.hidden_act if isinstance(self.hidden_act, str) else "swish",
            "hidden_dropout_prob": self.dropout_rate,
            "attention_probs_dropout_prob": self.attention_dropout_rate,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
        }
