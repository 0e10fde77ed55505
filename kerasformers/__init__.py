"""kerasformers: bert4keras rebuilt for Keras 3 (JAX, PyTorch, TensorFlow).

>>> from kerasformers import build_transformer_model
>>> callable(build_transformer_model)
True

Importing the package is cheap: Keras (and so the backend) is imported on first
use of a model API (`from kerasformers import build_transformer_model`), so
`kerasformers.tokenizers` works without any backend.
If no backend is configured (`KERAS_BACKEND` unset, no ~/.keras/keras.json) and
TensorFlow, Keras' default, is not installed, JAX or PyTorch is used instead.
"""

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"

_LAZY = {
    "build_transformer_model": "kerasformers.models",
    "MODELS": "kerasformers.models",
    "Transformer": "kerasformers.models",
    "CheckpointError": "kerasformers.checkpoints.errors",
    "Tokenizer": "kerasformers.tokenizers",
    "SpTokenizer": "kerasformers.tokenizers",
    "load_vocab": "kerasformers.tokenizers",
    "sequence_padding": "kerasformers.data",
}


def _pick_backend():
    """Keep Keras' choice when there is one; avoid requiring TensorFlow otherwise."""
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):
        return
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    if os.path.exists(os.path.join(home, "keras.json")):
        return
    if importlib.util.find_spec("tensorflow") is not None:
        return
    for backend in ("jax", "torch"):
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return


_pick_backend()


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerasformers' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
