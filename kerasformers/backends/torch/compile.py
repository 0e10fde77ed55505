"""How generation runs a function of tensors on torch: eagerly, under `torch.no_grad()`
(the fast path of a cached step is the room's `Plan`, not a compiler)."""

import torch


def compile_fn(fn, variables):
    """`fn(*tensors)` without autograd bookkeeping (`variables` are unused)."""

    def call(*args):
        with torch.no_grad():
            return fn(*args)

    return call
