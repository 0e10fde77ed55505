"""Training under keras.distribution equals training on one device; layouts cover our models.

The JAX training runs happen in fresh processes (`distributed_worker.py`) with
KERAS_BACKEND=jax and XLA_FLAGS forcing host devices (4 for the single-host
run, 2 in each process of the two-process run): the device count must be set
before JAX starts, and this pytest process may run on another backend. All
runs start together once per session (pytest-xdist workers share them through
a claim file) and each test checks its own run. The layout-map tests run
here, on any backend.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasformers import build_transformer_model
from kerasformers.pretraining.distribution import (
    data_parallel,
    get_layout_map,
    initialize_multiprocess,
    model_parallel,
)
from tests.pretraining import distributed_worker

WORKER = Path(distributed_worker.__file__)
TIMEOUT = 900  # seconds for all runs together, on a busy 2-core machine
TOLERANCE = 1e-5  # max |difference| of losses and final weights
MOVED = 1e-3  # training must move the weights by more than this (not a vacuous test)


# --- the JAX runs, in subprocesses --------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out, name, args, devices):
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    with open(out / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _run_all(out):
    """Start the single-host run and both processes of the two-process run; wait for all.

    A process still running after TIMEOUT is killed, and so is the partner of
    a failed multi-process worker (it would wait for its peer forever).
    """
    distributed_worker.write_shard(out / "shards")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = {"single": _start(out, "single", ["single", str(out)], 4)}
    for pid in range(2):
        procs[f"multi-{pid}"] = _start(
            out, f"multi-{pid}", ["multi", str(out), coordinator, "2", str(pid)], 2
        )
    status = {}
    deadline = time.monotonic() + TIMEOUT
    while len(status) < len(procs) and time.monotonic() < deadline:
        for name, proc in procs.items():
            if name not in status and proc.poll() is not None:
                status[name] = proc.returncode
        if any(status.get(f"multi-{pid}", 0) != 0 for pid in range(2)):
            for pid in range(2):
                status.setdefault(f"multi-{pid}", "killed: its partner failed")
        time.sleep(0.2)
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        status.setdefault(name, f"killed after the {TIMEOUT} s timeout")
    (out / "status.tmp").write_text(json.dumps(status))
    os.replace(out / "status.tmp", out / "status.json")


class Runs:
    """The output directory of the runs: per-run status, logs and saved results."""

    def __init__(self, out):
        self.out = out
        self.status = json.loads((out / "status.json").read_text())

    def check(self, *names):
        for name in names:
            if self.status[name] != 0:
                log = (self.out / f"{name}.log").read_text()
                pytest.fail(f"worker {name!r} ended with {self.status[name]}; its output:\n{log}")

    def load(self, name):
        with np.load(self.out / f"{name}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Run the workers once per session; xdist workers share the session's parent temp dir."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "distribution_runs"
    out.mkdir(exist_ok=True)
    try:
        os.close(os.open(out / "claimed", os.O_CREAT | os.O_EXCL))
        _run_all(out)
    except FileExistsError:  # another worker runs them; wait for its status file
        deadline = time.monotonic() + TIMEOUT + 60
        while not (out / "status.json").exists():
            if time.monotonic() > deadline:
                pytest.fail("the distribution runs of another pytest worker never finished")
            time.sleep(0.5)
    return Runs(out)


def _weights(run, prefix):
    return [run[k] for k in sorted(run) if k.startswith(prefix)]


def _assert_same_training(reference, other, label):
    assert reference["paths"].tolist() == other["paths"].tolist()
    for a, b in zip(_weights(reference, "i"), _weights(other, "i")):
        np.testing.assert_array_equal(a, b, err_msg=f"{label}: initial weights differ")
    loss_delta = float(np.abs(reference["losses"] - other["losses"]).max())
    weight_delta = max(
        float(np.abs(a - b).max()) for a, b in zip(_weights(reference, "w"), _weights(other, "w"))
    )
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(_weights(reference, "w"), _weights(reference, "i"))
    )
    print(
        f"{label}: max |dloss| {loss_delta:.3g}, max |dweight| {weight_delta:.3g} "
        f"(weights moved up to {moved:.3g})"
    )
    assert len(reference["losses"]) == len(other["losses"]) == 5
    assert loss_delta <= TOLERANCE
    assert weight_delta <= TOLERANCE
    assert moved > MOVED


def test_data_parallel_over_4_devices_trains_as_one_device(runs):
    runs.check("single")
    _assert_same_training(runs.load("single"), runs.load("data_parallel"), "DataParallel(4)")


def test_model_parallel_on_a_2x2_mesh_trains_as_one_device_with_sharded_weights(runs):
    runs.check("single")
    _assert_same_training(runs.load("single"), runs.load("model_parallel"), "ModelParallel(2, 2)")
    report = json.loads((runs.out / "sharding.json").read_text())
    assert report["devices"] == 4
    split = {path for path, (spec, pieces) in report["weights"].items() if "model" in spec}
    for path, (spec, pieces) in report["weights"].items():
        assert pieces == (2 if path in split else 1), (path, spec, pieces)
    layer = [
        f"Transformer-{i}-{name}"
        for i in range(2)
        for name in (
            "MultiHeadSelfAttention/q_dense/kernel",
            "MultiHeadSelfAttention/q_dense/bias",
            "MultiHeadSelfAttention/k_dense/kernel",
            "MultiHeadSelfAttention/k_dense/bias",
            "MultiHeadSelfAttention/v_dense/kernel",
            "MultiHeadSelfAttention/v_dense/bias",
            "MultiHeadSelfAttention/o_dense/kernel",
            "FeedForward/i0_dense/kernel",
            "FeedForward/i0_dense/bias",
            "FeedForward/o_dense/kernel",
        )
    ]
    assert split == {"Embedding-Token/embeddings", "MLM-Bias/beta", *layer}


def test_two_processes_with_two_devices_each_train_as_one_process_with_four(runs):
    runs.check("single", "multi-0", "multi-1")
    _assert_same_training(
        runs.load("data_parallel"), runs.load("multi"), "2 processes x DataParallel(2)"
    )


# --- the layout map, on the current backend ------------------------------------------------------

TINY = dict(
    vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
# One model per family of layer names (NEZHA, GPT, ALBERT unshared and T5.1.0
# use a subset of the names below).
MODELS = [
    ("bert", dict(with_mlm="linear", embedding_size=16, with_pool=True, with_nsp=True)),
    ("bert", dict(with_mlm="linear", prefix="Student-")),
    ("albert", dict(with_mlm="linear", embedding_size=16)),
    ("electra", dict(with_discriminator=True)),
    ("roformer", dict(with_mlm="linear")),
    ("roformer_v2", dict(with_mlm="linear", embedding_size=16)),
    ("gpt2", dict()),
    ("gpt2_ml", dict()),
    ("t5.1.1", dict()),
]


@pytest.mark.parametrize(
    "model_name, options",
    MODELS,
    ids=[m + ("-prefixed" if "prefix" in o else "") for m, o in MODELS],
)
def test_every_weight_has_exactly_one_layout_of_its_rank(model_name, options):
    """No weight falls through to Keras' silent default: each is split or listed as replicated."""
    mesh = keras.distribution.DeviceMesh(
        (2, 2), ("batch", "model"), devices=[f"cpu:{i}" for i in range(4)]
    )
    model = build_transformer_model(None, model=model_name, **TINY, **options)
    for data_axis in (None, "batch"):
        layout_map = get_layout_map(mesh, data_axis=data_axis)
        for v in model.weights:
            layout = layout_map[v.path]  # LayoutMap raises if two rules match
            assert layout is not None, f"{model_name}: {v.path} matches no rule"
            assert len(layout.axes) == len(v.shape), (v.path, layout.axes, v.shape)
            for axis, size in zip(layout.axes, v.shape):
                assert axis is None or size % 2 == 0, (v.path, layout.axes, v.shape)
    model_split = {v.path for v in model.weights if "model" in layout_map[v.path].axes}
    assert any(p.endswith("Embedding-Token/embeddings") for p in model_split)
    assert any("q_dense/kernel" in p for p in model_split)
    assert any("FeedForward/o_dense/kernel" in p for p in model_split)


def test_t5_1_1_splits_both_gated_inputs_and_the_untied_lm_head():
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices=["cpu:0", "cpu:1"])
    layout_map = get_layout_map(mesh)
    assert layout_map["Decoder-Transformer-3-FeedForward/i1_dense/kernel"].axes == (None, "model")
    assert layout_map["Decoder-Transformer-0-MultiHeadCrossAttention/o_dense/kernel"].axes == (
        "model",
        None,
    )
    assert layout_map["Decoder-Output-LM/kernel"].axes == (None, "model")
    assert layout_map["Encoder-Embedding-Relative-Position/embeddings"].axes == (None, None)


def test_helpers_build_the_keras_distributions():
    devices = [f"cpu:{i}" for i in range(4)]
    dist = data_parallel(devices)
    assert isinstance(dist, keras.distribution.DataParallel)
    assert dist.device_mesh.shape == (4,) and not dist.auto_shard_dataset
    dist = model_parallel(2, devices, fully_sharded=True)
    assert isinstance(dist, keras.distribution.ModelParallel)
    assert dist.device_mesh.shape == (2, 2)
    kernel = "Transformer-0-FeedForward/i0_dense/kernel"
    assert dist._layout_map[kernel].axes == ("batch", "model")
    with pytest.raises(ValueError, match="must divide the number of devices"):
        model_parallel(3, devices)


def test_clear_errors():
    mesh = keras.distribution.DeviceMesh((2,), ("data",), devices=["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match=r"model_axis='model' is not an axis .*\['data'\]"):
        get_layout_map(mesh)
    with pytest.raises(TypeError, match="DeviceMesh"):
        get_layout_map((2, 2))


def test_initialize_multiprocess_refuses_other_backends_and_bad_process_ids(monkeypatch):
    for backend in ("torch", "tensorflow"):
        monkeypatch.setattr(keras.backend, "backend", lambda backend=backend: backend)
        with pytest.raises(
            RuntimeError, match=f"KERAS_BACKEND={backend} kerasformers trains on a single device"
        ):
            initialize_multiprocess("127.0.0.1:1234", 2, 0)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match=r"process_id must lie in \[0, 2\), got 2"):
        initialize_multiprocess("127.0.0.1:1234", 2, 2)
