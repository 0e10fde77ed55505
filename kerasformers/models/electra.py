"""ELECTRA discriminator (the generator is not supported, as in bert4keras).

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="electra", vocab_size=50, hidden_size=16,
...                             num_hidden_layers=1, num_attention_heads=2,
...                             intermediate_size=32, with_discriminator=True)
>>> m.output_shape
(None, None, 1)
"""

import keras

from kerasformers.models.bert import BERT, dense_rows


class ELECTRA(BERT):
    hf_prefixes = ("electra",)
    hf_model_type = "electra"
    google_prefix = "electra"
    google_embedding_mapping = "embeddings_project"
    hf_embedding_mapping = "embeddings_project"
    allowed_applications = ("encoder",)

    def __init__(self, with_discriminator=False, **kwargs):
        if kwargs.get("with_pool") or kwargs.get("with_mlm") or kwargs.get("with_nsp"):
            raise ValueError(
                "electra supports with_discriminator only "
                "(with_pool, with_nsp and with_mlm are not available)"
            )
        super().__init__(**kwargs)
        self.with_discriminator = with_discriminator

    def apply_final_layers(self, inputs):
        x = inputs
        if self.with_discriminator:
            activation = "sigmoid" if self.with_discriminator is True else self.with_discriminator
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=self.hidden_size,
                activation=self.hidden_act_fn,
                kernel_initializer=self.initializer,
                name="Discriminator-Dense",
            )
            x = self.apply(
                inputs=x,
                layer=keras.layers.Dense,
                units=1,
                activation=activation,
                kernel_initializer=self.initializer,
                name="Discriminator-Prediction",
            )
        return x

    def head_rows(self, g, h):
        p = self.prefixed
        return [
            *dense_rows(
                p("Discriminator-Dense"),
                "discriminator_predictions/dense",
                "discriminator_predictions.dense",
            ),
            *dense_rows(
                p("Discriminator-Prediction"),
                "discriminator_predictions/dense_1",
                "discriminator_predictions.dense_prediction",
            ),
        ]

    def hf_architecture(self):
        return "ElectraForPreTraining" if self.with_discriminator else "ElectraModel"
