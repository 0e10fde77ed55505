"""Streamed, lean checkpoint loading (issue #19).

* `build_transformer_model` with a checkpoint never runs the initializer of a weight the
  checkpoint provides; the weights it does not provide get their real random init.
* Tensor-by-tensor loading equals a plain read of the file (an independent reader, the
  transform of each table row, the dtype cast) bit for bit, for every format and for
  float32 and bfloat16 models, on a fresh build and on a model that already has values.
* A failure found late in the file (NaN in the last tensor read, a CRC mismatch in the
  last TF tensor) leaves an existing model bit-identical, and a failed build leaves no
  variable waiting in Keras' list.
* Peak memory of loading a ~200 MB checkpoint, measured in a fresh process (VmHWM after
  resetting it, minus VmRSS before): <= 1.25x the model's size for safetensors, sharded
  safetensors, .bin and a TF checkpoint, and <= 0.7x the float32 size for dtype='bfloat16'.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

from kerasformers import build_transformer_model
from kerasformers.checkpoints.bfloat16 import numpy_bfloat16
from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.loader import as_key
from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint

TINY = dict(
    model="gpt2",
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position=16,
    return_keras_model=False,
)


def export(naming, seed=0):
    """{name: float32 array} in `naming` for TINY, values unlike any initializer's."""
    rng = np.random.default_rng(seed)
    names = build_transformer_model(None, **TINY).export_weights(naming)
    return {k: rng.standard_normal(v.shape).astype("float32") for k, v in sorted(names.items())}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """TINY's weights as model.safetensors, two shards + index, pytorch_model.bin, TF."""
    import torch
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("streamed")
    hf, google = export("hf"), export("google", seed=1)
    out = {}
    os.makedirs(root / "st")
    save_file(hf, str(root / "st" / "model.safetensors"))
    out["safetensors"] = (str(root / "st" / "model.safetensors"), hf)
    names = sorted(hf)
    os.makedirs(root / "sharded")
    save_file({k: hf[k] for k in names[::2]}, str(root / "sharded" / "a.safetensors"))
    save_file({k: hf[k] for k in names[1::2]}, str(root / "sharded" / "b.safetensors"))
    weight_map = {k: "a.safetensors" for k in names[::2]} | {
        k: "b.safetensors" for k in names[1::2]
    }
    index = root / "sharded" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    out["sharded"] = (str(index), hf)
    os.makedirs(root / "bin")
    torch.save({k: torch.from_numpy(v) for k, v in hf.items()}, root / "bin" / "pytorch_model.bin")
    out["bin"] = (str(root / "bin" / "pytorch_model.bin"), hf)
    out["tf"] = (save_tf_checkpoint(str(root / "tf" / "model.ckpt"), google), google)
    return out


def expected(transformer, tensors, naming):
    """The reference: each table row's tensor from a plain dict read, transformed, cast."""
    column = {"google": 1, "hf": 2}[naming]
    variables = transformer.variables()
    want = {}
    for row in transformer.weight_table():
        key = as_key(row[column])
        if key is None or row[0] not in variables:
            continue
        dtype = str(variables[row[0]].dtype)
        target = numpy_bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
        want[row[0]] = np.asarray(key.to_ours(tensors[key.name])).astype(target)
    return want


def assert_loaded(transformer, want):
    got = {v.path: v for v in transformer.model.weights}
    assert sorted(want) == sorted(got)  # the table covers every weight of TINY
    for path, value in want.items():
        ours = np.asarray(got[path].numpy())
        assert ours.dtype == value.dtype, path
        assert ours.tobytes() == value.tobytes(), f"{path} differs from a plain read"


def naming_of(fmt):
    return "google" if fmt == "tf" else "hf"


@pytest.mark.parametrize(
    ("fmt", "dtype", "existing"),
    [
        ("safetensors", None, True),  # and into a model that has values: two passes
        ("sharded", None, False),
        ("bin", None, False),
        ("tf", None, False),
        ("safetensors", "bfloat16", False),
        ("tf", "bfloat16", False),
    ],
)
def test_streamed_load_equals_a_plain_read_bit_for_bit(fmt, dtype, existing, files):
    path, tensors = files[fmt]
    fresh = build_transformer_model(checkpoint_path=path, dtype=dtype, **TINY)
    want = expected(fresh, tensors, naming_of(fmt))
    assert_loaded(fresh, want)
    if existing:
        model = build_transformer_model(None, dtype=dtype, **TINY)
        model.load_weights_from_checkpoint(path)
        assert_loaded(model, want)


def test_no_loaded_weight_is_randomly_initialised_first(files, monkeypatch):
    """Every weight made by an initializer passes through one Keras method: count them."""
    calls = []
    original = keras.Variable._initialize_with_initializer  # the backend's Variable

    def traced(self, initializer):
        calls.append(self.path)
        return original(self, initializer)

    monkeypatch.setattr(keras.Variable, "_initialize_with_initializer", traced)
    path, _ = files["safetensors"]
    build_transformer_model(checkpoint_path=path, **TINY)
    assert calls == []
    build_transformer_model(None, **TINY)
    assert len(calls) > 20  # the tracer does see a build without a checkpoint


def test_weights_the_checkpoint_lacks_get_their_random_init(files, monkeypatch):
    calls = []
    original = keras.Variable._initialize_with_initializer  # the backend's Variable

    def traced(self, initializer):
        calls.append(self.path)
        return original(self, initializer)

    monkeypatch.setattr(keras.Variable, "_initialize_with_initializer", traced)
    _, tensors = files["safetensors"]
    lacking = dict(tensors)
    del lacking["transformer.h.0.mlp.c_fc.weight"]
    with pytest.warns(UserWarning, match="missing"):
        model = build_transformer_model(
            checkpoint_path=lacking, ignore_invalid_weights=True, **TINY
        )
    assert calls == ["Transformer-0-FeedForward/i0_dense/kernel"]
    kernel = next(v for v in model.model.weights if v.path == calls[0]).numpy()
    assert 0.01 < kernel.std() < 0.03  # TruncatedNormal(0.02), the model's initializer
    assert not global_state.get_global_attribute("uninitialized_variables")


def _last_read(tensors):
    return sorted(tensors)[-1]


@pytest.mark.parametrize("fmt", ["safetensors", "tf"])
def test_a_late_failure_leaves_an_existing_model_unchanged(fmt, files, tmp_path):
    from safetensors.numpy import save_file

    path, tensors = files[fmt]
    model = build_transformer_model(checkpoint_path=path, **TINY)
    before = {v.path: np.array(v.numpy()) for v in model.model.weights}
    if fmt == "safetensors":  # NaN in the tensor read last
        bad = dict(tensors)
        bad[_last_read(bad)] = np.full_like(bad[_last_read(bad)], np.nan)
        bad = {k: v + 1 if k != _last_read(bad) else v for k, v in bad.items()}
        save_file(bad, str(tmp_path / "model.safetensors"))
        target, match = str(tmp_path / "model.safetensors"), "not finite"
    else:  # flip a byte of the last tensor in the data file: CRC32C mismatch
        target = save_tf_checkpoint(
            str(tmp_path / "model.ckpt"), {k: v + 1 for k, v in tensors.items()}
        )
        data = tmp_path / "model.ckpt.data-00000-of-00001"
        raw = bytearray(data.read_bytes())
        raw[-3] ^= 0xFF
        data.write_bytes(bytes(raw))
        match = "CRC32C mismatch"
    with pytest.raises(CheckpointError, match=match):
        model.load_weights_from_checkpoint(target)
    for v in model.model.weights:
        assert np.array(v.numpy()).tobytes() == before[v.path].tobytes(), f"{v.path} changed"
    with pytest.raises(CheckpointError, match=match):  # a build that fails leaves no waiting
        build_transformer_model(checkpoint_path=target, **TINY)
    assert not global_state.get_global_attribute("uninitialized_variables")


MEMORY_CHILD = r"""
import ctypes, gc, json, sys
import numpy as np
from kerasformers import build_transformer_model

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

config, cases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import torch  # the .bin reader's library: imported before, as any library (not load memory)
out = {}
trim = ctypes.CDLL("libc.so.6").malloc_trim
for name, path, dtype in cases:
    gc.collect()
    trim(0)  # the previous model's memory goes back to the system: "before" is honest
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    model = build_transformer_model(checkpoint_path=path, dtype=dtype, **config)
    peak = status("VmHWM") - before
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    out[name] = [peak, size]
    del model
print("RESULT " + json.dumps(out))
"""

BIG = dict(
    model="gpt2",
    vocab_size=2000,
    hidden_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    intermediate_size=4096,
    max_position=64,
)


@pytest.fixture
def scratch(tmp_path):
    """A folder in RAM (/dev/shm) when there is one: the files are written and read at
    memory speed (the bound, not the disk, is tested), and removed afterwards."""
    import shutil
    import tempfile

    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="kerasformers-test-")
    try:
        yield pathlib.Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_peak_memory_of_a_200mb_load_stays_under_the_bound(scratch):
    """A 53M-parameter GPT-2 (210 MB float32) from safetensors (float32 and bfloat16),
    .bin and a TF checkpoint, each measured in one fresh process: the load's own peak
    RSS <= 1.25x the model's size (bfloat16: <= 0.7x the float32 size)."""
    import torch
    from safetensors.numpy import save_file

    from kerasformers.checkpoints import deferred
    from kerasformers.models import GPT2

    transformer = GPT2(**{k: v for k, v in BIG.items() if k != "model"})
    with deferred.deferred_build() as created:  # shapes only: nothing allocated
        transformer.build()
    variables = transformer.variables()
    shapes = {"hf": {}, "google": {}}
    for row in transformer.weight_table():
        for naming, column in (("google", 1), ("hf", 2)):
            key = as_key(row[column])
            if key is not None and row[0] in variables:
                shapes[naming][key.name] = key.stored_shape(variables[row[0]].shape)
    deferred.forget(created)
    # the values do not matter here (the bit-for-bit tests check them): constants write fast
    hf = {k: np.full(s, 0.01, np.float32) for k, s in shapes["hf"].items()}
    save_file(hf, str(scratch / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in hf.items()}, scratch / "pytorch_model.bin")
    del hf
    google = {k: np.full(s, 0.01, np.float32) for k, s in shapes["google"].items()}
    prefix = save_tf_checkpoint(str(scratch / "model.ckpt"), google)
    del google
    cases = [
        ("safetensors", str(scratch / "model.safetensors"), None),
        ("bfloat16", str(scratch / "model.safetensors"), "bfloat16"),
        ("bin", str(scratch / "pytorch_model.bin"), None),
        ("tf", prefix, None),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, json.dumps(BIG), json.dumps(cases)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT ") :])
    float32 = out["safetensors"][1]
    assert float32 > 200e6
    for name, (peak, size) in out.items():
        bound = 0.7 * float32 if name == "bfloat16" else 1.25 * size
        assert peak <= bound, f"{name}: load peak {peak / 1e6:.0f} MB > {bound / 1e6:.0f} MB"
