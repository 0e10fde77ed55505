"""Our models equal transformers' (5.x) on small random models, with and without padding.

Every case: random HF model (weights std 0.2) -> save_pretrained -> our
build_transformer_model(checkpoint_path=dir) -> max |diff| <= 1e-4 in float32 on
the sequence output and every head, at all real positions of a padded batch and
for an unpadded row on its own.
"""

import pytest
import torch
import transformers

from kerasformers import build_transformer_model
from tests.utils import assert_close, batch, randomize_torch, run

SMALL = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# key: (config class, model class, config overrides, our head kwargs)
CASES = {
    "bert": ("BertConfig", "BertForPreTraining", {}, dict(with_mlm="linear", with_nsp=True)),
    "roberta": (
        "RobertaConfig",
        "RobertaForMaskedLM",
        dict(pad_token_id=1, type_vocab_size=1, max_position_embeddings=66),
        dict(with_mlm="linear"),
    ),
    "albert": (
        "AlbertConfig",
        "AlbertForPreTraining",
        dict(embedding_size=16),
        dict(with_mlm="linear", with_nsp=True),
    ),
    "electra": (
        "ElectraConfig",
        "ElectraForPreTraining",
        dict(embedding_size=16),
        dict(with_discriminator="linear"),
    ),
    "roformer": (
        "RoFormerConfig",
        "RoFormerForMaskedLM",
        dict(embedding_size=16),
        dict(with_mlm="linear"),
    ),
}


class Reference:
    """An HF model saved to disk plus its outputs on a padded batch."""

    def __init__(self, key, folder):
        config_cls, model_cls, extra, self.heads = CASES[key]
        config = getattr(transformers, config_cls)(**{**SMALL, **extra})
        torch.manual_seed(0)
        self.hf = randomize_torch(getattr(transformers, model_cls)(config))
        self.hf.save_pretrained(folder)
        self.folder = folder
        self.pad = config.pad_token_id or 0
        self.ids, self.seg = batch(
            lengths=(11, 7, 4), pad=self.pad, segments=config.type_vocab_size > 1
        )
        self.mask = self.ids != self.pad

    def outputs(self, ids, seg):
        with torch.no_grad():
            kwargs = dict(
                input_ids=torch.tensor(ids),
                token_type_ids=torch.tensor(seg),
                attention_mask=torch.tensor(ids != self.pad),
            )
            base = self.hf.base_model(**kwargs)
            full = self.hf(**kwargs)
        out = {"sequence": base.last_hidden_state.numpy()}
        if getattr(base, "pooler_output", None) is not None:
            out["pool"] = base.pooler_output.numpy()
        logits = getattr(full, "prediction_logits", None)
        if logits is None:
            logits = full.logits
        out["head"] = logits.numpy()
        sop = getattr(full, "seq_relationship_logits", None)
        if sop is None:
            sop = getattr(full, "sop_logits", None)
        if sop is not None:
            out["nsp"] = torch.softmax(sop, -1).numpy()
        return out


_CACHE = {}


def _reference(key, tmp_path_factory):
    if key not in _CACHE:
        _CACHE[key] = Reference(key, str(tmp_path_factory.mktemp(key)))
    return key, _CACHE[key]


@pytest.fixture(params=sorted(CASES))
def reference(request, tmp_path_factory):
    return _reference(request.param, tmp_path_factory)


@pytest.fixture(params=["albert", "bert"])  # the transformers classes with a pooler
def pooled_reference(request, tmp_path_factory):
    return _reference(request.param, tmp_path_factory)


def ours(ref, **kwargs):
    return build_transformer_model(checkpoint_path=ref.folder, **kwargs)


def test_sequence_output(reference):
    key, ref = reference
    expected = ref.outputs(ref.ids, ref.seg)
    model = ours(ref)
    assert_close(run(model, [ref.ids, ref.seg]), expected["sequence"], ref.mask, what=key)


def test_heads(reference):
    key, ref = reference
    expected = ref.outputs(ref.ids, ref.seg)
    model = ours(ref, **ref.heads)
    out = run(model, [ref.ids, ref.seg])
    if "nsp" in expected:
        nsp, head = out
        assert_close(nsp, expected["nsp"], what=f"{key} NSP")
    else:
        head = out
    if key == "electra":
        head = head[..., 0]
    assert_close(head, expected["head"], ref.mask, what=f"{key} head")


def test_pooler(pooled_reference):
    key, ref = pooled_reference
    expected = ref.outputs(ref.ids, ref.seg)
    model = ours(ref, with_pool=True)
    assert_close(run(model, [ref.ids, ref.seg]), expected["pool"], what=f"{key} pooler")


def test_padding_does_not_change_real_positions(reference):
    key, ref = reference
    model = ours(ref, **ref.heads)
    padded = run(model, [ref.ids, ref.seg])
    n = int(ref.mask[1].sum())
    alone = run(model, [ref.ids[1:2, :n], ref.seg[1:2, :n]])
    expected = ref.outputs(ref.ids[1:2, :n], ref.seg[1:2, :n])
    if isinstance(padded, list):
        padded, alone = padded[-1], alone[-1]
    if key == "electra":
        expected_head = expected["head"][..., None]
    else:
        expected_head = expected["head"]
    assert_close(padded[1:2, :n], alone, what=f"{key} padded vs unpadded")
    assert_close(alone, expected_head, what=f"{key} unpadded vs reference")
