"""examples/pretrain_chinese_small.py --smoke as a user runs it (a subprocess on the current
backend), then its outputs: both checkpoints reload with `build_transformer_model` and give
the trained model's MLM logits, and the HF directory loads in transformers' BertForMaskedLM
with the same logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.tokenizers import Tokenizer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pretrain_chinese_small.py"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--smoke", "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_smoke_run_trains_and_reports(smoke_run):
    out, stdout = smoke_run
    assert "held-out MLM accuracy" in stdout
    report = json.loads((out / "report.json").read_text())
    curve = report["curve"]
    assert [row["step"] for row in curve] == [3, 6]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]  # it learns
    assert all(0 <= row["heldout_accuracy"] <= 1 for row in curve)
    assert report["backend"] == keras.backend.backend()
    # the vocabulary is bert-base-chinese's, shrunk to what the corpus uses
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert report["vocab_size"] == Tokenizer(str(out / "vocab.txt")).vocab_size < 21128


def test_checkpoints_reload_with_the_trained_logits(smoke_run):
    out, _ = smoke_run
    sample = np.load(out / "sample_logits.npz")
    x = [sample["token_ids"], sample["segment_ids"]]
    google = build_transformer_model(
        str(out / "bert_config.json"), str(out / "bert_model.ckpt"), with_mlm="linear"
    )
    hf = build_transformer_model(checkpoint_path=str(out / "hf"), with_mlm="linear")
    for model in (google, hf):
        logits = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(logits, sample["logits"], atol=1e-5, rtol=0)


def test_hf_export_in_transformers(smoke_run):
    import torch
    import transformers

    out, _ = smoke_run
    sample = np.load(out / "sample_logits.npz")
    model, info = transformers.BertForMaskedLM.from_pretrained(
        str(out / "hf"), output_loading_info=True
    )
    assert not any(info.values()), info
    with torch.no_grad():
        ids = torch.from_numpy(sample["token_ids"].astype("int64"))
        logits = model.eval()(
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            token_type_ids=torch.from_numpy(sample["segment_ids"].astype("int64")),
        ).logits.numpy()
    real = sample["token_ids"] != 0
    assert np.abs(logits - sample["logits"])[real].max() <= 1e-4
