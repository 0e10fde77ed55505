"""Decoder-only models: GPT, GPT2 and GPT2_ML (bert4keras' three causal LMs).

All three are always causal (`attention_mode='lm'`) and end in the tied token
embedding (`Embedding-Token` in dense mode) followed by `LM-Activation`
(`final_activation`: 'softmax' probabilities by default, 'linear' for logits).
`with_pool` / `with_mlm` / `with_nsp` do not exist here and are refused.

* GPT: token + optional segment + position, no embedding LayerNorm, BERT's
  post-LN blocks (eps 1e-12). Google names: BERT's with `bert/` -> `gpt/` and
  `encoder` -> `transformer`.
* GPT2: `Input-Token` only, pre-LN blocks (eps 1e-5 or the HF config's),
  `Output-Norm` + `Output-Dropout`. Google names as GPT with
  `.../output/LayerNorm` -> `.../input/LayerNorm` plus `gpt/output/LayerNorm`;
  HF names of `GPT2LMHeadModel` (fused `c_attn` split into q/k/v on load).
* GPT2_ML: `Input-Token` only, token + position + `Embedding-Norm` (eps 1e-5);
  block Att -> Dropout -> Add (r) -> `FeedForward-Norm-0` -> FFN -> Dropout ->
  Add r -> `FeedForward-Norm-1`. Google names `newslm/...`.

embedding_size must equal hidden_size in all three: the output is the tied
token embedding (the original's `Embedding-Mapping` could not feed it either).

Padding. The attention mask is causal and also hides keys equal to
`pad_token_id`; the Keras mask (and so masked losses) marks the same ids.
GPT and GPT2_ML keep bert4keras' id 0 (their vocabularies have [PAD] = 0).
GPT2 defaults to `pad_token_id=None` (also when built from an HF config, whose
pad id is ignored): nothing is masked by id, because in GPT-2's vocabulary id
0 is a real token, and HF's usual pad = eos is a real token too. The original
masked id 0 (`mask_zero=True`); pass `pad_token_id=0` for that. Use right
padding: a causal model never looks at later positions, so every real position
is exact whatever `pad_token_id` is, as long as the pad id does not also occur
as a real token. Left padding would shift the learned positions (unsupported).

>>> from kerasformers import build_transformer_model
>>> m = build_transformer_model(None, model="gpt2", vocab_size=50, hidden_size=16,
...                             num_hidden_layers=1, num_attention_heads=2,
...                             intermediate_size=32, final_activation="linear")
>>> [t.name for t in m.inputs], m.output_shape
(['Input-Token'], (None, None, 50))
"""

import keras

from kerasformers.checkpoints.loader import Key, as_key, split
from kerasformers.layers import Embedding
from kerasformers.models.bert import BERT, dense_rows, norm_rows


def _rename(key, fn):
    """Apply `fn` to the name of a table key (plain string or Key)."""
    key = as_key(key)
    if key is None:
        return None
    if key.transform is None:
        return fn(key.name)
    return Key(fn(key.name), key.transform, key.arg, key.parts)


def _token_ids_only(model, kwargs):
    """GPT2 / GPT2_ML read `Input-Token` only: segment_vocab_size (which configs
    default to 2) is ignored, as in the original; custom position ids are refused."""
    kwargs["segment_vocab_size"] = 0
    if kwargs.pop("custom_position_ids", False):
        raise ValueError(
            f"{type(model).__name__} takes token ids only (custom_position_ids is not available)"
        )


class GPT(BERT):
    """OpenAI-GPT style: BERT blocks, causal mask, no embedding LN, tied LM output."""

    attention_mode = "lm"
    hf_prefixes = ()
    hf_model_type = None
    google_prefix = "gpt"

    #: the output already is the LM head: application='lm'/'unilm' add no with_mlm
    tied_lm_output = True

    def __init__(self, final_activation="softmax", **kwargs):
        for head in ("with_pool", "with_nsp", "with_mlm"):
            if kwargs.pop(head, False):
                raise ValueError(
                    f"{type(self).__name__} has no {head} head: its output is "
                    "always the tied LM head (final_activation='softmax' for "
                    "probabilities, 'linear' for logits)"
                )
        super().__init__(**kwargs)
        self.final_activation = final_activation
        if self.embedding_size != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__}: embedding_size ({self.embedding_size}) "
                f"must equal hidden_size ({self.hidden_size}), the LM output "
                "is the tied token embedding"
            )
        if self.attention_mode == "unilm" and self.segment_vocab_size <= 0:
            raise ValueError(
                f"application='unilm' needs segment ids: {type(self).__name__} "
                "was built with segment_vocab_size=0"
            )

    # ------------------------------------------------------------- hooks
    def finish_embeddings(self, x):
        """No embedding LayerNorm, only Dropout."""
        return self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name="Embedding-Dropout"
        )

    def apply_final_layers(self, inputs):
        x = self.apply(
            inputs=inputs, layer=Embedding, arguments={"mode": "dense"}, name="Embedding-Token"
        )
        return self.apply(
            inputs=x,
            layer=keras.layers.Activation,
            activation=self.final_activation,
            name="LM-Activation",
        )

    # ------------------------------------------------------------- weights
    def google_name(self, name):
        return name.replace("bert/", "gpt/").replace("encoder", "transformer")

    def weight_table(self):
        rows = self.embedding_rows("bert", "bert")
        for i in range(self.num_hidden_layers):
            rows += self.layer_rows(
                i,
                "bert",
                "bert",
                f"Transformer-{i}-MultiHeadSelfAttention",
                f"Transformer-{i}-FeedForward",
            )
        return [(path, _rename(g, self.google_name), None) for path, g, _ in rows]

    def hf_config(self):
        raise NotImplementedError(
            f"{type(self).__name__} has no transformers equivalent; save with naming='google'"
        )


class GPT2(GPT):
    """GPT-2: token + position, pre-LN blocks, final `Output-Norm`, tied LM output."""

    layer_norm_epsilon = 1e-5
    hf_prefixes = ("transformer",)
    hf_model_type = "gpt2"
    allowed_applications = ("encoder", "lm")  # no segment ids, so no UniLM

    def __init__(self, pad_token_id=None, **kwargs):
        _token_ids_only(self, kwargs)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def apply_embeddings(self, inputs):
        x, _ = self.embed_tokens_and_segments(inputs)
        return self.finish_embeddings(self.apply_position_embedding(x))

    def finish_embeddings(self, x):
        return x  # no LayerNorm, no Dropout (as the original)

    def apply_main_layers(self, inputs, index):
        """Pre-LN: LN -> Att -> Dropout -> Add, LN -> FFN -> Dropout -> Add."""
        attention_name = f"Transformer-{index}-MultiHeadSelfAttention"
        feed_forward_name = f"Transformer-{index}-FeedForward"
        xi = inputs
        x = self.apply_self_attention(self.apply_norm(xi, f"{attention_name}-Norm"), attention_name)
        xi = self.apply_residual(xi, x, attention_name)
        x = self.apply_feed_forward(
            self.apply_norm(xi, f"{feed_forward_name}-Norm"), feed_forward_name
        )
        return self.apply_residual(xi, x, feed_forward_name)

    def apply_final_layers(self, inputs):
        x = self.apply_norm(inputs, "Output-Norm")
        x = self.apply(
            inputs=x, layer=keras.layers.Dropout, rate=self.dropout_rate, name="Output-Dropout"
        )
        return super().apply_final_layers(x)

    # ------------------------------------------------------------- weights
    def google_name(self, name):
        return super().google_name(name).replace("output/LayerNorm", "input/LayerNorm")

    def weight_table(self):
        p = self.prefixed
        google = [row[:2] for row in super().weight_table()]
        google += [
            (p("Output-Norm/gamma"), "gpt/output/LayerNorm/gamma"),
            (p("Output-Norm/beta"), "gpt/output/LayerNorm/beta"),
        ]
        hf = {
            p("Embedding-Token/embeddings"): "transformer.wte.weight",
            p("Embedding-Position/embeddings"): "transformer.wpe.weight",
            p("Output-Norm/gamma"): "transformer.ln_f.weight",
            p("Output-Norm/beta"): "transformer.ln_f.bias",
        }
        for i in range(self.num_hidden_layers):
            a, f = p(f"Transformer-{i}-MultiHeadSelfAttention"), p(f"Transformer-{i}-FeedForward")
            h = f"transformer.h.{i}"
            for part, name in enumerate(("q_dense", "k_dense", "v_dense")):  # fused q|k|v
                hf[f"{a}/{name}/kernel"] = split(f"{h}.attn.c_attn.weight", part, 3)
                hf[f"{a}/{name}/bias"] = split(f"{h}.attn.c_attn.bias", part, 3)
            for ours, theirs in (
                (f"{a}/o_dense", "attn.c_proj"),
                (f"{f}/i0_dense", "mlp.c_fc"),
                (f"{f}/o_dense", "mlp.c_proj"),
            ):
                # HF Conv1D stores [in, out], as a Keras kernel: not transposed
                hf[f"{ours}/kernel"] = f"{h}.{theirs}.weight"
                hf[f"{ours}/bias"] = f"{h}.{theirs}.bias"
            for ours, theirs in ((f"{a}-Norm", "ln_1"), (f"{f}-Norm", "ln_2")):
                hf[f"{ours}/gamma"] = f"{h}.{theirs}.weight"
                hf[f"{ours}/beta"] = f"{h}.{theirs}.bias"
        return [(path, g, hf.get(path)) for path, g in google]

    def hf_config(self):
        act = self.hidden_act if isinstance(self.hidden_act, str) else "gelu_new"
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_hidden_layers,
            "n_head": self.num_attention_heads,
            "n_inner": self.intermediate_size,
            "n_positions": self.max_position,
            "activation_function": act,
            "layer_norm_epsilon": self.layer_norm_eps,
            "resid_pdrop": self.dropout_rate,
            "embd_pdrop": self.dropout_rate,
            "attn_pdrop": self.attention_dropout_rate,
            "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": True,
        }


class GPT2_ML(GPT):
    """imcaspar/gpt2-ml: GPT-like post-LN blocks with an embedding LayerNorm."""

    layer_norm_epsilon = 1e-5
    allowed_applications = ("encoder", "lm")  # no segment ids, so no UniLM

    def __init__(self, **kwargs):
        _token_ids_only(self, kwargs)
        super().__init__(**kwargs)

    def apply_embeddings(self, inputs):
        x, _ = self.embed_tokens_and_segments(inputs)
        x = self.apply_position_embedding(x)
        return self.apply_norm(x, "Embedding-Norm")  # no Dropout (as the original)

    def apply_main_layers(self, inputs, index):
        """Att -> Dropout -> Add (r) -> LN-0 -> FFN -> Dropout -> Add r -> LN-1."""
        attention_name = f"Transformer-{index}-MultiHeadSelfAttention"
        feed_forward_name = f"Transformer-{index}-FeedForward"
        x = self.apply_self_attention(inputs, attention_name)
        xi = self.apply_residual(inputs, x, attention_name)
        x = self.apply_feed_forward(
            self.apply_norm(xi, f"{feed_forward_name}-Norm-0"), feed_forward_name
        )
        x = self.apply_residual(xi, x, feed_forward_name)
        return self.apply_norm(x, f"{feed_forward_name}-Norm-1")

    # ------------------------------------------------------------- weights
    def weight_table(self):
        p = self.prefixed
        rows = [
            (p("Embedding-Token/embeddings"), "newslm/embeddings/word_embed", None),
            (p("Embedding-Position/embeddings"), "newslm/embeddings/pos_embed", None),
            *norm_rows(p("Embedding-Norm"), "newslm/embeddings/LayerNorm_embed_norm", None),
        ]
        for i in range(self.num_hidden_layers):
            a, f = p(f"Transformer-{i}-MultiHeadSelfAttention"), p(f"Transformer-{i}-FeedForward")
            g = f"newslm/layer{i:02d}"
            rows += [
                *dense_rows(f"{a}/q_dense", f"{g}/query_layer", None),
                *dense_rows(f"{a}/k_dense", f"{g}/key_layer", None),
                *dense_rows(f"{a}/v_dense", f"{g}/value_layer", None),
                *dense_rows(f"{a}/o_dense", f"{g}/context_projection_layer", None),
                *norm_rows(f"{f}-Norm-0", f"{g}/LayerNorm_mlp_ln0", None),
                *dense_rows(f"{f}/i0_dense", f"{g}/intermediate", None),
                *dense_rows(f"{f}/o_dense", f"{g}/output", None),
                *norm_rows(f"{f}-Norm-1", f"{g}/LayerNorm_mlp_ln1", None),
            ]
        return [(path, g, None) for path, g, _ in rows]
