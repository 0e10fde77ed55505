"""Uniform read access to every checkpoint format we load.

`open_checkpoint(path)` returns a `Source` with `keys()`, `shape(key)`,
`dtype(key)` (both from the header or index: no data is read) and `get(key)`
(one tensor as a NumPy array, read when asked), whatever the format on disk:

* Google/TF checkpoints (`model.ckpt` prefix, `.index` + `.data-*`), read by our
  own tensor-bundle reader: TensorFlow is not needed;
* HF `model.safetensors`, sharded `model.safetensors.index.json`, or a directory;
  each tensor is read from the shard the index's `weight_map` names, and a shard
  path must stay inside the index's directory;
* `pytorch_model.bin` (and sharded), via `torch.load(weights_only=True,
  mmap=True)` (no pickle code execution; tensors stay in the file until read,
  each read one is copied out and its pages handed back), only when torch is
  installed;
* a plain dict name -> array.

`naming` tells which column of a model's weight table applies: 'google' for
slash-separated TF names, 'hf' for dotted PyTorch-style names.

>>> import numpy as np
>>> name = "bert/embeddings/word_embeddings"
>>> src = open_checkpoint({name: np.zeros((3, 2))})
>>> src.naming, src.shape(name), src.dtype(name)
('google', (3, 2), dtype('float64'))
"""

import json
import math
import os

import numpy as np

from kerasformers.checkpoints.bfloat16 import is_bfloat16, widen_bfloat16
from kerasformers.checkpoints.errors import CheckpointError

# safetensors dtype codes -> numpy, little-endian as the format stores them
# ('BF16' is widened to float32 on read, see bfloat16.py).
_ST_DTYPES = {
    code: np.dtype(dt)
    for code, dt in {
        "F64": "<f8",
        "F32": "<f4",
        "F16": "<f2",
        "BF16": "<u2",
        "I64": "<i8",
        "I32": "<i4",
        "I16": "<i2",
        "I8": "i1",
        "U64": "<u8",
        "U32": "<u4",
        "U16": "<u2",
        "U8": "u1",
        "BOOL": "?",
    }.items()
}
_MAX_HEADER = 100_000_000  # bytes; the safetensors library's own limit


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

    def dtype(self, key):
        """The NumPy dtype `get(key)` returns (bfloat16 is widened: float32)."""
        if key not in self._shapes:
            raise CheckpointError(f"{self.path}: no tensor named {key!r}")
        return np.dtype(self._dtype(key))

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

    def _dtype(self, key):
        return self._base.dtype(self._aliases.get(key, key))


class DictSource(Source):
    def __init__(self, tensors, path="<dict>"):
        super().__init__(path)
        self._tensors = {k: np.asarray(v) for k, v in tensors.items()}
        self._shapes = {k: v.shape for k, v in self._tensors.items()}

    def _read(self, key):
        # read-only: the loader hands fresh arrays to the backend without a copy, and a
        # caller's array must never become (and be changed through) a model's weight
        view = self._tensors[key].view()
        view.flags.writeable = False
        return view

    def _dtype(self, key):
        return self._tensors[key].dtype


class SafetensorsSource(Source):
    """One or more .safetensors files, read tensor by tensor.

    Parsed by hand (the format is an 8-byte header length, a JSON header, raw
    bytes) so that bf16 tensors read into NumPy and a bad header is refused,
    naming the file and tensor, before any tensor is used (`parse_header`).

    Tensors are read with plain file reads, not a memory map: a file truncated
    or rewritten while mapped would kill the process (SIGBUS) on the first
    touch of a lost page; a read instead returns short, and a file whose size
    changed since it was opened is refused. The price, measured on a 100 MB
    file in the page cache: 0.11-0.2 s to read every tensor against 0.02 s
    through a map, and the tensors held in process memory rather than in the
    page cache (the same 106 MB of RSS). `weight_map` (from a shard index)
    decides which file each listed tensor is read from.
    """

    def __init__(self, files, path=None, weight_map=None):
        super().__init__(path or files[0])
        self._where = {}
        found = {}  # tensor -> every file holding it
        for file in files:
            for key, where in self._open(file).items():
                found.setdefault(key, []).append(file)
                home = (weight_map or {}).get(key)
                if home is None or _same_file(home, file):
                    self._where[key] = where
                    self._shapes[key] = where[3]
        _check_homes(found, weight_map, self.path)

    @staticmethod
    def _open(file):
        if not os.path.isfile(file):
            raise CheckpointError(f"safetensors file not found: {file}")
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: not a safetensors file (too short)")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{file}: corrupt safetensors header (length {n}, file {size} bytes)"
                )
            entries = parse_header(f.read(n), size - 8 - n, file)
        return {
            key: (file, size, 8 + n + start, shape, code)
            for key, (code, shape, start, end) in entries.items()
        }

    def _dtype(self, key):
        code = self._where[key][4]
        return np.float32 if code == "BF16" else _ST_DTYPES[code]

    def _read(self, key):
        file, size, offset, shape, code = self._where[key]
        dtype = _ST_DTYPES[code]
        nbytes = math.prod(shape) * dtype.itemsize
        buf = np.empty(nbytes, np.uint8)
        try:
            with open(file, "rb") as f:
                now = os.fstat(f.fileno()).st_size
                if now != size:
                    raise CheckpointError(
                        f"{file}: the file changed while it was being read "
                        f"({size} bytes when opened, {now} now)"
                    )
                f.seek(offset)
                got = f.readinto(buf) if nbytes else 0
        except OSError as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from None
        if got != nbytes:
            raise CheckpointError(
                f"{file}: tensor {key!r}: read {got} of {nbytes} bytes "
                "(the file changed while it was being read)"
            )
        arr = buf.view(dtype).reshape(shape)
        return widen_bfloat16(arr) if code == "BF16" else arr


def _unique_object(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise CheckpointError(f"duplicate key {twice[0]!r}")
    return dict(pairs)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw, data_size, file="<header>"):
    """Check a safetensors JSON header against a data section of `data_size` bytes.

    Returns {tensor: (dtype code, shape, start, end)}. Raises CheckpointError,
    naming `file` and the tensor, for: JSON that is not an object, a duplicate
    tensor name, an unknown dtype, a shape that is not a list of integers >= 0,
    offsets that are not two integers 0 <= start <= end, a byte count other than
    shape x itemsize, a range past the end of the file, or two ranges that overlap.

    >>> parse_header(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8)
    {'w': ('F32', (2,), 0, 8)}
    >>> try:
    ...     parse_header(b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', 8)
    ... except CheckpointError as e:
    ...     print(e)
    <header>: tensor 'w': data_offsets [0, 8] hold 8 bytes, but shape (3,) of F32 needs 12
    """
    try:
        header = json.loads(raw, object_pairs_hook=_unique_object)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{file}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)"
        )
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict):
                raise CheckpointError(
                    f"{file}: corrupt safetensors header (__metadata__ is "
                    f"a {type(info).__name__}, not an object)"
                )
            continue
        bad = f"{file}: tensor {key!r}:"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(
                f"{bad} header entry needs dtype, shape and data_offsets, found {info!r:.200}"
            )
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _ST_DTYPES:
            raise CheckpointError(
                f"{bad} unknown dtype {code!r:.50} (known: {', '.join(sorted(_ST_DTYPES))})"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(
                f"{bad} shape must be a list of integers >= 0, found {shape!r:.200}"
            )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(map(_is_int, offsets))
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(
                f"{bad} data_offsets must be two integers 0 <= start <= end, found {offsets!r:.200}"
            )
        start, end = offsets
        need = math.prod(shape) * _ST_DTYPES[code].itemsize
        if end - start != need:
            raise CheckpointError(
                f"{bad} data_offsets {offsets} hold {end - start} bytes, "
                f"but shape {tuple(shape)} of {code} needs {need}"
            )
        if end > data_size:
            raise CheckpointError(
                f"{file}: truncated: tensor {key!r} ends at byte {end} of "
                f"the data, which has {data_size} bytes"
            )
        entries[key] = (code, tuple(shape), start, end)
    previous = None
    for key, (_, _, start, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if start == end:
            continue
        if previous is not None and start < previous[1]:
            raise CheckpointError(
                f"{file}: tensors {previous[0]!r} and {key!r} overlap "
                f"(bytes {previous[2]}-{previous[1]} and {start}-{end})"
            )
        previous = (key, end, start)
    return entries


def _same_file(a, b):
    return os.path.normcase(os.path.normpath(a)) == os.path.normcase(os.path.normpath(b))


def _check_homes(found, weight_map, path):
    """Every tensor the index lists is in its shard; an unlisted one is in one shard only."""
    for key, files in found.items():
        if len(files) > 1 and key not in (weight_map or {}):
            raise CheckpointError(
                f"{path}: tensor {key!r} is in {len(files)} shards "
                f"({', '.join(files)}) and the index does not say which"
            )
    for key, home in (weight_map or {}).items():
        if not any(_same_file(home, f) for f in found.get(key, ())):
            raise CheckpointError(
                f"{path}: the index puts tensor {key!r} in {home}, which does not hold it"
            )


class TorchBinSource(Source):
    """pytorch_model.bin files, loaded with `weights_only=True` (no code execution).

    Zip-format files (every `torch.save` since torch 1.6) are memory-mapped
    (`mmap=True`): opening reads only the pickled table of contents, and `get`
    copies one tensor out of the map and hands its pages back to the kernel
    (`madvise(MADV_DONTNEED)` on Linux, after checking that the pages belong to
    this file's private map), so loading holds about one tensor beyond the
    model. A file whose size or modification time changed since it was opened
    is refused before each read (a map of a file truncated underneath would
    fault). Legacy (pre-zip) files are read whole, as before.
    """

    def __init__(self, files, path=None, weight_map=None):
        super().__init__(path or files[0])
        for file in files:
            if not os.path.isfile(file):
                raise CheckpointError(f"PyTorch checkpoint file not found: {file}")
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"{files[0]}: reading a PyTorch .bin checkpoint needs torch installed "
                "(pip install torch==2.13.0), or convert it to safetensors"
            ) from None
        self._torch = torch
        self._tensors = {}
        self._file_of = {}
        self._stamps = {}
        self._maps = {}  # file -> [(start, end)] of its private maps in this process
        found = {}  # tensor -> every file holding it
        for file in files:
            state = self._load(file)
            if not isinstance(state, dict):
                raise CheckpointError(
                    f"{file}: expected a state dict, found {type(state).__name__}"
                )
            for k, v in state.items():
                if not isinstance(k, str):
                    continue
                found.setdefault(k, []).append(file)
                home = (weight_map or {}).get(k)
                if home is not None and not _same_file(home, file):
                    continue  # the index says this name is read from another shard
                if hasattr(v, "detach"):
                    self._tensors[k] = v.detach()
                    self._file_of[k] = file
        _check_homes(found, weight_map, self.path)
        self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        self._dtypes = {}
        for k, v in self._tensors.items():
            if v.dtype == torch.bfloat16:  # NumPy has no bfloat16: widened on read
                self._dtypes[k] = np.dtype(np.float32)
                continue
            try:
                self._dtypes[k] = torch.empty(0, dtype=v.dtype).numpy().dtype
            except TypeError:
                raise CheckpointError(
                    f"{self._file_of[k]}: tensor {k!r} has dtype {v.dtype}, which NumPy cannot hold"
                ) from None

    def _load(self, file):
        torch = self._torch
        stat = os.stat(file)
        self._stamps[file] = (stat.st_size, stat.st_mtime_ns)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({e})") from None
            state = None  # a legacy (pre-zip) file: read it whole
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({e})") from None
        if state is None:
            try:
                return torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({e})") from None
        self._maps[file] = _private_maps_of(file)
        return state

    def _dtype(self, key):
        return self._dtypes[key]

    def _read(self, key):
        torch = self._torch
        file, v = self._file_of[key], self._tensors[key]
        try:
            stat = os.stat(file)
        except OSError as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from None
        if (stat.st_size, stat.st_mtime_ns) != self._stamps[file]:
            raise CheckpointError(
                f"{file}: the file changed while it was being read "
                f"({self._stamps[file][0]} bytes when opened, {stat.st_size} now)"
            )
        if v.dtype == torch.bfloat16:
            value = widen_bfloat16(v.view(torch.int16).numpy().view(np.uint16))
        else:
            value = np.array(v.numpy(), copy=True)
        _hand_back(v, self._maps.get(file, ()))
        return value


def _private_maps_of(file):
    """[(start, end)] of the private maps of `file` in this process (Linux), else []."""
    real = os.path.realpath(file)
    maps = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[1][3] == "p" and parts[5].rstrip("\n") == real:
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    maps.append((start, end))
    except OSError:
        return []
    return maps


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _hand_back(tensor, maps):
    """Drop the resident pages of a tensor read from a private file map: they are
    clean copies of the file, so the kernel reloads them if touched again."""
    if not maps or not tensor.is_contiguous():
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if not any(lo <= start and end <= hi for lo, hi in maps):
        return
    first = -(-start // _PAGE) * _PAGE
    last = end // _PAGE * _PAGE
    if last > first:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


class TFSource(Source):
    def __init__(self, prefix):
        from kerasformers.checkpoints.tf_checkpoint import TFCheckpointReader

        super().__init__(prefix)
        self._reader = TFCheckpointReader(prefix)
        self._shapes = dict(self._reader.variable_shapes())

    def _read(self, key):
        value = self._reader.get_tensor(key)
        return widen_bfloat16(value) if is_bfloat16(value.dtype) else value

    def _dtype(self, key):
        dtype = self._reader.dtype(key)
        return np.float32 if is_bfloat16(dtype) else dtype


def _sharded(index_file):
    """(shard files, {tensor: its shard file}) from a `*.index.json`, checked.

    The index must be a JSON object whose `weight_map` maps tensor names to
    shard file names; a shard must lie inside the index's directory (no
    absolute path, no `..`, no symlink leading out).
    """
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=_unique_object)
    except OSError as e:
        raise CheckpointError(f"{index_file}: cannot read shard index ({e})") from None
    except (ValueError, RecursionError) as e:  # JSON, UTF-8 and duplicate-key errors
        raise CheckpointError(f"{index_file}: bad shard index ({e})") from None
    if not isinstance(index, dict):
        raise CheckpointError(
            f"{index_file}: bad shard index (a JSON {type(index).__name__}, "
            "not an object with a 'weight_map')"
        )
    if "weight_map" not in index:
        raise CheckpointError(f"{index_file}: bad shard index (no 'weight_map')")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index_file}: bad shard index ('weight_map' must be a non-empty "
            f"object of tensor name -> shard file, found {weight_map!r:.100})"
        )
    folder = os.path.dirname(os.path.abspath(index_file))
    inside = os.path.realpath(folder)
    homes = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(
                f"{index_file}: bad shard index (tensor {key!r} -> "
                f"{shard!r:.100}: a shard must be a file name)"
            )
        parts = shard.replace("\\", "/").split("/")
        if os.path.isabs(shard) or os.path.splitdrive(shard)[0] or ".." in parts or "\0" in shard:
            raise CheckpointError(
                f"{index_file}: shard {shard!r} of tensor {key!r} is outside "
                "the model directory (absolute or '..' path); refused"
            )
        full = os.path.join(folder, shard)
        real = os.path.realpath(full)
        if os.path.commonpath([inside, real]) != inside:
            raise CheckpointError(
                f"{index_file}: shard {shard!r} of tensor {key!r} leads "
                f"outside the model directory (to {real}); refused"
            )
        homes[key] = full
    return sorted(set(homes.values())), homes


def find_checkpoint_in_dir(folder):
    """Path of the weights file (or TF prefix) inside a model directory, else None."""
    for name in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
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
                "pytorch_model.bin, *.ckpt.index)"
            )
        if found == path:  # TF 'checkpoint' state file
            from kerasformers.checkpoints.tf_checkpoint import resolve_checkpoint_prefix

            return TFSource(resolve_checkpoint_prefix(path))
        path = found
    if path.endswith(".safetensors.index.json"):
        files, homes = _sharded(path)
        return SafetensorsSource(files, path, weight_map=homes)
    if path.endswith(".safetensors"):
        return SafetensorsSource([path])
    if path.endswith(".bin.index.json"):
        files, homes = _sharded(path)
        return TorchBinSource(files, path, weight_map=homes)
    if path.endswith((".bin", ".pt", ".pth")):
        return TorchBinSource([path])
    if os.path.exists(path + ".index") or path.endswith(".index") or ".data-" in path:
        from kerasformers.checkpoints.tf_checkpoint import resolve_checkpoint_prefix

        return TFSource(resolve_checkpoint_prefix(path))
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(
        f"{path}: unrecognised checkpoint format "
        "(expected .safetensors, .bin or a TF checkpoint prefix)"
    )
