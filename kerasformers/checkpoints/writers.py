"""Writing checkpoints: Google TF format (no TensorFlow needed) and HF safetensors.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> save_hf_directory(d, {"w": np.ones((2, 2), "float32")}, {"model_type": "bert"})
>>> sorted(os.listdir(d))
['config.json', 'model.safetensors']
"""

import json
import os
import uuid

import numpy as np

from kerasformers.checkpoints.bfloat16 import is_bfloat16


def save_google_checkpoint(prefix, tensors):
    """Write `prefix.index` + `prefix.data-00000-of-00001` (+ `checkpoint`)."""
    from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint

    tensors = _float_tensors(tensors, prefix)
    folder = os.path.dirname(os.fspath(prefix))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_tf_checkpoint(os.fspath(prefix), tensors)


def save_hf_directory(folder, tensors, config=None):
    """Write `model.safetensors` (+ `config.json`) loadable by transformers' from_pretrained.

    Each file is written under a temporary name and renamed into place, so an
    interrupted save leaves the old file whole and no temporary file behind.
    """
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in _float_tensors(tensors, folder).items()}
    os.makedirs(folder, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    target = os.path.join(folder, "model.safetensors")
    _replace_atomically(target, tag, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if config is not None:

        def write_config(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, ensure_ascii=False)

        _replace_atomically(os.path.join(folder, "config.json"), tag, write_config)


def _replace_atomically(target, tag, write):
    try:
        write(target + tag)
        os.replace(target + tag, target)
    finally:
        if os.path.exists(target + tag):
            os.remove(target + tag)


def _float_tensors(tensors, where):
    """`tensors` as arrays; ValueError before anything is written if one is not floating point.

    Model weights are floating point: an integer or bool `dtype=` would write
    rounded garbage that loads back without complaint.
    """
    out = {}
    for name, value in tensors.items():
        value = np.asarray(value)
        if not (value.dtype.kind == "f" or is_bfloat16(value.dtype)):
            raise ValueError(
                f"{os.fspath(where)}: cannot write {name!r} as {value.dtype}: model weights are "
                "saved as floating point only (dtype= float16, float32 or float64)"
            )
        out[name] = value
    return out
