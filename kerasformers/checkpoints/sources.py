"""Uniform read access to every checkpoint format we load.

`open_checkpoint(path)` returns a `Source` with `keys()`, `shape(key)` and
`get(key)` (a NumPy array), whatever the format on disk:

* Google/TF checkpoints (`model.ckpt` prefix, `.index` + `.data-*`), read by our
  own tensor-bundle reader: TensorFlow is not needed;
* HF `model.safetensors`, sharded `model.safetensors.index.json`, or a directory;
* `pytorch_model.bin` (and sharded), via `torch.load(weights_only=True)` (no
  pickle code execution), only when torch is installed;
* a plain dict name -> array.

`naming` tells which column of a model's weight table applies: 'google' for
slash-separated TF names, 'hf' for dotted PyTorch-style names.

>>> import numpy as np
>>> src = open_checkpoint({"bert/embeddings/word_embeddings": np.zeros((3, 2))})
>>> src.naming, src.shape("bert/embeddings/word_embeddings")
('google', (3, 2))
"""

import json
import mmap
import os

import numpy as np

from kerasformers.checkpoints.bfloat16 import is_bfloat16, widen_bfloat16
from kerasformers.checkpoints.errors import CheckpointError

# safetensors dtype codes -> numpy ('BF16' is widened to float32 on read, see bfloat16.py).
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


class Source:
    """Base: subclasses fill `self._shapes` (key -> shape) and implement `_read`."""

    def __init__(self, path):
        self.path = path
        self._shapes = {}

    def keys(self):
        return list(self._shapes)

    def __contains__(self, key):
        return key in self._shapes

    def shape(self, key):
        return tuple(self._shapes[key])

    def get(self, key):
        if key not in self._shapes:
            raise CheckpointError(f"{self.path}: no tensor named {key!r}")
        return self._read(key)

    @property
    def naming(self):
        keys = self.keys()
        slashes = sum("/" in k for k in keys)
        return "google" if slashes * 2 >= len(keys) and keys else "hf"

    def __repr__(self):
        return f"<{type(self).__name__} {self.path} ({len(self._shapes)} tensors)>"


class AliasedSource(Source):
    """`base` with extra names that read existing tensors (alias -> target).

    T5 reads a transformers checkpoint without `lm_head.weight` (tied to the
    shared embedding) into an untied head by aliasing it to `shared.weight`.

    >>> import numpy as np
    >>> src = AliasedSource(DictSource({"shared.weight": np.ones((3, 2))}),
    ...                     {"lm_head.weight": "shared.weight"})
    >>> sorted(src.keys()), src.shape("lm_head.weight")
    (['lm_head.weight', 'shared.weight'], (3, 2))
    """

    def __init__(self, base, aliases):
        super().__init__(base.path)
        self._base = base
        self._aliases = dict(aliases)
        self._shapes = {k: base.shape(k) for k in base.keys()}
        self._shapes.update({a: base.shape(t) for a, t in self._aliases.items()})

    def _read(self, key):
        return self._base.get(self._aliases.get(key, key))


class DictSource(Source):
    def __init__(self, tensors, path="<dict>"):
        super().__init__(path)
        self._tensors = {k: np.asarray(v) for k, v in tensors.items()}
        self._shapes = {k: v.shape for k, v in self._tensors.items()}

    def _read(self, key):
        return self._tensors[key]


class SafetensorsSource(Source):
    """One or more .safetensors files, memory-mapped.

    Parsed by hand (the format is an 8-byte header length, a JSON header, raw
    bytes) so that bf16 tensors read into NumPy and a truncated file is caught
    from the header offsets before any tensor is used.
    """

    def __init__(self, files, path=None):
        super().__init__(path or files[0])
        self._where = {}
        self._maps = []
        for file in files:
            self._open(file)

    def _open(self, file):
        if not os.path.isfile(file):
            raise CheckpointError(f"safetensors file not found: {file}")
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: not a safetensors file (too short)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise CheckpointError(f"{file}: corrupt safetensors header (length {n}, file {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{file}: corrupt safetensors header (a JSON "
                                      f"{type(header).__name__}, not an object)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._maps.append(mm)
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                start, end = info["data_offsets"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{file}: bad header entry for {key!r} ({e!r})") from None
            if 8 + n + end > size:
                raise CheckpointError(
                    f"{file}: truncated: tensor {key!r} ends at byte {8 + n + end} "
                    f"but the file has {size} bytes")
            if start < 0 or (end - start) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise CheckpointError(f"{file}: tensor {key!r} has {end - start} bytes, "
                                      f"shape {shape} {info['dtype']} needs more/less")
            self._shapes[key] = shape
            self._where[key] = (mm, 8 + n + start, dtype, shape, info["dtype"])

    def _read(self, key):
        mm, offset, dtype, shape, code = self._where[key]
        count = int(np.prod(shape))
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=offset) if count else np.zeros(0, dtype)
        arr = arr.reshape(shape)
        return widen_bfloat16(arr) if code == "BF16" else arr


class TorchBinSource(Source):
    """pytorch_model.bin files, loaded with `weights_only=True` (no code execution)."""

    def __init__(self, files, path=None):
        super().__init__(path or files[0])
        for file in files:
            if not os.path.isfile(file):
                raise CheckpointError(f"PyTorch checkpoint file not found: {file}")
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{files[0]}: reading a PyTorch .bin checkpoint needs torch installed "
                "(pip install torch==2.13.0), or convert it to safetensors") from None
        self._tensors = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({e})") from None
            if not isinstance(state, dict):
                raise CheckpointError(f"{file}: expected a state dict, found {type(state).__name__}")
            for k, v in state.items():
                if hasattr(v, "detach"):
                    v = v.detach()
                    if v.dtype == torch.bfloat16:  # NumPy has no bfloat16: widen its bits
                        self._tensors[k] = widen_bfloat16(v.view(torch.int16).numpy().view(np.uint16))
                    else:
                        self._tensors[k] = v.numpy()
        self._shapes = {k: v.shape for k, v in self._tensors.items()}

    def _read(self, key):
        return self._tensors[key]


class TFSource(Source):
    def __init__(self, prefix):
        from kerasformers.checkpoints.tf_checkpoint import TFCheckpointReader

        super().__init__(prefix)
        self._reader = TFCheckpointReader(prefix)
        self._shapes = dict(self._reader.variable_shapes())

    def _read(self, key):
        value = self._reader.get_tensor(key)
        return widen_bfloat16(value) if is_bfloat16(value.dtype) else value


def _sharded(index_file):
    try:
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{index_file}: bad shard index ({e!r})") from None
    folder = os.path.dirname(index_file)
    return [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]


def find_checkpoint_in_dir(folder):
    """Path of the weights file (or TF prefix) inside a model directory, else None."""
    for name in ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    index = sorted(f for f in os.listdir(folder) if f.endswith(".index") and "ckpt" in f)
    if index:
        return os.path.join(folder, index[-1][: -len(".index")])
    if os.path.exists(os.path.join(folder, "checkpoint")):
        return folder
    safetensors = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if len(safetensors) == 1:
        return os.path.join(folder, safetensors[0])
    return None


def open_checkpoint(path):
    """Open a checkpoint of any supported format; raises CheckpointError otherwise."""
    if isinstance(path, Source):
        return path
    if isinstance(path, dict):
        return DictSource(path)
    path = os.fspath(path)
    if os.path.isdir(path):
        found = find_checkpoint_in_dir(path)
        if found is None:
            raise CheckpointError(
                f"{path}: no weights found (looked for model.safetensors, "
                "pytorch_model.bin, *.ckpt.index)")
        if found == path:  # TF 'checkpoint' state file
            from kerasformers.checkpoints.tf_checkpoint import resolve_checkpoint_prefix
            return TFSource(resolve_checkpoint_prefix(path))
        path = found
    if path.endswith(".safetensors.index.json"):
        return SafetensorsSource(_sharded(path), path)
    if path.endswith(".safetensors"):
        return SafetensorsSource([path])
    if path.endswith(".bin.index.json"):
        return TorchBinSource(_sharded(path), path)
    if path.endswith((".bin", ".pt", ".pth")):
        return TorchBinSource([path])
    if os.path.exists(path + ".index") or path.endswith(".index") or ".data-" in path:
        from kerasformers.checkpoints.tf_checkpoint import resolve_checkpoint_prefix
        return TFSource(resolve_checkpoint_prefix(path))
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path}: unrecognised checkpoint format "
                          "(expected .safetensors, .bin or a TF checkpoint prefix)")
