"""Worker of tests/pretraining/test_distribution.py: a tiny BERT MLM trained by `fit`.

It runs in a fresh process because XLA_FLAGS (the host device count) and
KERAS_BACKEND=jax must be set before JAX starts. Every run trains the same
model (initial weights from one seed) on the same global batches, so the
final weights of the different distributions can be compared.

    python distributed_worker.py single OUT_DIR
        5 steps each, written to OUT_DIR/{name}.npz, for single (1 device, no
        distribution), data_parallel (all devices) and model_parallel (a
        (devices/2, 2) mesh); the model-parallel sharding to OUT_DIR/sharding.json.
    python distributed_worker.py multi OUT_DIR COORDINATOR NUM_PROCESSES PROCESS_ID
        one process of a multi-process DataParallel run; process 0 writes
        OUT_DIR/multi.npz.

Nothing runs on import (pytest --doctest-modules imports every file under tests/).
"""

import json
import os
import sys

STEPS = 5
GLOBAL_BATCH = 8
SEQ_LEN = 32
VOCAB = 128
MASK_ID = 3
SEED = 1234
CONFIG = dict(model="bert", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=128, with_mlm="linear", dropout_rate=0.0)


def global_batch(step):
    """((ids, segs), labels) of one global batch, a function of SEED and `step` only."""
    import numpy as np

    rng = np.random.default_rng([SEED, step])
    ids = rng.integers(5, VOCAB, size=(GLOBAL_BATCH, SEQ_LEN), dtype=np.int32)
    split = rng.integers(4, SEQ_LEN - 4, size=(GLOBAL_BATCH, 1))
    segs = (np.arange(SEQ_LEN)[None, :] >= split).astype(np.int32)
    masked = rng.random((GLOBAL_BATCH, SEQ_LEN)) < 0.15
    masked[:, 0] = True                   # at least one counted token per row
    labels = np.where(masked, ids, -100).astype(np.int32)
    ids = np.where(masked, MASK_ID, ids).astype(np.int32)
    return (ids, segs), labels


def batches(process_index=0, process_count=1):
    """A grain dataset of this process's rows [p*B/n, (p+1)*B/n) of every global batch."""
    import grain

    rows = GLOBAL_BATCH // process_count
    part = slice(process_index * rows, (process_index + 1) * rows)

    def local(step):
        (ids, segs), labels = global_batch(step)
        return (ids[part], segs[part]), labels[part]

    return grain.MapDataset.range(STEPS).map(local)


def masked_lm_loss():
    """The pipeline's MaskedLMLoss if it has landed, else the same maths here."""
    try:
        from kerasformers.pretraining.losses import MaskedLMLoss
        return MaskedLMLoss()
    except ImportError:
        pass
    import keras
    from keras import ops

    class MaskedLMLoss(keras.losses.Loss):
        """Mean sparse cross-entropy from logits over the tokens whose label is not -100."""

        def call(self, y_true, y_pred):
            y_true = ops.cast(y_true, "int32")
            counted = ops.cast(ops.not_equal(y_true, -100), "float32")
            ce = keras.losses.sparse_categorical_crossentropy(
                ops.maximum(y_true, 0), ops.cast(y_pred, "float32"), from_logits=True)
            return ops.sum(ce * counted) / ops.maximum(ops.sum(counted), 1.0)

    return MaskedLMLoss()


def train(distribution, process_index=0, process_count=1):
    """Build under `distribution` (None: default device), fit STEPS steps.

    The initial weights come from SEED alone (JAX draws the same numbers
    whatever the sharding); each run records them so the test can check.
    """
    import contextlib

    import keras
    import numpy as np

    from kerasformers import build_transformer_model

    keras.utils.set_random_seed(SEED)
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        model = build_transformer_model(None, **CONFIG)
        init = [np.asarray(w) for w in model.get_weights()]
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3),
                      loss=masked_lm_loss())
        losses = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
        model.fit(batches(process_index, process_count), epochs=1, steps_per_epoch=STEPS,
                  verbose=0, shuffle=False, callbacks=[record])
    return model, init, losses


def save(path, model, init, losses):
    """Final (w000...) and initial (i000...) weights by position, their paths and the
    running-mean losses Keras logs after each step; no pickle."""
    import numpy as np

    arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"i{i:03d}": w for i, w in enumerate(init)})
    np.savez(path, paths=np.array([v.path for v in model.weights]),
             losses=np.array(losses, dtype=np.float64), **arrays)


def sharding_report(model):
    """path -> (partition spec, number of distinct pieces the array is split into)."""
    report = {}
    for v in model.weights:
        value = v.value
        pieces = {tuple((s.start, s.stop) for s in shard.index)
                  for shard in value.addressable_shards}
        report[v.path] = [str(value.sharding.spec), len(pieces)]
    return report


def run_single(out):
    import keras

    from kerasformers.pretraining.distribution import data_parallel, model_parallel

    devices = keras.distribution.list_devices()
    for name, distribution in [("single", None), ("data_parallel", data_parallel()),
                               ("model_parallel", model_parallel(2))]:
        model, init, losses = train(distribution)
        save(os.path.join(out, f"{name}.npz"), model, init, losses)
    with open(os.path.join(out, "sharding.json"), "w") as f:
        json.dump({"devices": len(devices), "weights": sharding_report(model)}, f)


def run_multi(out, coordinator, num_processes, process_id):
    from kerasformers.pretraining.distribution import data_parallel, initialize_multiprocess

    initialize_multiprocess(coordinator, num_processes, process_id)
    model, init, losses = train(data_parallel(), process_id, num_processes)
    if process_id == 0:
        save(os.path.join(out, "multi.npz"), model, init, losses)


def main(argv):
    if os.environ.get("KERAS_BACKEND") != "jax":
        sys.exit("distributed_worker.py needs KERAS_BACKEND=jax")
    mode, out, *rest = argv
    if mode == "single":
        run_single(out)
    elif mode == "multi":
        coordinator, num_processes, process_id = rest
        run_multi(out, coordinator, int(num_processes), int(process_id))
    else:
        sys.exit(f"unknown mode {mode!r}; expected 'single' or 'multi'")


if __name__ == "__main__":
    main(sys.argv[1:])
