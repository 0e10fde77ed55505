"""Shared test helpers: random reference models, running ours, comparing."""

import os
import re
import warnings
from unittest import mock

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
TOL = 1e-4


#: the 1-D `.weight`s that are norm gains, per HF family: BERT-like `LayerNorm`,
#: T5 / ALBERT / RoBERTa-head `layer_norm`, GPT-2 `ln_1` / `ln_2` / `ln_f`
NORM_GAIN = re.compile(r"(LayerNorm|layer_norm|\bln_\w+)\.weight$")


def randomize_torch(model, seed=0):
    """Give an HF model weights far from init, so wrong maths cannot pass: matrices
    std 0.2, biases std 0.1, norm gains 1 + 0.1 noise. Every 1-D `.weight` must be a
    norm gain (`NORM_GAIN`): GPT-2's `ln_*` gains were once missed, set near 0, and
    its greedy output was one token at 26 of 30 positions (issue #20); an unknown
    1-D weight is an error, not a guess."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:  # RoFormer's fixed sinusoidal table
                continue
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith(".weight"):
                if not NORM_GAIN.search(name):
                    raise ValueError(f"randomize_torch: {name} is 1-D but not a known norm gain")
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.2 if p.ndim > 1 else 0.1))
    return model.eval()


def randomize_keras(model, seed=0):
    """Our model's weights far from init: norm gammas 1 + 0.1 noise, the rest std 0.2."""
    rng = np.random.RandomState(seed)
    for w in model.weights:
        if w.path.endswith("gamma"):
            value = 1.0 + 0.1 * rng.normal(size=w.shape)
        else:
            value = 0.2 * rng.normal(size=w.shape)
        w.assign(value.astype("float32"))
    return model


def batch(vocab_size=99, lengths=(11, 7, 4), pad=0, seed=0, segments=True, low=3):
    """Token ids with trailing padding (rows of the given lengths) and segment ids."""
    rng = np.random.RandomState(seed)
    n = max(lengths)
    ids = rng.randint(low, vocab_size, (len(lengths), n)).astype("int32")
    seg = np.zeros_like(ids)
    for i, length in enumerate(lengths):
        ids[i, length:] = pad
        if segments:
            seg[i, length // 2 : length] = 1
    return ids, seg


def to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [to_numpy(t) for t in x]
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def run(model, inputs):
    return to_numpy(model(inputs, training=False))


def assert_close(ours, ref, mask=None, tol=TOL, what=""):
    ours, ref = np.asarray(ours, "float32"), np.asarray(ref, "float32")
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    diff = np.abs(ours - ref)
    if mask is not None:
        diff = diff[mask]
    assert diff.max() <= tol, f"{what}: max |diff| {diff.max():.3g} > {tol} ({BACKEND})"
    return float(diff.max())


def assert_varied(out, mask=None, tol=TOL, what="", factor=1000):
    """Fail loudly if outputs barely vary from position to position. A comparison
    at `tol` then proves little: ELECTRA's untrained discriminator sat in
    0.499-0.502, so a padding leak stayed below the tolerance (issue #20).

    The spread is each feature's std over the positions (`mask`: the real ones),
    averaged over features; it must reach `factor * tol`.

    >>> assert_varied(np.array([[[0.0], [2.0]]]), tol=1e-5)   # [batch, positions, features]
    1.0
    """
    out = np.asarray(out, "float32")
    values = out[mask] if mask is not None else out
    values = values.reshape(-1, out.shape[-1])
    spread = float(values.std(axis=0).mean())
    assert spread >= factor * tol, (
        f"{what}: degenerate outputs, spread over positions {spread:.3g} < {factor} x tol "
        f"{tol:g}; a leak would hide below the tolerance (randomise the weights?)"
    )
    return spread


def installed(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def package_file(package, *parts):
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec is not None, f"test data package {package} is not installed"
    return os.path.join(os.path.dirname(spec.origin), *parts)


@pytest.fixture(scope="module")
def single_thread_torch():
    """One torch intra-op thread for a module of tiny models: on a busy machine
    several threads only spin against each other (a 2-layer, 16-wide forward
    goes from ~15 ms to ~600 ms). Restored afterwards. No-op on other backends."""
    if BACKEND != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_gc():
    """Keras runs gc.collect() for every variable quantize() replaces
    (Layer.__delattr__): ~0.2 s each on a test process's heap, nothing to test."""
    return mock.patch("gc.collect", lambda *args: 0)


def quantize(model, mode="int8"):
    """`model.quantize(mode)` without the per-variable gc.collect and the warnings Keras
    gives for every layer it leaves in float; returns the model."""
    with warnings.catch_warnings(), no_gc():
        warnings.simplefilter("ignore")
        model.quantize(mode)
    return model
