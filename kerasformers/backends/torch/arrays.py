"""NumPy arrays as torch tensors without a copy (checkpoint loading hands each tensor over).

Keras' torch `convert_to_tensor` copies a NumPy array first (`np.array(x)`), and bfloat16
arrays go through float32; a loaded weight then briefly exists two or three times.
`from_numpy` shares the array's memory instead, so the weight is created in place.

>>> import numpy as np
>>> from kerasformers.checkpoints.bfloat16 import bfloat16_from_bits
>>> x = np.arange(3, dtype="float32")
>>> t = from_numpy(x)
>>> t.data_ptr() == x.ctypes.data, t.tolist()
(True, [0.0, 1.0, 2.0])
>>> from_numpy(bfloat16_from_bits(np.array([0x3FC0], np.uint16))).tolist()
[1.5]
"""

import numpy as np
import torch

from kerasformers.checkpoints.bfloat16 import is_bfloat16


def from_numpy(value):
    """`value` as a CPU torch tensor sharing its memory (bfloat16 through its bits)."""
    value = np.ascontiguousarray(value)
    if not value.flags.writeable:  # torch tensors are writable: never alias a read-only array
        value = value.copy()
    if is_bfloat16(value.dtype):
        return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(value)
