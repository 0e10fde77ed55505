"""Train on several devices or machines with `keras.distribution` (JAX backend).

`keras.distribution` is the engine: a distribution set around model building
and `fit` decides where every variable lives and how each batch is split; XLA
inserts the collectives. This module only supplies what is specific to our
models, the sharding of their weights by layer name, plus three one-line
entry points:

- `data_parallel()`: every device holds all weights and gets a slice of the
  batch (a `keras.distribution.DataParallel`).
- `model_parallel(model_shards)`: a ("batch", "model") device mesh; big
  matrices are split over "model" (Megatron-style), the batch over "batch".
- `initialize_multiprocess(coordinator, num_processes, process_id)`: join a
  multi-process (multi-host) job before building anything.

Other backends train on a single device: torch and TensorFlow have no
`keras.distribution` implementation that `fit` uses.

>>> import keras
>>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), devices=["cpu:0"])
>>> layout_map = get_layout_map(mesh)
>>> layout_map["Transformer-0-MultiHeadSelfAttention/q_dense/kernel"].axes
(None, 'model')
>>> layout_map["Transformer-0-FeedForward/o_dense/kernel"].axes
('model', None)
>>> layout_map["Transformer-0-FeedForward-Norm/gamma"].axes   # deliberately replicated
(None,)
>>> layout_map["Classifier/kernel"] is None      # unknown layers: replicated by Keras
True
"""

import keras

BATCH_AXIS = "batch"
MODEL_AXIS = "model"

# Layer-name families (a model `prefix`, ALBERT's shared "Transformer-" and
# T5's "Encoder-"/"Decoder-" stacks are all covered by the leading [^/]*).
_ATTENTION = r"[^/]*Transformer(-\d+)?-MultiHead(Self|Cross)Attention"
_FEED_FORWARD = r"[^/]*Transformer(-\d+)?-FeedForward"
# Small dense layers kept whole on every device: splitting them saves little
# memory and costs a collective each (MLM-Dense feeds a norm over its full
# output, so a split would be gathered right away).
_SMALL_DENSE = (
    r"[^/]*(Embedding-Mapping|Output-Mapping|MLM-Dense|Pooler-Dense|NSP-Proba"
    r"|Discriminator-Dense|Discriminator-Prediction)"
)


def _rules(model, data):
    """(regex over variable paths, axes) for every weight of our models; no two overlap."""
    return [
        # Attention: q/k/v split by output (heads), o by input: one all-reduce per block.
        (rf"{_ATTENTION}/[qkv]_dense/kernel", (data, model)),
        (rf"{_ATTENTION}/[qkv]_dense/bias", (model,)),
        (rf"{_ATTENTION}/o_dense/kernel", (model, data)),
        # Feed-forward: i0 (and gated i1) column-parallel, o row-parallel.
        (rf"{_FEED_FORWARD}/i\d+_dense/kernel", (data, model)),
        (rf"{_FEED_FORWARD}/i\d+_dense/bias", (model,)),
        (rf"{_FEED_FORWARD}/o_dense/kernel", (model, data)),
        # Vocabulary-sized weights split over the vocabulary: the token table
        # (also the tied MLM/LM output), the MLM bias, T5's untied LM head.
        (r"[^/]*Embedding-Token/embeddings", (model, data)),
        (r"[^/]*MLM-Bias/beta", (model,)),
        (r"[^/]*Output-LM/kernel", (data, model)),
        # Deliberately replicated: added after a row-parallel matmul, norms,
        # small embeddings and small dense heads.
        (rf"({_ATTENTION}|{_FEED_FORWARD})/o_dense/bias", (None,)),
        (r"[^/]*Norm(-\d+)?/(gamma|beta)", (None,)),
        (r"[^/]*(Embedding-Segment|Embedding-Position|Relative-Position)/embeddings", (None, None)),
        (rf"{_SMALL_DENSE}/kernel", (None, None)),
        (rf"{_SMALL_DENSE}/bias", (None,)),
    ]


def get_layout_map(device_mesh, model_axis=MODEL_AXIS, data_axis=None):
    """A `keras.distribution.LayoutMap` sharding our models' weights over `model_axis`.

    Keys are regular expressions over variable paths (`v.path`), one family of
    weights each, and they cover every weight of BERT/RoBERTa/NEZHA/ELECTRA,
    ALBERT (shared and unshared), RoFormer (v1, v2), GPT/GPT2/GPT2-ML and
    T5/mT5: q/k/v and feed-forward input kernels are column-parallel, the
    attention and feed-forward output kernels row-parallel, token embeddings,
    the MLM bias and T5's LM head are split over the vocabulary; norms, small
    embeddings, output biases and small heads are listed as replicated. A
    layer of your own (a classifier, CRF) matches nothing and Keras replicates
    it. Split dimensions (heads x head size, intermediate size, vocabulary)
    must be divisible by the size of `model_axis`.

    `data_axis` (e.g. "batch") also splits the other dimension of the large
    matrices over that axis (fully sharded, as keras-hub's Gemma map does);
    the default keeps one full copy per data-parallel replica.

    >>> import keras
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), devices=["cpu:0"])
    >>> get_layout_map(mesh)["Embedding-Token/embeddings"].axes
    ('model', None)
    >>> get_layout_map(mesh, data_axis="batch")["Embedding-Token/embeddings"].axes
    ('model', 'batch')
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            f"device_mesh must be a keras.distribution.DeviceMesh, got {type(device_mesh).__name__}"
        )
    for role, axis in (("model_axis", model_axis), ("data_axis", data_axis)):
        if axis is not None and axis not in device_mesh.axis_names:
            raise ValueError(
                f"{role}={axis!r} is not an axis of the device mesh {list(device_mesh.axis_names)}"
            )
    if model_axis is None or model_axis == data_axis:
        raise ValueError(
            f"model_axis must name a mesh axis other than data_axis, got "
            f"model_axis={model_axis!r}, data_axis={data_axis!r}"
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _rules(model_axis, data_axis):
        layout_map[pattern] = axes
    return layout_map


def data_parallel(devices=None):
    """`keras.distribution.DataParallel` over `devices` (default: all, on every process).

    Each process feeds its own slice of every global batch (as
    `PretrainingData(process_index=, process_count=)` yields it), so Keras'
    re-sharding of tf.data inputs is turned off (`auto_shard_dataset=False`).

    >>> dist = data_parallel(["cpu:0"])
    >>> dist.batch_dim_name, dist.device_mesh.shape
    ('batch', (1,))

    Use it around building, compiling and fitting:

        with data_parallel().scope():
            model = build_transformer_model(...)
            model.compile(...)
            model.fit(...)
    """
    devices = keras.distribution.list_devices() if devices is None else list(devices)
    return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)


def model_parallel(model_shards, devices=None, fully_sharded=False):
    """`keras.distribution.ModelParallel` on a ("batch", "model") mesh with our layout map.

    The devices (default: all, on every process) form a mesh of
    `len(devices) // model_shards` data-parallel replicas, each split into
    `model_shards` pieces by `get_layout_map`. `fully_sharded=True` also
    splits the large matrices over "batch" (less memory, more collectives).

    >>> dist = model_parallel(1, ["cpu:0"])
    >>> dist.device_mesh.axis_names, dist.device_mesh.shape
    (('batch', 'model'), (1, 1))
    """
    devices = keras.distribution.list_devices() if devices is None else list(devices)
    if model_shards < 1 or len(devices) % model_shards:
        raise ValueError(
            f"model_shards={model_shards} must divide the number of devices ({len(devices)})"
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_shards, model_shards), (BATCH_AXIS, MODEL_AXIS), devices=devices
    )
    layout_map = get_layout_map(mesh, MODEL_AXIS, BATCH_AXIS if fully_sharded else None)
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name=BATCH_AXIS, auto_shard_dataset=False
    )


def initialize_multiprocess(coordinator=None, num_processes=None, process_id=None):
    """Join a multi-process JAX job; call it first, before any model or array is made.

    `coordinator` is "host:port" of process 0 (every process passes the same),
    `process_id` runs from 0 to `num_processes - 1`. Left as None, each comes
    from Keras' environment variables (`KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`) or,
    failing those, from JAX's detection of the cluster (Cloud TPU, SLURM, ...).
    Afterwards `keras.distribution.list_devices()` lists the devices of all
    processes. For CPU processes, the collectives between them go through
    gloo (the setting concerns JAX's CPU client only; an explicit choice such
    as "mpi" is kept).

        initialize_multiprocess("10.0.0.1:1234", num_processes=2, process_id=0)  # on host 0
        initialize_multiprocess("10.0.0.1:1234", num_processes=2, process_id=1)  # on host 1

    Only on the JAX backend: elsewhere a RuntimeError says so.
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"multi-process training runs on the JAX backend (keras.distribution); on "
            f"KERAS_BACKEND={backend} kerasformers trains on a single device. Set "
            f"KERAS_BACKEND=jax to train on several devices or machines."
        )
    if (
        num_processes is not None
        and process_id is not None
        and not (0 <= process_id < num_processes)
    ):
        raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    import jax

    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(coordinator, num_processes, process_id)
