"""Tests for the TensorFlow-free checkpoint reader/writer.

TensorFlow is only used as an oracle (checkpoints it writes, checkpoints it
reads, CRCs it computes); it is a test dependency (`tensorflow-cpu`), imported plainly.
"""

import os
import struct
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_dtypes
import numpy as np
import pytest

from kerasformers.checkpoints import bfloat16 as bfloat16_module
from kerasformers.checkpoints import tf_checkpoint as tfc
from kerasformers.checkpoints.tf_checkpoint import (
    CheckpointError,
    TFCheckpointReader,
    bundle,
    crc,
    crc32c,
    mask_crc32c,
    resolve_checkpoint_prefix,
    save_tf_checkpoint,
    sstable,
    unmask_crc32c,
    wire,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tf():
    import tensorflow

    return tensorflow


def _crc_bitwise(data):
    """Textbook bit-at-a-time CRC32C, independent of the module's tables."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _sample_tensors():
    """Deterministic tensors covering every supported dtype and awkward shapes."""
    rng = np.random.default_rng(1234)
    f32 = rng.standard_normal((5, 7)).astype(np.float32)
    f32[0, 0], f32[0, 1], f32[0, 2] = np.nan, np.inf, -0.0
    return {
        "bert/embeddings/word_embeddings": rng.standard_normal((31, 16)).astype(np.float32),
        "bert/encoder/layer_0/attention/self/query/kernel": f32,
        "bert/encoder/layer_0/attention/self/query/bias": rng.standard_normal(7).astype(np.float32),
        "f16": rng.standard_normal((3, 4)).astype(np.float16),
        "bf16": rng.standard_normal((2, 9)).astype(ml_dtypes.bfloat16),
        "f64": rng.standard_normal((4,)),
        "i32": rng.integers(-(2**31), 2**31 - 1, (3, 3), dtype=np.int32),
        "i64": np.array([-(2**63), 2**63 - 1, 0, -1], dtype=np.int64),
        "i8": rng.integers(-128, 127, (6,), dtype=np.int8),
        "u8": rng.integers(0, 255, (2, 2, 2), dtype=np.uint8),
        "i16": rng.integers(-(2**15), 2**15 - 1, (5,), dtype=np.int16),
        "u16": rng.integers(0, 2**16 - 1, (3,), dtype=np.uint16),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "flags": np.array([True, False, True]),
        "scalar_f32": np.float32(2.5),
        "scalar_i64": np.int64(-7),
        "scalar_bool": np.bool_(True),
        "global_step": np.array(123456789, dtype=np.int64),
        "empty": np.zeros((0,), np.float32),
        "empty_3d": np.zeros((3, 0, 2), np.int32),
        "strings": np.array([[b"hello", b""], [b"x" * 300, b"\x00\xff"]], dtype=object),
        "scalar_string": np.array(b"just one", dtype=object),
        "empty_strings": np.zeros((0, 2), dtype=object),
    }


def _assert_same(actual, expected, name):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    if expected.dtype == object:
        assert actual.dtype == object, name
        assert actual.tolist() == expected.tolist(), name
    else:
        assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
        assert actual.tobytes() == expected.tobytes(), name  # bit-exact, NaN and -0.0 included


def _savev2(tf, prefix, tensors):
    names = list(tensors)
    values = []
    for name in names:
        v = tensors[name]
        if v.dtype == object:
            values.append(
                tf.constant(
                    np.asarray(v, dtype=object).tolist() if v.ndim else v.item(),
                    tf.string,
                    shape=v.shape,
                )
            )
        else:
            values.append(tf.constant(v))
    tf.raw_ops.SaveV2(
        prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values
    )


# --------------------------------------------------------------------------
# CRC32C
# --------------------------------------------------------------------------

CRC_VECTORS = [  # RFC 3720 appendix B.4 plus the classic check value
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data, expected", CRC_VECTORS)
def test_crc32c_known_vectors(data, expected):
    assert _crc_bitwise(data) == expected
    assert crc32c(data) == expected
    assert crc._crc32c_numpy(data) == expected
    assert crc._crc32c_numpy(np.frombuffer(data, np.uint8)) == expected


@pytest.mark.parametrize("n", [1, 3, 17, 255, 1001, 4097])
def test_crc32c_short_inputs_match_bitwise_reference(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc._crc32c_numpy(data) == _crc_bitwise(data)


@pytest.mark.parametrize("n", [16383, 16384, 16385, 65537, 262147, 1048583])
def test_crc32c_vectorised_path_matches_bytewise_reference(n):
    # Sizes straddle the vectorised threshold and leave odd tails, so lanes,
    # lane merging and the tail loop are all exercised.
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    expected = crc._crc_update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc._crc32c_numpy(data) == expected
    assert crc32c(data.tobytes()) == expected


def test_crc32c_extend_and_input_types():
    data = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8)
    whole = crc._crc32c_numpy(data)
    for cut in (0, 1, 7, 16384, 150_000, 299_999, 300_001):
        assert crc._crc32c_numpy(data[cut:], crc._crc32c_numpy(data[:cut])) == whole
    assert crc32c(memoryview(data.tobytes())) == whole
    assert crc32c(bytearray(data.tobytes())) == whole
    floats = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    assert crc32c(floats[:, ::2]) == crc32c(np.ascontiguousarray(floats[:, ::2]).tobytes())


def test_crc_masking():
    assert mask_crc32c(0) == 0xA282EAD8
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x80000000):
        assert unmask_crc32c(mask_crc32c(value)) == value


def test_crc32c_matches_tensorflow(tmp_path):
    tf = _tf()
    # TFRecord framing stores masked_crc32c(payload) after each record.
    rng = np.random.default_rng(7)
    payloads = [
        rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for n in (1, 13, 4097, 16385, 100_003, 300_001)
    ]
    path = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for p in payloads:
            writer.write(p)
    raw = open(path, "rb").read()
    pos = 0
    for p in payloads:
        (length,) = struct.unpack_from("<Q", raw, pos)
        pos += 12
        assert raw[pos : pos + length] == p
        (stored,) = struct.unpack_from("<I", raw, pos + length)
        pos += length + 4
        assert stored == mask_crc32c(crc._crc32c_numpy(p)) == mask_crc32c(crc32c(p))


# --------------------------------------------------------------------------
# Pure-NumPy round trip (no TensorFlow)
# --------------------------------------------------------------------------


def test_module_has_no_tensorflow_or_protobuf_imports():
    import ast

    package = os.path.dirname(tfc.__file__)
    files = [os.path.join(package, f) for f in os.listdir(package) if f.endswith(".py")]
    imported = set()
    for file in files + [bfloat16_module.__file__]:
        tree = ast.parse(open(file, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "google", "tf_keras", "tensorboard"}, imported


def test_works_when_tensorflow_cannot_be_imported(tmp_path):
    # The package __init__ imports Keras, so pick a backend that needs no TF;
    # sys.modules[...] = None makes any `import tensorflow` raise ImportError.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import numpy as np\n"
        "from kerasformers.checkpoints.tf_checkpoint import (\n"
        "    save_tf_checkpoint, TFCheckpointReader)\n"
        f"p = save_tf_checkpoint({str(tmp_path / 'm')!r}, {{'w': np.arange(6.0).reshape(2, 3)}})\n"
        "assert TFCheckpointReader(p).get_tensor('w').tolist() == [[0, 1, 2], [3, 4, 5]]\n"
    )
    env = dict(os.environ, KERAS_BACKEND="numpy")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(tmp_path))


def test_round_trip_all_dtypes(tmp_path):
    tensors = _sample_tensors()
    tensors["unicode/é/名字"] = np.array(
        ["ascii", "ünïcödé", "名字"]
    )  # str elements come back as utf-8 bytes
    prefix = str(tmp_path / "model.ckpt")
    assert save_tf_checkpoint(prefix, tensors) == prefix
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint",
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
    ]

    reader = TFCheckpointReader(prefix)
    assert reader.keys() == sorted(tensors, key=lambda k: k.encode())
    assert len(reader) == len(tensors)
    assert "f16" in reader and "nope" not in reader
    for name, value in tensors.items():
        expected = np.asarray(value)
        if expected.dtype.kind == "U":
            expected = np.array([s.encode() for s in expected.ravel()], dtype=object).reshape(
                expected.shape
            )
        assert reader.shape(name) == expected.shape
        assert reader.dtype(name) == expected.dtype
        _assert_same(reader.get_tensor(name), expected, name)
    assert reader.tf_dtype("bf16") == "bfloat16"
    assert reader.tf_dtype("strings") == "string"
    assert reader.variable_shapes() == {k: np.shape(v) for k, v in tensors.items()}
    assert [k for k, _ in reader.items()] == reader.keys()


def test_writer_accepts_non_contiguous_and_big_endian_inputs(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tensors = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "big_endian": np.arange(5, dtype=">i4"),
        "list": [[1.0, 2.0], [3.0, 4.0]],
    }
    save_tf_checkpoint(tmp_path / "c", tensors)
    reader = TFCheckpointReader(tmp_path / "c")
    _assert_same(reader.get_tensor("strided"), np.ascontiguousarray(base[::2, 1::3]), "strided")
    _assert_same(reader.get_tensor("transposed"), np.ascontiguousarray(base.T), "transposed")
    _assert_same(reader.get_tensor("big_endian"), np.arange(5, dtype=np.int32), "big_endian")
    _assert_same(reader.get_tensor("list"), np.array([[1.0, 2.0], [3.0, 4.0]]), "list")


def test_multi_block_index_round_trip(tmp_path):
    tensors = {f"layer_{i:04d}/kernel": np.full((2,), i, np.int32) for i in range(700)}
    save_tf_checkpoint(tmp_path / "m", tensors, index_block_size=2048)
    records, num_blocks = sstable._parse_sstable(open(tmp_path / "m.index", "rb").read())
    assert num_blocks > 10
    assert len(records) == 701  # header + tensors
    reader = TFCheckpointReader(tmp_path / "m")
    for name, value in tensors.items():
        _assert_same(reader.get_tensor(name), value, name)


def test_empty_checkpoint(tmp_path):
    save_tf_checkpoint(tmp_path / "empty", {})
    reader = TFCheckpointReader(tmp_path / "empty")
    assert reader.keys() == [] and reader.variable_shapes() == {}


def test_bfloat16_without_ml_dtypes_widens_to_float32(tmp_path, monkeypatch):
    values = np.array([1.5, -2.25, 3.0e38, 1e-39], dtype=ml_dtypes.bfloat16)
    save_tf_checkpoint(tmp_path / "b", {"w": values})
    monkeypatch.setattr(bfloat16_module, "_ml_dtypes", None)
    reader = TFCheckpointReader(tmp_path / "b")
    assert reader.dtype("w") == np.float32
    _assert_same(reader.get_tensor("w"), values.astype(np.float32), "w")


def test_resolve_checkpoint_prefix(tmp_path):
    prefix = str(tmp_path / "bert_model.ckpt")
    save_tf_checkpoint(prefix, {"a": np.ones(2, np.float32)})
    assert resolve_checkpoint_prefix(prefix) == prefix
    assert resolve_checkpoint_prefix(prefix + ".index") == prefix
    assert resolve_checkpoint_prefix(prefix + ".data-00000-of-00001") == prefix
    assert resolve_checkpoint_prefix(tmp_path) == prefix  # via the 'checkpoint' state file

    # A state file naming an absolute path from another machine falls back to the basename.
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "/gcs/elsewhere/bert_model.ckpt"\n'
    )
    assert resolve_checkpoint_prefix(tmp_path) == prefix
    # Without a state file, a single *.index decides.
    os.remove(tmp_path / "checkpoint")
    assert resolve_checkpoint_prefix(str(tmp_path)) == prefix

    save_tf_checkpoint(tmp_path / "other.ckpt", {"b": np.zeros(1)})  # also rewrites the state file
    assert resolve_checkpoint_prefix(tmp_path) == str(tmp_path / "other.ckpt")
    os.remove(tmp_path / "checkpoint")
    with pytest.raises(CheckpointError, match="2 checkpoints"):
        resolve_checkpoint_prefix(tmp_path)

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        resolve_checkpoint_prefix(empty)
    with pytest.raises(CheckpointError, match=r"missing\.ckpt\.index"):
        resolve_checkpoint_prefix(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"missing index file"):
        resolve_checkpoint_prefix(tmp_path / "missing.ckpt.data-00000-of-00001")


# --------------------------------------------------------------------------
# Corrupt and unsupported inputs
# --------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    tensors = {
        "a/kernel": np.arange(1000, dtype=np.float32).reshape(10, 100),
        "b/bias": np.arange(10, dtype=np.float32),
        "names": np.array([b"alpha", b"beta"], dtype=object),
    }
    prefix = str(tmp_path / "model.ckpt")
    save_tf_checkpoint(prefix, tensors)
    return prefix, tensors


def _flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x40]))


def test_missing_index(saved):
    prefix, _ = saved
    os.remove(prefix + ".index")
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index"):
        TFCheckpointReader(prefix)


def test_missing_data_shard(saved):
    prefix, _ = saved
    os.remove(prefix + ".data-00000-of-00001")
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001: missing data shard"):
        TFCheckpointReader(prefix)


def test_truncated_data_file(saved):
    prefix, _ = saved
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as fh:
        fh.truncate(os.path.getsize(data) - 3)
    with pytest.raises(CheckpointError, match="truncated"):
        TFCheckpointReader(prefix)


def test_data_file_truncated_after_open(saved):
    prefix, _ = saved
    reader = TFCheckpointReader(prefix)
    with open(prefix + ".data-00000-of-00001", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CheckpointError, match="truncated"):
        reader.get_tensor("a/kernel")


def test_flipped_data_byte_fails_crc(saved):
    prefix, tensors = saved
    _flip_byte(
        prefix + ".data-00000-of-00001", 1234
    )  # inside "a/kernel" (first tensor, 4000 bytes)
    reader = TFCheckpointReader(prefix)
    with pytest.raises(CheckpointError, match=r"CRC32C mismatch for tensor 'a/kernel'.*corrupt"):
        reader.get_tensor("a/kernel")
    _assert_same(reader.get_tensor("b/bias"), tensors["b/bias"], "b/bias")  # others still fine
    unchecked = TFCheckpointReader(prefix, verify_checksums=False).get_tensor("a/kernel")
    assert unchecked.shape == (10, 100) and not np.array_equal(unchecked, tensors["a/kernel"])


def test_flipped_string_byte_fails_crc(saved):
    prefix, _ = saved
    size = os.path.getsize(prefix + ".data-00000-of-00001")
    _flip_byte(prefix + ".data-00000-of-00001", size - 2)  # inside "names" (written last)
    with pytest.raises(CheckpointError, match="CRC32C mismatch for string tensor 'names'"):
        TFCheckpointReader(prefix).get_tensor("names")


def test_truncated_index(saved):
    prefix, _ = saved
    index = prefix + ".index"
    raw = open(index, "rb").read()
    open(index, "wb").write(raw[:-7])
    with pytest.raises(
        CheckpointError, match=r"\.index: corrupt checkpoint index: bad table magic"
    ):
        TFCheckpointReader(prefix)
    open(index, "wb").write(raw[:20])
    with pytest.raises(CheckpointError, match="shorter than the 48-byte table footer"):
        TFCheckpointReader(prefix)
    open(index, "wb").write(raw[:0])
    with pytest.raises(CheckpointError, match="shorter than"):
        TFCheckpointReader(prefix)


def test_garbage_index(saved):
    prefix, _ = saved
    open(prefix + ".index", "wb").write(
        np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    )
    with pytest.raises(CheckpointError, match="bad table magic"):
        TFCheckpointReader(prefix)


def test_flipped_index_byte_fails_block_crc(saved):
    prefix, _ = saved
    _flip_byte(prefix + ".index", 12)  # inside the first data block
    with pytest.raises(CheckpointError, match="CRC32C mismatch in data block 0"):
        TFCheckpointReader(prefix)


def test_compressed_index_block_is_rejected(tmp_path):
    # Re-stamp the data block as Snappy (with a valid CRC) to reach the compression check.
    records = [(b"", bundle._encode_header()), (b"x", b"")]
    raw = bytearray(sstable._build_sstable(records))
    block_size = len(sstable._build_block(records, 16))  # the only data block starts at offset 0
    raw[block_size] = 1
    raw[block_size + 1 : block_size + 5] = struct.pack(
        "<I", mask_crc32c(crc32c(bytes(raw[: block_size + 1])))
    )
    (tmp_path / "c.index").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="Snappy compression"):
        TFCheckpointReader(tmp_path / "c")


def _write_raw_index(prefix, entries, data=b""):
    records = [(b"", bundle._encode_header())] + sorted(entries)
    with open(prefix + ".index", "wb") as fh:
        fh.write(sstable._build_sstable(records))
    with open(prefix + ".data-00000-of-00001", "wb") as fh:
        fh.write(data)


def test_unsupported_dtype_and_partitioned_variables(tmp_path):
    prefix = str(tmp_path / "odd")
    _write_raw_index(
        prefix,
        [
            (b"handle", bundle._encode_entry(20, (), 0, 0, mask_crc32c(0))),  # DT_RESOURCE
            (
                b"sliced",
                bundle._encode_entry(1, (4,), 0, 0, mask_crc32c(0)) + wire._field_bytes(7, b""),
            ),
            (b"\x00slice-key", b""),  # slice entries are hidden
        ],
    )
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == ["handle", "sliced"]
    with pytest.raises(CheckpointError, match=r"'handle' has unsupported dtype resource"):
        reader.get_tensor("handle")
    with pytest.raises(CheckpointError, match="partitioned variable"):
        reader.get_tensor("sliced")


def test_size_mismatch_in_entry(tmp_path):
    prefix = str(tmp_path / "bad")
    _write_raw_index(
        prefix,
        [(b"w", bundle._encode_entry(1, (3,), 0, 8, mask_crc32c(crc32c(bytes(8)))))],
        bytes(8),
    )
    with pytest.raises(
        CheckpointError, match=r"'w' has 8 bytes but shape \(3,\) of float32 needs 12"
    ):
        TFCheckpointReader(prefix).get_tensor("w")


def test_unknown_tensor_name_suggests_close_matches(saved):
    prefix, _ = saved
    reader = TFCheckpointReader(prefix)
    with pytest.raises(CheckpointError, match=r"'a/kernal' not found .*did you mean 'a/kernel'"):
        reader.get_tensor("a/kernal")
    with pytest.raises(CheckpointError, match="not found"):
        reader.shape("zzz")


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="unsupported dtype"):
        save_tf_checkpoint(tmp_path / "x", {"t": np.array(["2020-01-01"], dtype="datetime64[D]")})
    with pytest.raises(CheckpointError, match="str or bytes"):
        save_tf_checkpoint(tmp_path / "x", {"o": np.array([1, "a"], dtype=object)})
    with pytest.raises(CheckpointError, match="non-empty strings"):
        save_tf_checkpoint(tmp_path / "x", {"": np.zeros(1)})
    assert not any(n.startswith("x.") for n in os.listdir(tmp_path))  # no half-written checkpoint


# --------------------------------------------------------------------------
# Cross-checks against TensorFlow
# --------------------------------------------------------------------------


def test_reads_checkpoint_written_by_tensorflow(tmp_path):
    tf = _tf()
    tensors = _sample_tensors()
    prefix = tmp_path / "tf_written"
    _savev2(tf, prefix, tensors)
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == [name for name, _ in tf.train.list_variables(str(prefix))]
    assert reader.variable_shapes() == {
        n: tuple(s) for n, s in tf.train.list_variables(str(prefix))
    }
    for name, value in tensors.items():
        _assert_same(reader.get_tensor(name), value, name)


def test_reads_tensorflow_checkpoint_with_multiple_index_blocks(tmp_path):
    tf = _tf()
    rng = np.random.default_rng(99)
    # Random (unshareable) 90-byte names push the index past TF's 256 KiB block size.
    names = sorted({f"{rng.bytes(16).hex()}/{rng.bytes(24).hex()}/w" for _ in range(3000)})
    prefix = str(tmp_path / "many")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[np.int32(i) for i in range(len(names))],
    )
    _, num_blocks = sstable._parse_sstable(open(prefix + ".index", "rb").read())
    assert num_blocks > 1
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == names
    assert [int(reader.get_tensor(n)) for n in names] == list(range(len(names)))


def test_reads_tf_train_checkpoint_with_object_graph(tmp_path):
    tf = _tf()
    module = tf.Module()
    module.kernel = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))
    module.step = tf.Variable(np.int64(42))
    path = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt"))
    reader = TFCheckpointReader(path)
    tf_reader = tf.train.load_checkpoint(path)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in reader.keys()
    assert reader.variable_shapes() == {n: tuple(s) for n, s in tf.train.list_variables(path)}
    for name in reader.keys():
        ours, theirs = reader.get_tensor(name), tf_reader.get_tensor(name)
        if reader.dtype(name) == np.dtype(object):
            assert ours.shape == () and ours.item() == theirs
        else:
            _assert_same(ours, theirs, name)


def test_reads_tf1_saver_checkpoint_directory(tmp_path):
    tf = _tf()
    with tf.Graph().as_default():
        kernel = tf.compat.v1.get_variable(
            "bert/pooler/dense/kernel", initializer=np.arange(6, dtype=np.float32).reshape(2, 3)
        )
        bias = tf.compat.v1.get_variable(
            "bert/pooler/dense/bias", initializer=np.float32([0.5, -1.0, 2.0])
        )
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saved = saver.save(sess, str(tmp_path / "bert_model.ckpt"), write_meta_graph=False)
            values = sess.run({"kernel": kernel, "bias": bias})
    assert resolve_checkpoint_prefix(tmp_path) == saved
    reader = TFCheckpointReader(tmp_path)
    _assert_same(reader.get_tensor("bert/pooler/dense/kernel"), values["kernel"], "kernel")
    _assert_same(reader.get_tensor("bert/pooler/dense/bias"), values["bias"], "bias")


def test_tensorflow_reads_our_checkpoint(tmp_path):
    tf = _tf()
    tensors = _sample_tensors()
    tensors["unicode/é"] = np.array(["ünïcödé", "x"])
    prefix = str(tmp_path / "ours" / "model.ckpt")
    save_tf_checkpoint(prefix, tensors)
    assert tf.train.latest_checkpoint(str(tmp_path / "ours")) == prefix
    assert dict((n, tuple(s)) for n, s in tf.train.list_variables(prefix)) == {
        k: np.shape(v) for k, v in tensors.items()
    }
    tf_reader = tf.train.load_checkpoint(prefix)
    for name, value in tensors.items():
        theirs = tf_reader.get_tensor(name)
        expected = np.asarray(value)
        if expected.dtype.kind in "UO":
            flat = [s.encode() if isinstance(s, str) else s for s in expected.ravel().tolist()]
            theirs_flat = [theirs] if expected.ndim == 0 else np.asarray(theirs).ravel().tolist()
            assert theirs_flat == flat, name
        else:
            _assert_same(theirs, expected, name)
    # TF's own restore op (verifies CRCs too) agrees.
    restored = tf.raw_ops.RestoreV2(
        prefix=prefix,
        tensor_names=["f64", "bf16"],
        shape_and_slices=["", ""],
        dtypes=[tf.float64, tf.bfloat16],
    )
    _assert_same(restored[0].numpy(), tensors["f64"], "f64")
    _assert_same(restored[1].numpy(), tensors["bf16"], "bf16")


def test_tensorflow_reads_our_multi_block_checkpoint(tmp_path):
    tf = _tf()
    tensors = {
        f"encoder/layer_{i:03d}/w": np.arange(i % 7, dtype=np.float32) + i for i in range(500)
    }
    prefix = str(tmp_path / "blocks")
    save_tf_checkpoint(prefix, tensors, index_block_size=1024)
    _, num_blocks = sstable._parse_sstable(open(prefix + ".index", "rb").read())
    assert num_blocks > 10
    tf_reader = tf.train.load_checkpoint(prefix)
    assert sorted(tf_reader.get_variable_to_shape_map()) == sorted(tensors)
    for name, value in tensors.items():
        _assert_same(tf_reader.get_tensor(name), value, name)


def test_tensorflow_and_we_both_detect_a_flipped_data_byte(tmp_path):
    """A flipped data byte is caught by both TensorFlow and us (same CRC convention)."""
    tf = _tf()
    prefix = str(tmp_path / "c")
    save_tf_checkpoint(prefix, {"w": np.arange(100, dtype=np.float32)})
    _flip_byte(prefix + ".data-00000-of-00001", 50)
    with pytest.raises(
        Exception, match="Checksum does not match"
    ):  # TF raises a generic OpError here
        tf.train.load_checkpoint(prefix).get_tensor("w")
    with pytest.raises(CheckpointError, match="CRC32C mismatch"):
        TFCheckpointReader(prefix).get_tensor("w")
