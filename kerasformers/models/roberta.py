"""RoBERTa as HF stores it (`roberta.*`, `lm_head.*`, positions offset by pad+1).

Chinese RoBERTa-wwm checkpoints are in BERT's format: for them `model='roberta'`
reads the same Google names as BERT. The offset only concerns HF checkpoints,
whose position table starts at pad_token_id + 1.

>>> from kerasformers.models.roberta import RoBERTa
>>> RoBERTa(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
...         intermediate_size=16, pad_token_id=1).position_offset
2
"""

from kerasformers.checkpoints.loader import T, skip_rows
from kerasformers.models.bert import BERT


class RoBERTa(BERT):
    hf_prefixes = ("roberta",)
    hf_model_type = "roberta"

    @property
    def position_offset(self):
        return self.pad_token_id + 1 if self.pad_token_id else 0

    def embedding_rows(self, g, h):
        rows = []
        for path, google, hf in super().embedding_rows(g, h):
            if path == self.prefixed("Embedding-Position/embeddings") and self.position_offset:
                hf = skip_rows(hf, self.position_offset)
            rows.append((path, google, hf))
        return rows

    def head_rows(self, g, h):
        p = self.prefixed
        rows = []
        for path, google, hf in super().head_rows(g, h):
            hf = {
                p("MLM-Dense/kernel"): T("lm_head.dense.weight"),
                p("MLM-Dense/bias"): "lm_head.dense.bias",
                p("MLM-Norm/gamma"): "lm_head.layer_norm.weight",
                p("MLM-Norm/beta"): "lm_head.layer_norm.bias",
                p("MLM-Bias/beta"): "lm_head.bias",
            }.get(path, hf)
            rows.append((path, google, hf))
        return rows

    def hf_config(self):
        config = super().hf_config()
        config["max_position_embeddings"] = self.max_position + self.position_offset
        return config

    def hf_architecture(self):
        return "RobertaForMaskedLM" if self.with_mlm else "RobertaModel"
