"""Moved to `kerasformers.backends.torch` (`plan`, `layers`, `attention`, `kernels`).

Kept so old imports work: every name resolves lazily in the new room (torch is
imported only when one of them is used).
"""

import importlib

from kerasformers.backends.torch import available  # noqa: F401  (does not import torch)

_MODULES = ("plan", "layers", "attention", "kernels")


def __getattr__(name):
    for module in _MODULES:
        module = importlib.import_module(f"kerasformers.backends.torch.{module}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
