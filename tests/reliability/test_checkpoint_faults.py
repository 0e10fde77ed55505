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

CONFIG = dict(
    vocab_size=40,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position=32,
)
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


def test_overflow_into_a_float16_model_is_refused(google):
    import keras

    keras.config.set_dtype_policy("float16")  # variables in float16 (conftest resets it)
    model = make()
    tensors = dict(google)
    tensors[Q0] = tensors[Q0] * 1e5  # finite float32, beyond float16's 65504
    fails(model, tensors, rf"not finite: '{Q0}' .*after conversion to float16")


def test_float64_and_float16_data_load_into_float32(model, google):
    tensors = {
        k: v.astype(np.float64 if i % 2 else np.float16) for i, (k, v) in enumerate(google.items())
    }
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
    import torch

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pytorch_model.bin")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, path)
    return path


WRITERS = {
    "safetensors": ("hf", _write_safetensors),
    "tf": ("google", _write_tf),
    "bin": ("hf", _write_bin),
}


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        pytest.param(fmt, kind, id=f"{fmt}-{kind}")
        for fmt in sorted(WRITERS)
        for kind in ("int32", "uint8", "bool", "str")
        if kind != "str" or fmt == "tf"  # only TF checkpoints store strings
    ],
)
def test_non_float_tensor_in_a_file_is_refused(fmt, kind, model, google, hf, tmp_path):
    kind = "object" if kind == "str" else kind  # TF string tensors read back as bytes objects
    naming, write = WRITERS[fmt]
    tensors = dict(google if naming == "google" else hf)
    name = Q0 if naming == "google" else HF_Q0
    tensors[name] = BAD_KINDS["str" if kind == "object" else kind](tensors[name])
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
        fails(
            model,
            {Q0: np.zeros((32, 32), "float32")},
            "valid namings",
            error=ValueError,
            naming=naming,
        )


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
        np.testing.assert_array_equal(
            copy.export_weights(naming)[k], v.astype(dtype).astype("float32"), err_msg=k
        )


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


@pytest.mark.parametrize(
    ("fault", "old"),
    [
        pytest.param(fault, old, id=f"{fault}-{'over-old' if old else 'fresh'}")
        for fault in GOOGLE_FAULTS
        for old in (True, False)
        if old or fault != "link"  # a fresh save makes no hard link: nothing to break
    ],
)
def test_interrupted_google_save_keeps_the_old_checkpoint_and_no_temp_files(
    fault, old, model, google, tmp_path, monkeypatch
):
    """A save that fails at any step: the directory is byte-for-byte as before."""
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
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint",
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
    ]


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


# ------------------------------------------------- 2. sharded checkpoints and safetensors headers


def _shard(folder, shards, hf, index, fmt="safetensors"):
    """Write shards {file: [names, or (name, array)]} of `hf` and an index (dict or raw text)."""
    for file, names in shards.items():
        arrays = dict(item if isinstance(item, tuple) else (item, hf[item]) for item in names)
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, str(folder / file))
        else:
            import torch

            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, folder / file)
    text = index if isinstance(index, str) else json.dumps(index)
    name = f"model.{fmt}.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / name).write_text(text)
    return str(folder / name)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("home", [1, 2])
def test_weight_map_decides_which_shard_a_tensor_is_read_from(home, fmt, hf, tmp_path):
    """Both shards hold HF_Q0 with different values; the index's choice wins."""
    ext = "safetensors" if fmt == "safetensors" else "bin"
    names = sorted(hf)
    one, two = f"model-1.{ext}", f"model-2.{ext}"
    other = (HF_Q0, -hf[HF_Q0])
    rest = [k for k in names if k != HF_Q0]
    shards = {
        one: rest[::2] + ([HF_Q0] if home == 1 else [other]),
        two: rest[1::2] + ([other] if home == 1 else [HF_Q0]),
    }
    weight_map = {k: one for k in rest[::2]} | {k: two for k in rest[1::2]}
    weight_map[HF_Q0] = one if home == 1 else two
    path = _shard(tmp_path, shards, hf, {"weight_map": weight_map}, fmt)
    model = make()
    model.load_weights_from_checkpoint(path)
    np.testing.assert_array_equal(model.export_weights("hf")[HF_Q0], hf[HF_Q0])


def test_unlisted_tensor_in_two_shards_is_refused(hf, model, tmp_path):
    names = sorted(hf)
    extra = ("extra", np.zeros(3, "float32"))
    shards = {"a.safetensors": names[::2] + [extra], "b.safetensors": names[1::2] + [extra]}
    weight_map = {k: "a.safetensors" for k in names[::2]} | {
        k: "b.safetensors" for k in names[1::2]
    }
    path = _shard(tmp_path, shards, hf, {"weight_map": weight_map})
    fails(model, path, r"tensor 'extra' is in 2 shards .*a\.safetensors.*b\.safetensors")


def test_listed_tensor_missing_from_its_shard_is_refused(hf, model, tmp_path):
    names = sorted(hf)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    weight_map = {k: "a.safetensors" for k in names}  # half of them are in b
    path = _shard(tmp_path, shards, hf, {"weight_map": weight_map})
    fails(model, path, rf"index puts tensor '{names[1]}' in .*a\.safetensors, which does not hold")


ESCAPES = {
    "dotdot": "../outside.safetensors",
    "dotdot-deep": "sub/../../outside.safetensors",
    "absolute": "{outside}",
    "backslash-dotdot": "..\\outside.safetensors",
    "symlink-out": "link.safetensors",
    "symlink-dir-out": "linkdir/outside.safetensors",
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_shard_outside_the_model_directory_is_refused(escape, hf, model, tmp_path):
    """The escaping shard exists and is valid: only the path rule refuses it."""
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside.safetensors"
    save_file(dict(hf), str(outside))
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "linkdir").symlink_to(tmp_path)
    shard = ESCAPES[escape].format(outside=outside)
    path = _shard(folder, {}, hf, {"weight_map": dict.fromkeys(hf, shard)})
    fails(
        model,
        path,
        r"shard '.*outside\.safetensors'|shard 'link\.safetensors'.* leads outside"
        r"|outside the model directory",
    )


def test_symlinked_shard_inside_the_directory_loads(hf, tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "blobs").mkdir()
    save_file(dict(hf), str(tmp_path / "blobs" / "abc123"))
    (tmp_path / "model-1.safetensors").symlink_to(tmp_path / "blobs" / "abc123")  # HF cache style
    path = _shard(tmp_path, {}, hf, {"weight_map": dict.fromkeys(hf, "model-1.safetensors")})
    make().load_weights_from_checkpoint(path)


BAD_INDEXES = {
    "list": ("[1, 2]", r"a JSON list, not an object"),
    "string": ('"model.safetensors"', r"a JSON str, not an object"),
    "null": ("null", r"a JSON NoneType"),
    "no-weight-map": ('{"metadata": {}}', r"no 'weight_map'"),
    "weight-map-list": ('{"weight_map": ["a.safetensors"]}', r"'weight_map' must be a non-empty"),
    "weight-map-empty": ('{"weight_map": {}}', r"'weight_map' must be a non-empty"),
    "value-int": ('{"weight_map": {"w": 1}}', r"tensor 'w' -> 1: a shard must be a file name"),
    "value-null": ('{"weight_map": {"w": null}}', r"tensor 'w' -> None"),
    "value-list": ('{"weight_map": {"w": ["a"]}}', r"tensor 'w' -> \['a'\]"),
    "value-empty": ('{"weight_map": {"w": ""}}', r"tensor 'w' -> ''"),
    "duplicate-key": ('{"weight_map": {"w": "a", "w": "b"}}', r"duplicate key 'w'"),
    "not-json": ('{"weight_map": ', r"bad shard index"),
    "nul-in-name": ('{"weight_map": {"w": "a\\u0000.safetensors"}}', r"outside the model"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_malformed_index_is_refused_clearly(case, model, hf, tmp_path):
    text, match = BAD_INDEXES[case]
    path = _shard(tmp_path, {}, hf, text)
    fails(model, path, rf"model\.safetensors\.index\.json: .*{match}")


def _st_file(entries, data, metadata=None, raw_header=None):
    """safetensors bytes from (name, dtype, shape, [start, end]) rows (duplicates allowed)."""
    if raw_header is None:
        items = [
            json.dumps(n) + ": " + json.dumps({"dtype": d, "shape": s, "data_offsets": o})
            for n, d, s, o in entries
        ]
        if metadata is not None:
            items.insert(0, '"__metadata__": ' + json.dumps(metadata))
        raw_header = ("{" + ", ".join(items) + "}").encode()
    return len(raw_header).to_bytes(8, "little") + raw_header + data


GOOD = [("a", "F32", [2, 3], [0, 24]), ("b", "F16", [4], [24, 32]), ("c", "I64", [1], [32, 40])]
GOOD_DATA = (
    np.arange(6, dtype="<f4").tobytes()
    + np.arange(4, dtype="<f2").tobytes()
    + np.array([7], "<i8").tobytes()
)


def _with(name, **change):
    rows = []
    for n, d, s, o in GOOD:
        if n == name:
            d, s, o = change.get("dtype", d), change.get("shape", s), change.get("offsets", o)
        rows.append((n, d, s, o))
    return rows


BAD_HEADERS = {
    "overlap": (_with("b", offsets=[20, 28]), GOOD_DATA, r"tensors 'a' and 'b' overlap"),
    "overflow-file": (
        _with("c", offsets=[32, 48], shape=[2]),
        GOOD_DATA,
        r"truncated: tensor 'c' ends at byte 48 .* 40 bytes",
    ),
    "huge-shape": (_with("a", shape=[2**40, 2**40]), GOOD_DATA, r"tensor 'a': data_offsets"),
    "duplicate-key": (GOOD + [("a", "F32", [2, 3], [0, 24])], GOOD_DATA, r"duplicate key 'a'"),
    "unknown-dtype": (_with("b", dtype="F8_E9"), GOOD_DATA, r"tensor 'b': unknown dtype 'F8_E9'"),
    "dtype-int": (_with("b", dtype=4), GOOD_DATA, r"tensor 'b': unknown dtype 4"),
    "size-mismatch": (
        _with("a", shape=[2, 2]),
        GOOD_DATA,
        r"tensor 'a': data_offsets \[0, 24\] hold 24 bytes, but shape \(2, 2\)",
    ),
    "itemsize-mismatch": (_with("a", dtype="F64"), GOOD_DATA, r"tensor 'a': .*of F64 needs 48"),
    "negative-start": (_with("a", offsets=[-8, 16]), GOOD_DATA, r"tensor 'a': data_offsets must"),
    "start-after-end": (_with("c", offsets=[40, 32]), GOOD_DATA, r"tensor 'c': data_offsets must"),
    "negative-dim": (_with("a", shape=[-2, -3]), GOOD_DATA, r"tensor 'a': shape must be a list"),
    "bool-dim": (_with("c", shape=[True]), GOOD_DATA, r"tensor 'c': shape must be a list"),
    "float-dim": (_with("c", shape=[1.0]), GOOD_DATA, r"tensor 'c': shape must be a list"),
    "string-offset": (_with("c", offsets=["32", "40"]), GOOD_DATA, r"tensor 'c': data_offsets"),
    "three-offsets": (_with("c", offsets=[32, 36, 40]), GOOD_DATA, r"tensor 'c': data_offsets"),
    "shape-dict": (_with("c", shape={"0": 1}), GOOD_DATA, r"tensor 'c': shape must be a list"),
    "data-truncated": (GOOD, GOOD_DATA[:-1], r"truncated: tensor 'c'"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_inconsistent_safetensors_header_is_refused(case, tmp_path):
    from kerasformers.checkpoints.sources import open_checkpoint

    entries, data, match = BAD_HEADERS[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(_st_file(entries, data))
    with pytest.raises(CheckpointError, match=rf"{path}: .*{match}"):
        open_checkpoint(str(path))


@pytest.mark.parametrize(
    "raw, match",
    [
        (b'{"a": 1}', r"tensor 'a': header entry needs dtype, shape and data_offsets"),
        (b'{"a": {"dtype": "F32", "shape": []}}', r"tensor 'a': header entry needs"),
        (b'{"__metadata__": [1]}', r"__metadata__ is a list"),
        (b"\xff\xfe{}", r"corrupt safetensors header"),
        (b"[" * 100000 + b"]" * 100000, r"corrupt safetensors header"),
    ],
)
def test_malformed_header_entries_are_refused(raw, match, tmp_path):
    from kerasformers.checkpoints.sources import open_checkpoint

    path = tmp_path / "model.safetensors"
    path.write_bytes(_st_file(None, GOOD_DATA, raw_header=raw))
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(str(path))


def test_valid_hand_written_file_reads_back(tmp_path):
    from kerasformers.checkpoints.sources import open_checkpoint

    path = tmp_path / "model.safetensors"
    path.write_bytes(_st_file(GOOD, GOOD_DATA, metadata={"format": "pt"}))
    source = open_checkpoint(str(path))
    assert source.get("a").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert source.get("b").dtype == np.float16 and source.get("c").tolist() == [7]


@pytest.mark.parametrize("change", ["truncate", "grow", "rewrite-same-size"])
def test_file_changing_after_open_does_not_kill_the_process(change, model, hf, tmp_path):
    """Read with plain reads, not a memory map: a shrunk file gives an error, not SIGBUS."""
    from kerasformers.checkpoints.sources import open_checkpoint

    path = _write_safetensors(str(tmp_path), dict(hf))
    source = open_checkpoint(path)
    data = open(path, "rb").read()
    with open(path, "r+b") as f:
        if change == "truncate":
            f.truncate(len(data) // 2)
        elif change == "grow":
            f.seek(0, 2)
            f.write(b"\0" * 4096)
        else:
            f.seek(len(data) - 4096)
            f.write(b"\0" * 4096)
    if change == "rewrite-same-size":  # no way to notice; the load must still be sane
        model.load_weights_from_checkpoint(source)
        make().load_weights_from_checkpoint(hf)
        return
    fails(model, source, rf"{path}: the file changed while it was being read")


# ------------------------------------------------- fuzz: random mutations of a valid header


def _reference_read(blob):
    """What the bytes say, by an independent minimal reader (None if it cannot tell)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    codes = {
        "F32": "<f4",
        "F16": "<f2",
        "F64": "<f8",
        "I64": "<i8",
        "I32": "<i4",
        "I16": "<i2",
        "I8": "i1",
        "U8": "u1",
        "U16": "<u2",
        "U32": "<u4",
        "U64": "<u8",
        "BOOL": "?",
    }
    out = {}
    for key, info in header.items():
        if key == "__metadata__" or info["dtype"] == "BF16":
            continue
        start, end = info["data_offsets"]
        raw = blob[8 + n + start : 8 + n + end]
        out[key] = np.frombuffer(raw, codes[info["dtype"]]).reshape(info["shape"])
    return out


def _mutate(rng, entries):
    """One random structural mutation of header rows [(name, dtype, shape, offsets)]."""

    def copy(x):
        return list(x) if isinstance(x, list) else x

    rows = [(n, d, copy(s), copy(o)) for n, d, s, o in entries]
    i = rng.randrange(len(rows))
    n, d, s, o = rows[i]
    ints = (
        all(isinstance(x, list) and len(x) == 2 and all(type(v) is int for v in x) for x in (o,))
        and isinstance(s, list)
        and all(type(v) is int for v in s)
    )
    pick = rng.randrange(12)
    if not ints and pick in (1, 2, 3, 4, 6, 8, 9):
        pick = 0
    if pick == 0:
        d = rng.choice(
            [
                "F32",
                "F16",
                "F64",
                "BF16",
                "I64",
                "I32",
                "I8",
                "U8",
                "BOOL",
                "F8",
                "f32",
                "",
                None,
                32,
            ]
        )
    elif pick == 1 and s:
        s[rng.randrange(len(s))] += rng.choice([-1, 1, -100, 2**31, 2**63])
    elif pick == 2:
        s = rng.choice([[], [0], s + [1], s[:-1], [rng.randrange(-3, 50)], [1.5], ["2"], None])
        s = copy(s)
    elif pick == 3:
        o[rng.randrange(2)] += rng.choice([-8, -4, -2, -1, 1, 2, 4, 8, 2**40])
    elif pick == 4:
        o = copy(
            rng.choice(
                [
                    [o[1], o[0]],
                    [o[0]],
                    [],
                    [-1, o[1]],
                    None,
                    [o[0], o[1], o[1]],
                    [float(o[0]), o[1]],
                ]
            )
        )
    elif pick == 5:
        rows.append((n, d, s, o))  # duplicate name
    elif pick == 6:
        j = rng.randrange(len(rows))
        o, s, d = copy(rows[j][3]), copy(rows[j][2]), rows[j][1]  # another tensor's bytes
    elif pick == 7:
        del rows[i]
        return rows, "drop"
    elif pick == 8:
        shift = rng.choice([-4, 4, 8])
        rows = [
            (
                n2,
                d2,
                s2,
                [o2[0] + shift, o2[1] + shift]
                if isinstance(o2, list) and len(o2) == 2 and all(type(v) is int for v in o2)
                else o2,
            )
            for n2, d2, s2, o2 in rows
        ]
        return rows, "shift"
    elif pick == 9:
        d = {"F32": "I32", "I64": "F64", "F16": "BF16"}.get(d, "U8")  # same bytes, new meaning
        s = s if d != "U8" else [o[1] - o[0]]
    elif pick == 10:
        return rows, "length"
    else:
        return rows, "truncate"
    rows[i] = (n, d, s, o)
    return rows, "row"


def _fuzz_case(seed):
    rng = random.Random(seed)
    rows, kind = _mutate(rng, GOOD)
    if rng.random() < 0.3:
        rows, kind2 = _mutate(rng, rows or list(GOOD))
        kind = kind if kind2 == "row" else kind2
    blob = bytearray(_st_file(rows, GOOD_DATA))
    if kind == "length":
        n = int.from_bytes(blob[:8], "little") + rng.choice([-3, -1, 1, 5, 2**20, 2**63])
        blob[:8] = (n % 2**64).to_bytes(8, "little")
    elif kind == "truncate":
        del blob[rng.randrange(len(blob)) :]
    elif rng.random() < 0.1:  # and a random byte of the header changed
        j = rng.randrange(8, 8 + int.from_bytes(blob[:8], "little"))
        blob[j] = rng.randrange(256)
    return bytes(blob)


FUZZ_CASES = 400


@pytest.mark.parametrize("block", range(8))
def test_fuzzed_safetensors_headers_load_equal_or_are_refused(block, tmp_path):
    """Each mutated file either reads back exactly what its bytes say, or is refused
    with a CheckpointError (a ValueError): never another exception, a crash or garbage."""
    from kerasformers.checkpoints.sources import open_checkpoint

    outcomes = {"loaded": 0, "refused": 0}
    per_block = FUZZ_CASES // 8
    for seed in range(block * per_block, (block + 1) * per_block):
        blob = _fuzz_case(seed)
        path = tmp_path / f"{seed}.safetensors"
        path.write_bytes(blob)
        try:
            source = open_checkpoint(str(path))
            got = {k: source.get(k) for k in source.keys()}
        except CheckpointError as e:
            assert str(path) in str(e), (seed, str(e))
            outcomes["refused"] += 1
            continue
        want = _reference_read(blob)
        for key, value in want.items():
            assert value.shape == got[key].shape, seed
            assert value.tobytes() == np.ascontiguousarray(got[key]).tobytes(), (seed, key)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == per_block


def test_fuzzed_headers_through_the_model_leave_it_unchanged(model, hf, tmp_path):
    """A real checkpoint's header, mutated: load fully or fail with the model bit-identical."""
    path = _write_safetensors(str(tmp_path / "good"), dict(hf))
    blob = open(path, "rb").read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    rows = [(k, v["dtype"], v["shape"], v["data_offsets"]) for k, v in header.items()]
    data = blob[8 + n :]
    rng = random.Random(18)
    refused = 0
    for case in range(30):
        mutated, kind = _mutate(rng, rows)
        if kind in ("length", "truncate"):
            mutated = rows
        file = tmp_path / f"{case}" / "model.safetensors"
        file.parent.mkdir()
        file.write_bytes(_st_file(mutated, data))
        before = snapshot(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load_weights_from_checkpoint(str(file))
        except ValueError:
            refused += 1
            assert_bit_identical(model, before)
    assert refused > 0


def test_sharded_pytorch_bin_never_runs_a_pickle(hf, model, tmp_path):
    """The .bin reader keeps torch.load(weights_only=True): a payload in a shard is refused."""
    import torch

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    names = sorted(hf)
    torch.save({k: torch.from_numpy(hf[k]) for k in names[::2]}, tmp_path / "a.bin")
    torch.save(
        {**{k: torch.from_numpy(hf[k]) for k in names[1::2]}, "x": Evil()}, tmp_path / "b.bin"
    )
    weight_map = {k: "a.bin" for k in names[::2]} | {k: "b.bin" for k in names[1::2]}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fails(model, str(tmp_path), r"b\.bin: cannot read PyTorch checkpoint")
    assert not os.path.exists(tmp_path / "pwned"), "the pickle's code ran"
