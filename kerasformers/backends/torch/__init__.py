"""The torch backend's room: the eager fast path of a cached step and its kernels.

- `plan.py`: `Plan`, the layers of a cached step run as plain torch calls;
- `layers.py`: one preparer per layer class (a registry), `attention.py` the attention's;
- `kernels.py`: oneDNN's prepacked `PackedLinear` and `Int8Matmul`, kept on their
  layers until `release(model)`;
- `ops.py`: `keras.ops` calls that cost less as plain torch (`slice_update`).

Importing this package does not import torch (its modules do): neutral code asks
`available()` and only then touches `Plan` or `release`, which load on first use.

>>> import keras
>>> available() == (keras.backend.backend() == "torch")
True
"""

import importlib

import keras

#: public names -> the module of this room that defines them (imported on first use)
_LAZY = {
    "Plan": "plan",
    "release": "kernels",
    "PackedLinear": "kernels",
    "Int8Matmul": "kernels",
    "slice_update": "ops",
}


def available():
    """True when Keras runs on torch: cached steps then run through a `Plan`."""
    return keras.backend.backend() == "torch"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Int8Matmul", "PackedLinear", "Plan", "available", "release", "slice_update"]
