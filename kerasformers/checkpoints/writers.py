"""Writing checkpoints: Google TF format (no TensorFlow needed) and HF safetensors.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> save_hf_directory(d, {"w": np.ones((2, 2), "float32")}, {"model_type": "bert"})
>>> sorted(os.listdir(d))
['config.json', 'model.safetensors']
"""

import json
import os

import numpy as np


def save_google_checkpoint(prefix, tensors):
    """Write `prefix.index` + `prefix.data-00000-of-00001` (+ `checkpoint`)."""
    from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint

    folder = os.path.dirname(os.fspath(prefix))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_tf_checkpoint(os.fspath(prefix), {k: np.asarray(v) for k, v in tensors.items()})


def save_hf_directory(folder, tensors, config=None):
    """Write `model.safetensors` (+ `config.json`) loadable by transformers' from_pretrained."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
