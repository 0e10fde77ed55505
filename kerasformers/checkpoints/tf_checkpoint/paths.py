"""Checkpoint file names: prefix <-> ``.index`` / ``.data-NNNNN-of-MMMMM`` and the
``checkpoint`` state file.

``<prefix>.data-NNNNN-of-MMMMM`` shards hold raw tensor bytes, tensor after
tensor, little-endian, with no padding; ``<prefix>.index`` says where each
tensor is.

>>> _data_path("model.ckpt", 0, 1)
'model.ckpt.data-00000-of-00001'
"""

import os
import re

from kerasformers.checkpoints.errors import CheckpointError

_DATA_SUFFIX_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_RE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)


def _data_path(prefix, shard, num_shards):
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def _unescape_text_proto(s):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def _escape_text_proto(s):
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _resolve_directory(directory):
    state_file = os.path.join(directory, "checkpoint")
    if os.path.isfile(state_file):
        try:
            with open(state_file, encoding="utf-8") as fh:
                m = _STATE_RE.search(fh.read())
        except (OSError, UnicodeDecodeError):
            m = None
        if m:
            named = _unescape_text_proto(m.group(1))
            # The state file often holds an absolute path from the machine that
            # trained the model; the basename next to the state file is what we want.
            for candidate in (
                os.path.join(directory, named),
                os.path.join(directory, os.path.basename(named)),
            ):
                if os.path.isfile(candidate + ".index"):
                    return candidate
    indexes = sorted(name for name in os.listdir(directory) if name.endswith(".index"))
    if len(indexes) == 1:
        return os.path.join(directory, indexes[0][: -len(".index")])
    if not indexes:
        raise CheckpointError(
            f"{directory}: directory contains no TensorFlow checkpoint (*.index file)"
        )
    raise CheckpointError(
        f"{directory}: directory contains {len(indexes)} checkpoints ({', '.join(indexes[:5])}"
        f"{', ...' if len(indexes) > 5 else ''}) and no usable 'checkpoint' state file; "
        "pass a prefix instead"
    )


def resolve_checkpoint_prefix(path):
    """Turn a prefix, ``.index`` file, ``.data-*`` shard or directory into a checkpoint prefix.

    A directory resolves through its ``checkpoint`` state file (like
    ``tf.train.latest_checkpoint``, falling back to the basename when the file
    names a path from another machine) or else its single ``*.index`` file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = _resolve_directory(path)
    elif path.endswith(".index"):
        prefix = path[: -len(".index")]
    elif _DATA_SUFFIX_RE.search(path):
        prefix = _DATA_SUFFIX_RE.sub("", path)
    else:
        prefix = path
    index_path = prefix + ".index"
    if not os.path.isfile(index_path):
        if path == prefix and not os.path.exists(path):
            hint = "no such file or directory"
        else:
            hint = "missing index file"
        raise CheckpointError(
            f"{index_path}: {hint}; not a TensorFlow checkpoint (resolved from {path!r})"
        )
    return prefix
