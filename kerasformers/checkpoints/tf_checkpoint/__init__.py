"""Pure-NumPy reader and writer for TensorFlow "tensor bundle" checkpoints.

This is the format of ``model.ckpt.index`` + ``model.ckpt.data-00000-of-00001``
written by ``tf.train.Saver``, ``tf.train.Checkpoint`` and ``tf.raw_ops.SaveV2``
(and shipped with Google's original BERT/ALBERT/ELECTRA checkpoints).  Nothing
here imports TensorFlow or protobuf, so checkpoints can be converted on a
machine that only has the JAX or PyTorch backend installed.

Format, briefly (see tensorflow/core/util/tensor_bundle/ and
tensorflow/core/lib/io/table*.cc), one module per layer:

* ``paths``: ``<prefix>.data-NNNNN-of-MMMMM`` shards hold raw tensor bytes,
  tensor after tensor, little-endian, with no padding; ``<prefix>.index`` says
  where each tensor is; a directory resolves through its ``checkpoint`` file.
* ``sstable``: the ``.index`` is a LevelDB-style SSTable mapping tensor names
  to serialized protobufs, in CRC-checked, prefix-compressed blocks.
* ``bundle``: key ``""`` holds a ``BundleHeaderProto``, every other key a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C);
  also the on-disk layout of string tensors.
* ``wire``: protobuf messages are decoded/encoded by hand from the wire format.
* ``crc``: CRC32C and its LevelDB masking, fast without any C extension.
* ``dtypes``: TF ``DataType`` enum values <-> NumPy dtypes.
* ``reader`` (:class:`TFCheckpointReader`) and ``writer``
  (:func:`save_tf_checkpoint`) put these together.

Dtypes: float16/32/64, bfloat16, int8/16/32/64, uint8/16/32/64, bool,
complex64/128 and DT_STRING.  bfloat16 tensors are returned as
``ml_dtypes.bfloat16`` arrays (bit-exact; ml_dtypes ships with Keras 3, JAX and
TF) and, only if ml_dtypes is missing, widened exactly to float32 (see
:mod:`kerasformers.checkpoints.bfloat16`).  String tensors (e.g.
``_CHECKPOINTABLE_OBJECT_GRAPH``) are returned as object arrays of ``bytes``.

>>> import numpy as np, tempfile, os
>>> prefix = os.path.join(tempfile.mkdtemp(), "model.ckpt")
>>> _ = save_tf_checkpoint(prefix, {"w": np.arange(6.0).reshape(2, 3)})
>>> reader = TFCheckpointReader(prefix)
>>> reader.keys(), reader.get_tensor("w").tolist()
(['w'], [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
"""

from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.checkpoints.tf_checkpoint.crc import (
    CRC32C_BACKEND,
    crc32c,
    mask_crc32c,
    unmask_crc32c,
)
from kerasformers.checkpoints.tf_checkpoint.paths import resolve_checkpoint_prefix
from kerasformers.checkpoints.tf_checkpoint.reader import TFCheckpointReader
from kerasformers.checkpoints.tf_checkpoint.writer import save_tf_checkpoint

__all__ = [
    "CRC32C_BACKEND",
    "CheckpointError",
    "TFCheckpointReader",
    "crc32c",
    "mask_crc32c",
    "resolve_checkpoint_prefix",
    "save_tf_checkpoint",
    "unmask_crc32c",
]
