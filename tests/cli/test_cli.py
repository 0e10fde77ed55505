"""The `kerasformers` command line, run in-process through `main([...])` (one real run of
the installed console script at the end). Backend-independent: every command's numbers
are compared with the library called directly in the same process."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from kerasformers import build_transformer_model
from kerasformers.cli import main
from kerasformers.tokenizers import from_pretrained
from tests.cli.conftest import TINY

TEXTS = ["今天天气很好", "我爱北京天安门，天安门上太阳升", "你好"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ convert
def test_round_trip_hf_google_hf(bert_dir, tmp_path, capsys):
    google, back = str(tmp_path / "google"), str(tmp_path / "hf")
    code, out, _ = run(capsys, "convert", bert_dir, google, "--to", "google")
    assert code == 0, out
    assert "max |difference| of the weights = 0" in out
    assert sorted(os.listdir(google)) == [
        "bert_config.json",
        "bert_model.ckpt.data-00000-of-00001",
        "bert_model.ckpt.index",
        "checkpoint",
        "vocab.txt",
    ]
    code, out, _ = run(capsys, "convert", google, back, "--to", "hf")
    assert code == 0, out
    assert sorted(os.listdir(back)) == ["config.json", "model.safetensors", "vocab.txt"]
    first, last = (
        load_file(os.path.join(bert_dir, "model.safetensors")),
        load_file(os.path.join(back, "model.safetensors")),
    )
    assert sorted(first) == sorted(last)  # every head kept: MLM, pooler, NSP
    for name in first:
        np.testing.assert_array_equal(first[name], last[name], err_msg=name)


@pytest.mark.parametrize(
    "model, heads",
    [
        ("roberta", dict(with_mlm=True)),
        ("albert", dict(with_mlm=True, with_nsp=True)),
        ("nezha", dict(with_mlm=True, with_nsp=True)),
        ("electra", dict(with_discriminator=True)),
        ("roformer", dict(with_mlm=True, with_nsp=True)),
    ],
)
def test_round_trip_of_every_bert_family_model(tmp_path, capsys, model, heads):
    source, google, back = (str(tmp_path / name) for name in ("src", "google", "back"))
    transformer = build_transformer_model(
        None, model=model, vocab_size=64, return_keras_model=False, **TINY, **heads
    )
    transformer.save_weights_as_checkpoint(source, naming="hf")
    assert run(capsys, "convert", source, google, "--to", "google")[0] == 0
    code, out, _ = run(capsys, "info", google)
    assert code == 0 and f"model: {model} " in out
    assert run(capsys, "convert", google, back, "--to", "hf")[0] == 0
    first = load_file(os.path.join(source, "model.safetensors"))
    last = load_file(os.path.join(back, "model.safetensors"))
    assert sorted(first) == sorted(last)
    for name in first:
        np.testing.assert_array_equal(first[name], last[name], err_msg=name)


def test_convert_float16_rounds_the_weights(bert_dir, tmp_path, capsys):
    out_dir = str(tmp_path / "half")
    code, out, _ = run(capsys, "convert", bert_dir, out_dir, "--to", "hf", "--dtype", "float16")
    assert code == 0
    stored = load_file(os.path.join(out_dir, "model.safetensors"))
    source = load_file(os.path.join(bert_dir, "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {np.dtype("float16")}
    worst = max(float(np.max(np.abs(source[k] - stored[k].astype("float32")))) for k in source)
    assert 0 < worst < 1e-3
    assert f"max |difference| of the weights = {worst:.3g}" in out


def test_convert_refuses_a_non_empty_destination_and_changes_nothing(bert_dir, tmp_path, capsys):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "convert", bert_dir, str(dst), "--to", "google")
    assert code == 2
    assert f"DST {str(dst)!r} exists and is not an empty directory" in err
    assert os.listdir(dst) == ["keep.txt"]


# --------------------------------------------------------------------- info
def test_info_lists_config_parameters_and_weight_table(bert_dir, capsys):
    code, out, _ = run(capsys, "info", bert_dir)
    assert code == 0
    model = build_transformer_model(checkpoint_path=bert_dir, with_mlm=True, with_nsp=True)
    assert "model: bert (BERT)" in out
    assert "heads: with_mlm, with_nsp, with_pool" in out
    assert f"parameters: {model.count_params():,}" in out
    assert "  num_hidden_layers: 2" in out
    n = len(model.weights)
    assert f"weights: {n} of {n} load" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("Embedding-Token/embeddings"))
    assert line.split() == [
        "Embedding-Token/embeddings",
        "(21128,",
        "32)",
        "bert.embeddings.word_embeddings.weight",
        "loaded",
    ]
    assert "unused checkpoint tensors: 0" in out


def test_info_names_missing_and_unused_tensors(bert_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(bert_dir, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["bert.encoder.layer.1.output.dense.bias"]
    tensors["extra.weight"] = np.ones((3, 4), "float32")
    save_file(tensors, str(broken / "model.safetensors"))
    code, out, _ = run(capsys, "info", str(broken))
    assert code == 0
    line = next(l for l in out.splitlines() if "Transformer-1-FeedForward/o_dense/bias" in l)
    assert line.split()[-1] == "MISSING"
    assert "unused checkpoint tensors: 1\n  extra.weight  (3, 4)" in out


# ------------------------------------------------------------------- encode
def eager(model, *inputs):
    """The model called directly (no compiled predict: one call per shape is cheap)."""
    return keras.ops.convert_to_numpy(model([np.array(x) for x in inputs], training=False))


def test_encode_equals_the_model_called_per_text(bert_dir, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    model = build_transformer_model(checkpoint_path=bert_dir)
    tokenizer = from_pretrained(bert_dir)
    hidden = [eager(model, [ids], [segments])[0] for ids, segments in map(tokenizer.encode, TEXTS)]
    for pool, expected in (("cls", [h[0] for h in hidden]), ("mean", [h.mean(0) for h in hidden])):
        out_file = str(tmp_path / f"{pool}.npy")
        argv = ["encode", bert_dir, "--input", str(texts), "--output", out_file, "--pool", pool]
        code, out, _ = run(capsys, *argv, "--batch-size", "2")  # batched and padded
        assert code == 0
        vectors = np.load(out_file)
        assert vectors.shape == (3, 32) and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, np.stack(expected), atol=1e-5)


def test_encode_bad_input_file(bert_dir, tmp_path, capsys):
    missing = str(tmp_path / "nope.txt")
    code, _, err = run(capsys, "encode", bert_dir, "--input", missing, "--output", "v.npy")
    assert code == 2 and f"--input {missing!r} is not a file" in err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    code, _, err = run(capsys, "encode", bert_dir, "--input", str(latin), "--output", "v.npy")
    assert code == 2 and "is not UTF-8 text" in err
    assert not os.path.exists("v.npy")


# ---------------------------------------------------------------- fill-mask
def test_fill_mask_equals_the_mlm_head_argmax(bert_dir, capsys):
    code, out, _ = run(capsys, "fill-mask", bert_dir, "今天天气很[MASK]。", "--top-k", "3")
    assert code == 0
    tokenizer = from_pretrained(bert_dir)
    ids = tokenizer.tokens_to_ids(["[CLS]", "今", "天", "天", "气", "很", "[MASK]", "。", "[SEP]"])
    model = build_transformer_model(checkpoint_path=bert_dir, with_mlm=True)
    token_ids = np.array([ids])
    probs = eager(model, token_ids, np.zeros_like(token_ids))[0, 6]
    best = np.argsort(-probs, kind="stable")[:3]
    lines = out.splitlines()
    assert lines[0] == "[MASK] at token 6:"
    assert [l.split("\t")[0].strip() for l in lines[1:]] == tokenizer.ids_to_tokens(best)
    np.testing.assert_allclose([float(l.split("\t")[1]) for l in lines[1:]], probs[best], atol=1e-4)


def test_fill_mask_without_a_mask(bert_dir, capsys):
    code, _, err = run(capsys, "fill-mask", bert_dir, "今天天气很好")
    assert code == 2 and "TEXT '今天天气很好' has no [MASK] token" in err


# ----------------------------------------------------------------- generate
def test_generate_is_greedy_decoding_and_streams_the_same_text(gpt2_dir, capsys):
    prompt = "Hello, my name is"
    code, out, _ = run(capsys, "generate", gpt2_dir, prompt, "--max-new-tokens", "6")
    assert code == 0
    model = build_transformer_model(checkpoint_path=gpt2_dir)
    tokenizer = from_pretrained(gpt2_dir)
    ids, _ = tokenizer.encode(prompt)
    new = []
    for _ in range(6):  # greedy by hand: argmax at the last position of the whole sequence
        sequence = ids + new  # right-padded to one shape (causal: padding after is unseen)
        logits = eager(model, [sequence + [0] * (16 - len(sequence))])[0, len(sequence) - 1]
        new.append(int(np.argmax(logits)))
    assert out == prompt + tokenizer.decode(new) + "\n"
    code, streamed, _ = run(
        capsys, "generate", gpt2_dir, prompt, "--max-new-tokens", "6", "--stream"
    )
    assert code == 0 and streamed == out


def test_generate_sampling_options_need_do_sample(gpt2_dir, capsys):
    code, _, err = run(capsys, "generate", gpt2_dir, "Hi", "--top-p", "0.9", "--seed", "1")
    assert code == 2 and "--top-p, --seed need --do-sample" in err


def test_generate_refuses_an_encoder(bert_dir, capsys):
    code, _, err = run(capsys, "generate", bert_dir, "你好")
    assert code == 2 and "generate needs a causal LM (gpt, gpt2, gpt2_ml), not bert" in err


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/no/such/dir"], "PATH '/no/such/dir' does not exist"),
        (["info", __file__], "is not a directory"),
        (["convert", "x", "y"], "the following arguments are required: --to"),
        (["encode", "x", "--input", "a", "--output", "b", "--batch-size", "0"], "--batch-size"),
        (["info", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--backend", "theano", "info", "x"], "invalid choice: 'theano'"),
        (["serve", "x", "--port", "70000"], "must be in 0..65535"),
    ],
)
def test_bad_arguments_exit_2_naming_them(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_directory_without_config_or_weights(tmp_path, capsys):
    code, _, err = run(capsys, "info", str(tmp_path))
    assert code == 2 and "no config file (config.json / bert_config.json)" in err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run(capsys, "info", str(tmp_path))
    assert code == 2 and "no weights (model.safetensors" in err


def test_unknown_model_key(bert_dir, capsys):
    code, _, err = run(capsys, "info", bert_dir, "--model", "bret")
    assert code == 2 and "--model 'bret' is not known; choose one of albert" in err


def test_backend_cannot_change_after_keras_is_imported(bert_dir, capsys):
    other = next(b for b in ("jax", "torch", "tensorflow") if b != keras.backend.backend())
    code, _, err = run(capsys, "--backend", other, "info", bert_dir)
    assert code == 2 and f"--backend {other}: Keras is already imported" in err


def test_every_command_has_help(capsys):
    for command in ("convert", "info", "encode", "fill-mask", "generate", "export", "serve"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: kerasformers {command}")


# -------------------------------------------------------------------- serve
def test_serve_passes_its_options_to_the_server(bert_dir, capsys, monkeypatch):
    import kerasformers.serving

    calls = []
    monkeypatch.setattr(kerasformers.serving, "serve", lambda *a, **k: calls.append((a, k)))
    argv = ["serve", bert_dir, "--port", "8123", "--max-batch-size", "8", "--max-wait-ms", "2.5"]
    code, _, _ = run(capsys, *argv)
    assert code == 0
    assert calls == [
        ((bert_dir,), dict(host="127.0.0.1", port=8123, max_batch_size=8, max_wait_ms=2.5))
    ]


# --------------------------------------------------- the installed console script
def test_console_script_sets_the_backend_before_keras_is_imported(bert_dir):
    script = shutil.which("kerasformers", path=os.path.dirname(sys.executable))
    assert script is not None, "the kerasformers console script is not installed"
    env = dict(os.environ, KERAS_BACKEND="tensorflow")  # --backend wins over the environment
    done = subprocess.run(
        [script, "--backend", "jax", "info", bert_dir],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "backend: jax\n" in done.stdout and "model: bert (BERT)\n" in done.stdout
