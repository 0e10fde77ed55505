"""`kerasformers export` on the backend under test: ONNX on torch (run by onnxruntime), a TF
SavedModel on jax and tensorflow; the artefact's outputs equal ours within 1e-4, and the
format a backend cannot export is refused before anything is written."""

import os

import keras
import numpy as np

from kerasformers import build_transformer_model
from kerasformers.cli import main

FORMAT = "onnx" if keras.backend.backend() == "torch" else "tf_saved_model"
OTHER = "tf_saved_model" if FORMAT == "onnx" else "onnx"


def test_export_matches_our_model(bert_dir, tmp_path, capsys):
    out = str(tmp_path / ("bert.onnx" if FORMAT == "onnx" else "bert_saved_model"))
    argv = ["export", bert_dir, out, "--format", FORMAT, "--batch-size", "2", "--max-length", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert float(printed.rsplit("= ", 1)[1]) <= 1e-4
    model = build_transformer_model(checkpoint_path=bert_dir)
    rng = np.random.default_rng(1)
    token_ids = rng.integers(1, 21128, (2, 8)).astype("int32")
    segment_ids = (np.arange(8) >= 5).astype("int32")[None].repeat(2, 0)
    ours = keras.ops.convert_to_numpy(model([token_ids, segment_ids], training=False))
    if FORMAT == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        theirs = session.run(None, dict(zip(names, [token_ids, segment_ids])))[0]
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(out)
        theirs = np.asarray(loaded.serve([token_ids, segment_ids]))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_export_refuses_a_format_this_backend_cannot_write(bert_dir, tmp_path, capsys):
    out = str(tmp_path / "other")
    assert main(["export", bert_dir, out, "--format", OTHER]) == 2
    assert f"--format {OTHER} needs --backend" in capsys.readouterr().err
    assert not os.path.exists(out)
