"""Build tiny reference fixtures for NEZHA from HuggingFace transformers 4.57.6.

transformers 5.x dropped NEZHA, so this script must be run with a separate
environment that pins the last release that still ships it:

    python3 -m venv /work/venv-nezha
    /work/venv-nezha/bin/pip install torch==2.13.0 transformers==4.57.6 safetensors numpy
    /work/venv-nezha/bin/python scripts/make_nezha_fixtures.py [OUT_DIR]

OUT_DIR defaults to ``tests/fixtures/nezha`` next to this script's repo root.
It writes:

* ``config.json`` + ``model.safetensors`` -- a small random ``NezhaForPreTraining``
  (pooler, MLM head ``cls.predictions.*`` and NSP head ``cls.seq_relationship.*``),
  saved with ``save_pretrained(..., safe_serialization=True)``;
* ``expected.npz`` -- fixed inputs and the float32 reference outputs;
* ``README.md`` -- how the fixtures were made.

The script is deterministic: re-running it reproduces the same files.
"""

import os
import sys

import numpy as np
import torch
import transformers
from transformers import NezhaConfig, NezhaForPreTraining

SEED = 1234

CONFIG = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    max_relative_position=64,
    type_vocab_size=2,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout=0.0,
    layer_norm_eps=1e-12,
    initializer_range=0.02,
    # Recorded for NEZHA checkpoints' sake; transformers' NEZHA always uses
    # relative positions and ignores this key (it only lands in config.json).
    use_relative_position=True,
)

# Fixed batch: 3 x 11, ids in 1..119, rows padded with trailing zeros to
# lengths 11, 7 and 4.
LENGTHS = [11, 7, 4]
SEQ_LEN = 11


def make_inputs():
    rng = np.random.RandomState(SEED)
    token_ids = rng.randint(1, CONFIG["vocab_size"], size=(3, SEQ_LEN)).astype(np.int64)
    segment_ids = np.zeros((3, SEQ_LEN), dtype=np.int64)
    # Row 0: "A A A A A B B B B B B"; row 1: "A A A B B B B"; row 2: "A A B B".
    segment_ids[0, 5:] = 1
    segment_ids[1, 3:] = 1
    segment_ids[2, 2:] = 1
    for row, n in enumerate(LENGTHS):
        token_ids[row, n:] = 0
        segment_ids[row, n:] = 0
    return token_ids, segment_ids


def randomize_(model, generator):
    """Overwrite every parameter with non-trivial random values."""

    def normal(shape, std):
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std

    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params are visited once
            if "LayerNorm" in name and name.endswith(".weight"):
                p.copy_(1.0 + normal(p.shape, 0.1))
            elif "LayerNorm" in name and name.endswith(".bias"):
                p.copy_(normal(p.shape, 0.1))
            elif name.endswith("bias"):  # includes cls.predictions.bias
                p.copy_(normal(p.shape, 0.1))
            else:  # weight matrices and embedding tables
                p.copy_(normal(p.shape, 0.2))


def run(model, token_ids, segment_ids):
    ids = torch.from_numpy(token_ids)
    seg = torch.from_numpy(segment_ids)
    mask = (ids != 0).long()
    with torch.no_grad():
        base = model.nezha(input_ids=ids, attention_mask=mask, token_type_ids=seg, return_dict=True)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=seg, return_dict=True)
    return {
        "sequence_output": base.last_hidden_state.numpy().astype(np.float32),
        "pooled_output": base.pooler_output.numpy().astype(np.float32),
        "mlm_logits": out.prediction_logits.numpy().astype(np.float32),
        "nsp_logits": out.seq_relationship_logits.numpy().astype(np.float32),
    }


README = """\
# NEZHA reference fixtures

Made by `scripts/make_nezha_fixtures.py` with transformers {tf_version} and
torch {torch_version} (NEZHA was removed in transformers 5.x):

    python3 -m venv /work/venv-nezha
    /work/venv-nezha/bin/pip install torch=={torch_pin} transformers=={tf_version} safetensors numpy
    /work/venv-nezha/bin/python scripts/make_nezha_fixtures.py

Files:

* `config.json`, `model.safetensors`: a random `NezhaForPreTraining`
  (seed {seed}; vocab 120, hidden 32, 2 layers, 4 heads, intermediate 64,
  max_position_embeddings 64, max_relative_position 64, gelu (erf), no dropout,
  layer_norm_eps 1e-12). Weights are N(0, 0.2) for matrices/embeddings,
  N(0, 0.1) for biases (including `cls.predictions.bias`), LayerNorm gamma
  1 + N(0, 0.1), beta N(0, 0.1). The MLM decoder weight is tied to the word
  embedding and is therefore not stored separately.
* `expected.npz`, float32 outputs for a 3 x 11 batch (`token_ids`,
  `segment_ids`; padding id 0, row lengths 11, 7, 4; attention mask =
  `token_ids != 0`): `sequence_output`, `pooled_output`, `mlm_logits`,
  `nsp_logits`. The `*_unpadded` keys hold the same for row 1 alone
  (length 7, no padding), to check padding invariance:
  `sequence_output_unpadded` should equal `sequence_output[1:2, :7]`.

Caveats: `use_relative_position` in config.json is not a `NezhaConfig` field
(transformers' NEZHA is always relative and ignores it). With
max_relative_position 64 >= max_position_embeddings - 1, relative distances
are never clipped, so these fixtures do not exercise clipping.
"""


def main():
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = (
        sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo_root, "tests", "fixtures", "nezha")
    )
    os.makedirs(out_dir, exist_ok=True)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    config = NezhaConfig(**CONFIG)
    model = NezhaForPreTraining(config).eval().float()
    randomize_(model, torch.Generator().manual_seed(SEED))
    model.tie_weights()
    assert (
        model.cls.predictions.decoder.weight.data_ptr()
        == model.nezha.embeddings.word_embeddings.weight.data_ptr()
    ), "MLM decoder weight is not tied to the word embedding"

    model.save_pretrained(out_dir, safe_serialization=True)

    token_ids, segment_ids = make_inputs()
    outputs = run(model, token_ids, segment_ids)
    row = 1
    n = LENGTHS[row]
    token_ids_u = token_ids[row : row + 1, :n].copy()
    segment_ids_u = segment_ids[row : row + 1, :n].copy()
    outputs_u = run(model, token_ids_u, segment_ids_u)

    # Sanity checks: the reloaded model gives the same numbers and padding
    # does not change the unpadded row.
    reloaded = NezhaForPreTraining.from_pretrained(out_dir).eval()
    again = run(reloaded, token_ids, segment_ids)
    for k, v in outputs.items():
        np.testing.assert_allclose(again[k], v, rtol=0, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(
        outputs_u["sequence_output"], outputs["sequence_output"][row : row + 1, :n], atol=1e-5
    )
    np.testing.assert_allclose(
        outputs_u["pooled_output"], outputs["pooled_output"][row : row + 1], atol=1e-5
    )
    np.testing.assert_allclose(
        outputs_u["mlm_logits"], outputs["mlm_logits"][row : row + 1, :n], atol=1e-4
    )
    np.testing.assert_allclose(
        outputs_u["nsp_logits"], outputs["nsp_logits"][row : row + 1], atol=1e-5
    )

    arrays = {"token_ids": token_ids, "segment_ids": segment_ids}
    arrays.update(outputs)
    arrays["token_ids_unpadded"] = token_ids_u
    arrays["segment_ids_unpadded"] = segment_ids_u
    arrays.update({k + "_unpadded": v for k, v in outputs_u.items()})
    np.savez_compressed(os.path.join(out_dir, "expected.npz"), **arrays)

    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(
            README.format(
                tf_version=transformers.__version__,
                torch_version=torch.__version__,
                torch_pin=torch.__version__.split("+")[0],
                seed=SEED,
            )
        )

    print(
        f"wrote fixtures to {out_dir} (transformers {transformers.__version__}, "
        f"torch {torch.__version__})"
    )
    for k, v in arrays.items():
        if v.dtype == np.float32:
            print(f"  {k:28s} shape={str(v.shape):14s} max|x|={np.abs(v).max():.4f}")


if __name__ == "__main__":
    main()
