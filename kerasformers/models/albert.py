"""ALBERT (shared layers) and ALBERT_Unshared (same weights, untied after loading).

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="albert", vocab_size=50, hidden_size=16,
...                             embedding_size=8, num_hidden_layers=3,
...                             num_attention_heads=2, intermediate_size=32)
>>> "Transformer-MultiHeadSelfAttention" in [l.name for l in m.layers]
True
"""

from kerasformers.models.bert import BERT, dense_rows, norm_rows


class ALBERT(BERT):
    """BERT whose blocks share one set of weights (layer names carry no index)."""

    layer_norm_epsilon = 1e-7
    hf_prefixes = ("albert",)
    hf_model_type = "albert"

    def apply_main_layers(self, inputs, index, names=None):
        return super().apply_main_layers(
            inputs, index, ("Transformer-MultiHeadSelfAttention", "Transformer-FeedForward")
        )

    def shared_rows(self, attention, feed_forward):
        """Rows of one block, from ALBERT's group_0/inner_group_0 variables."""
        p = self.prefixed
        g = "bert/encoder/transformer/group_0/inner_group_0"
        h = "albert.encoder.albert_layer_groups.0.albert_layers.0"
        return [
            *dense_rows(
                f"{p(attention)}/q_dense", f"{g}/attention_1/self/query", f"{h}.attention.query"
            ),
            *dense_rows(
                f"{p(attention)}/k_dense", f"{g}/attention_1/self/key", f"{h}.attention.key"
            ),
            *dense_rows(
                f"{p(attention)}/v_dense", f"{g}/attention_1/self/value", f"{h}.attention.value"
            ),
            *dense_rows(
                f"{p(attention)}/o_dense", f"{g}/attention_1/output/dense", f"{h}.attention.dense"
            ),
            *norm_rows(p(f"{attention}-Norm"), f"{g}/LayerNorm", f"{h}.attention.LayerNorm"),
            *dense_rows(f"{p(feed_forward)}/i0_dense", f"{g}/ffn_1/intermediate/dense", f"{h}.ffn"),
            *dense_rows(
                f"{p(feed_forward)}/o_dense",
                f"{g}/ffn_1/intermediate/output/dense",
                f"{h}.ffn_output",
            ),
            *norm_rows(p(f"{feed_forward}-Norm"), f"{g}/LayerNorm_1", f"{h}.full_layer_layer_norm"),
        ]

    def head_rows(self, g, h):
        p = self.prefixed
        return [
            *dense_rows(p("Pooler-Dense"), "bert/pooler/dense", "albert.pooler"),
            (
                p("NSP-Proba/kernel"),
                self.transposed("cls/seq_relationship/output_weights"),
                self.transposed("sop_classifier.classifier.weight"),
            ),
            (
                p("NSP-Proba/bias"),
                "cls/seq_relationship/output_bias",
                "sop_classifier.classifier.bias",
            ),
            *dense_rows(p("MLM-Dense"), "cls/predictions/transform/dense", "predictions.dense"),
            *norm_rows(
                p("MLM-Norm"), "cls/predictions/transform/LayerNorm", "predictions.LayerNorm"
            ),
            (p("MLM-Bias/beta"), "cls/predictions/output_bias", "predictions.bias"),
        ]

    @staticmethod
    def transposed(name):
        from kerasformers.checkpoints.loader import T

        return T(name)

    def weight_table(self):
        rows = self.embedding_rows("bert", "albert")
        rows += self.shared_rows("Transformer-MultiHeadSelfAttention", "Transformer-FeedForward")
        return rows + self.head_rows("bert", "albert")

    def hf_architecture(self):
        if self.with_mlm and self.with_nsp:
            return "AlbertForPreTraining"
        return "AlbertForMaskedLM" if self.with_mlm else "AlbertModel"


class ALBERT_Unshared(ALBERT):
    """BERT structure (one set of layers per block), each loaded from ALBERT's shared weights."""

    def apply_main_layers(self, inputs, index, names=None):
        return BERT.apply_main_layers(self, inputs, index)

    def weight_table(self):
        rows = self.embedding_rows("bert", "albert")
        for i in range(self.num_hidden_layers):
            rows += self.shared_rows(
                f"Transformer-{i}-MultiHeadSelfAttention", f"Transformer-{i}-FeedForward"
            )
        return rows + self.head_rows("bert", "albert")
