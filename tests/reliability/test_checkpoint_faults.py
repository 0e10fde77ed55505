"""Checkpoint faults: refuse clearly, change nothing, stay bounded (issue #18, points 1, 2, 7).

Every failing load goes into an already built model whose weights are
snapshotted first; after the error they must be bit-for-bit unchanged. Every
error is matched on its text: it must name the file, the tensor and the problem.
"""

import json
import os
import random
import warnings

import numpy as np
import pytest

from kerasformers import CheckpointError, build_transformer_model
from kerasformers.checkpoints import loader
from tests.utils import installed

CONFIG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=48, max_position=32)
Q0 = "bert/encoder/layer_0/attention/self/query/kernel"
HF_Q0 = "bert.encoder.layer.0.attention.self.query.weight"


def make(**kwargs):
    return build_transformer_model(None, return_keras_model=False, **{**CONFIG, **kwargs})


@pytest.fixture(scope="module")
def model():
    """One tiny BERT for the whole module: a failed load must leave it unchanged anyway."""
    return make()


def checkpoint(naming="google"):
    """{name: float32 array} fitting `make()`, deterministic values unlike any init."""
    rng = np.random.RandomState(0)
    names = make().export_weights(naming)
    return {k: rng.standard_normal(v.shape).astype("float32") for k, v in sorted(names.items())}


@pytest.fixture(scope="module")
def google():
    return checkpoint("google")


@pytest.fixture(scope="module")
def hf():
    return checkpoint("hf")


def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.model.weights}


def assert_bit_identical(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for path, value in before.items():
        assert after[path].dtype == value.dtype, path
        assert after[path].tobytes() == value.tobytes(), f"{path} changed"


def fails(model, source, match, error=CheckpointError, **kwargs):
    """Loading `source` raises one `error` matching `match`; the model is bit-identical."""
    before = snapshot(model)
    with pytest.raises(error, match=match) as info:
        model.load_weights_from_checkpoint(source, **kwargs)
    assert_bit_identical(model, before)
    return str(info.value)


# ------------------------------------------------- 1. all-or-nothing loading

BAD_KINDS = {
    "bool": lambda x: x > 0,
    "int8": lambda x: x.astype(np.int8),
    "int32": lambda x: (x * 10).astype(np.int32),
    "int64": lambda x: (x * 10).astype(np.int64),
    "uint8": lambda x: np.abs(x * 10).astype(np.uint8),
    "uint16": lambda x: np.abs(x * 10).astype(np.uint16),
    "complex64": lambda x: x.astype(np.complex64),
    "object": lambda x: x.astype(object),
    "str": lambda x: x.astype(str),
    "bytes": lambda x: x.astype("S8"),
}
EXPECTED_NAME = {"object": "object", "str": "str", "bytes": "bytes"}


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_non_float_tensor_is_refused_by_name_and_dtype(kind, position, model, google):
    """A float weight accepts only float data: nothing is cast, nothing is assigned."""
    tensors = dict(google)
    name = sorted(tensors)[0 if position == "first" else -1]
    tensors[name] = BAD_KINDS[kind](tensors[name])
    stored = EXPECTED_NAME.get(kind, kind)
    message = fails(model, tensors, rf"wrong dtype: '{name}' -> .*: stored as {stored}")
    assert "Nothing was loaded" in message and message.count("wrong dtype") == 1


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(fill, model, google):
    tensors = dict(google)
    tensors[Q0] = tensors[Q0].copy()
    tensors[Q0][3, :5] = fill
    fails(model, tensors, rf"not finite: '{Q0}' -> .*: 5 of 1024 values are NaN or Inf\n")


def test_overflow_on_conversion_is_refused(model, google):
    """float64 1e300 is finite as stored but Inf as float32: refused, saying so."""
    tensors = dict(google)
    tensors[Q0] = tensors[Q0].astype(np.float64)
    tensors[Q0][0, 0] = 1e300
    fails(model, tensors, rf"not finite: '{Q0}' .*1 of 1024 .*after conversion to float32")


def test_float64_and_float16_data_load_into_float32(model, google):
    tensors = {k: v.astype(np.float64 if i % 2 else np.float16) for i, (k, v) in
               enumerate(google.items())}
    model.load_weights_from_checkpoint(tensors)
    out = model.export_weights("google")
    for k, v in tensors.items():
        assert out[k].dtype == np.float32
        np.testing.assert_array_equal(out[k], v.astype(np.float32), err_msg=k)


def test_shape_error_quotes_the_stored_shape(model, hf):
    """A transposed key (torch Linear) reports the shape as the file holds it."""
    tensors = dict(hf)
    tensors[HF_Q0] = tensors[HF_Q0][:8]  # stored [out, in] = (8, 32)
    fails(model, tensors, rf"shape mismatch: '{HF_Q0}' .*expected \(32, 32\), found \(8, 32\)")
    tensors = dict(hf)
    tensors[HF_Q0] = tensors[HF_Q0][:, :8]
    fails(model, tensors, rf"'{HF_Q0}' .*expected \(32, 32\), found \(32, 8\)")


def test_every_problem_is_listed_at_once(model, google):
    tensors = dict(google)
    names = sorted(tensors)
    tensors[names[0]] = tensors[names[0]].astype(np.int32)
    tensors[names[1]] = np.full_like(tensors[names[1]], np.nan)
    tensors[names[2]] = tensors[names[2]][..., :1]
    del tensors[names[3]]
    message = fails(model, tensors, "does not fit the model")
    for text in ("wrong dtype", "not finite", "shape mismatch", "missing"):
        assert message.count(text) == 1, (text, message)


def test_ignore_invalid_weights_skips_bad_dtypes_too(google):
    tensors = dict(google)
    tensors[Q0] = tensors[Q0].astype(np.int64)
    model = make(ignore_invalid_weights=True)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="wrong dtype"):
        report = model.load_weights_from_checkpoint(tensors)
    assert [row[1] for row in report.wrong_dtype] == [Q0]
    path = report.wrong_dtype[0][0]
    assert snapshot(model)[path].tobytes() == before[path].tobytes()


def _write_safetensors(folder, tensors):
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return os.path.join(folder, "model.safetensors")


def _write_tf(folder, tensors):
    from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint

    return save_tf_checkpoint(os.path.join(folder, "model.ckpt"), tensors)


def _write_bin(folder, tensors):
    torch = pytest.importorskip("torch")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pytorch_model.bin")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, path)
    return path


WRITERS = {"safetensors": ("hf", _write_safetensors), "tf": ("google", _write_tf),
           "bin": ("hf", _write_bin)}


@pytest.mark.parametrize("kind", ["int32", "uint8", "bool"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_non_float_tensor_in_a_file_is_refused(fmt, kind, model, google, hf, tmp_path):
    naming, write = WRITERS[fmt]
    tensors = dict(google if naming == "google" else hf)
    name = Q0 if naming == "google" else HF_Q0
    tensors[name] = BAD_KINDS[kind](tensors[name])
    path = write(str(tmp_path / fmt), tensors)
    message = fails(model, path, rf"wrong dtype: '{name}' .*stored as {kind}")
    assert os.fspath(path) in message


# ------------------------------------------------- 7. savers refuse what they cannot write

@pytest.mark.parametrize("naming", ["HF", "Google", "tf", "", None])
def test_unknown_naming_lists_the_valid_ones(naming, model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown naming .*valid namings are 'google', 'hf'"):
        model.save_weights_as_checkpoint(str(tmp_path / "x"), naming=naming)
    with pytest.raises(ValueError, match=r"valid namings are 'google', 'hf'"):
        model.export_weights(naming)
    assert not os.path.exists(tmp_path / "x")
    if naming:  # a falsy naming on load means "detect it"
        fails(model, {Q0: np.zeros((32, 32), "float32")}, "valid namings", error=ValueError,
              naming=naming)


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "bool", "complex64"])
@pytest.mark.parametrize("naming", ["google", "hf"])
def test_non_float_save_dtype_is_refused_before_writing(naming, dtype, model, tmp_path):
    path = tmp_path / "out" / ("model.ckpt" if naming == "google" else "")
    with pytest.raises(ValueError, match=rf"cannot write '.+' as {dtype}: .*floating point only"):
        model.save_weights_as_checkpoint(str(path), naming=naming, dtype=dtype)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("naming", ["google", "hf"])
def test_float_save_dtypes_reload_equal(naming, dtype, model, tmp_path):
    path = str(tmp_path / "model.ckpt") if naming == "google" else str(tmp_path)
    model.save_weights_as_checkpoint(path, naming=naming, dtype=dtype)
    copy = make()
    copy.load_weights_from_checkpoint(path)
    for k, v in model.export_weights(naming).items():
        np.testing.assert_array_equal(copy.export_weights(naming)[k],
                                      v.astype(dtype).astype("float32"), err_msg=k)


def _listing(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


class _Fault(Exception):
    pass


def _fail_on_call(monkeypatch, owner, attribute, n):
    """Make the n-th call of owner.attribute (1-based) raise _Fault."""
    real = getattr(owner, attribute)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise _Fault(f"injected fault in {attribute} call {n}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, wrapper)


def _google_faults():
    from kerasformers.checkpoints.tf_checkpoint import writer

    faults = {f"replace-{n}": (os, "replace", n) for n in (1, 2, 3)}  # data, index, state
    faults.update({f"payload-{n}": (writer, "_tensor_payload", n) for n in (1, 7, 30)})
    faults["sstable"] = (writer, "_build_sstable", 1)
    faults["encode-entry"] = (writer, "_encode_entry", 5)
    faults["link"] = (os, "link", 2)
    return faults


GOOGLE_FAULTS = sorted(_google_faults())


@pytest.mark.parametrize("old", [True, False], ids=["over-old", "fresh"])
@pytest.mark.parametrize("fault", GOOGLE_FAULTS)
def test_interrupted_google_save_keeps_the_old_checkpoint_and_no_temp_files(
        fault, old, model, google, tmp_path, monkeypatch):
    """A save that fails at any step: the directory is byte-for-byte as before."""
    if fault == "link" and not old:
        pytest.skip("nothing to keep: no hard link is made")
    prefix = str(tmp_path / "model.ckpt")
    if old:
        loader_model = make()
        loader_model.load_weights_from_checkpoint(google)
        loader_model.save_weights_as_checkpoint(prefix)
    before = _listing(tmp_path)
    owner, attribute, n = _google_faults()[fault]
    _fail_on_call(monkeypatch, owner, attribute, n)
    with pytest.raises(_Fault, match="injected fault"):
        model.save_weights_as_checkpoint(prefix)
    monkeypatch.undo()
    assert _listing(tmp_path) == before  # no temp files, old files unchanged
    if old:
        copy = make()
        copy.load_weights_from_checkpoint(prefix)
        np.testing.assert_array_equal(copy.export_weights("google")[Q0], google[Q0])
    model.save_weights_as_checkpoint(prefix)  # and the next save works
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt.data-00000-of-00001",
                                            "model.ckpt.index"]


@pytest.mark.parametrize("n", [1, 2])
def test_interrupted_hf_save_keeps_the_old_files(n, model, google, tmp_path, monkeypatch):
    old = make()
    old.load_weights_from_checkpoint(google)
    old.save_weights_as_checkpoint(str(tmp_path), naming="hf")
    before = _listing(tmp_path)
    _fail_on_call(monkeypatch, os, "replace", n)  # weights, then config.json
    with pytest.raises(_Fault):
        model.save_weights_as_checkpoint(str(tmp_path), naming="hf")
    monkeypatch.undo()
    if n == 1:
        assert _listing(tmp_path) == before
    else:  # the weights are new, config.json (identical here) the old one
        assert sorted(os.listdir(tmp_path)) == sorted(before)
    make().load_weights_from_checkpoint(str(tmp_path))
