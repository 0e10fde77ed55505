"""Worker of tests/pretraining/test_distribution.py: a tiny BERT MLM trained by `fit`.

It runs in a fresh process because XLA_FLAGS (the host device count) and
KERAS_BACKEND=jax must be set before JAX starts. Every run trains the same
model (initial weights from one seed) with `MaskedLMLoss` on the same global
batches (`PretrainingData` with a `MaskedLM` objective over the shard the
test writes with `write_shard` to OUT_DIR/shards; each process of a
multi-process run reads its rows of every global batch), so the final
weights of the different distributions can be compared.

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
SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
CLS, SEP, MASK = 2, 3, 4
RECORDS = GLOBAL_BATCH * STEPS
SEED = 1234
CONFIG = dict(
    model="bert",
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    with_mlm="linear",
    dropout_rate=0.0,
)


def write_shard(directory):
    """RECORDS random instances ([CLS] words [SEP], word-start flags) as one ArrayRecord shard."""
    import numpy as np
    from array_record.python.array_record_module import ArrayRecordWriter

    from kerasformers.pretraining.records import encode_record

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(SEED)
    writer = ArrayRecordWriter(os.path.join(directory, "shard-00000.array_record"), "group_size:1")
    for _ in range(RECORDS):
        words = rng.integers(len(SPECIAL), VOCAB, size=rng.integers(16, SEQ_LEN - 1))
        starts = rng.random(words.size) < 0.7
        writer.write(encode_record([CLS, *words, SEP], [True, *starts, True]))
    writer.close()


def batches(shards, process_index=0, process_count=1):
    """This process's rows [p*B/n, (p+1)*B/n) of every global MLM batch (a grain dataset)."""
    from kerasformers.pretraining.objectives import MaskedLM
    from kerasformers.pretraining.pipeline import PretrainingData

    objective = MaskedLM(VOCAB, MASK, SPECIAL, sequence_length=SEQ_LEN)
    return PretrainingData(
        shards,
        objective,
        batch_size=GLOBAL_BATCH,
        seed=SEED,
        process_index=process_index,
        process_count=process_count,
    ).batches()


def train(distribution, shards, process_index=0, process_count=1):
    """Build under `distribution` (None: default device), fit STEPS steps.

    The initial weights come from SEED alone (JAX draws the same numbers
    whatever the sharding); each run records them so the test can check.
    """
    import contextlib

    import keras
    import numpy as np

    from kerasformers import build_transformer_model
    from kerasformers.pretraining.losses import MaskedLMLoss

    keras.utils.set_random_seed(SEED)
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        model = build_transformer_model(None, **CONFIG)
        init = [np.asarray(w) for w in model.get_weights()]
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3), loss=MaskedLMLoss())
        losses = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
        )
        model.fit(
            batches(shards, process_index, process_count),
            epochs=1,
            steps_per_epoch=STEPS,
            verbose=0,
            shuffle=False,
            callbacks=[record],
        )
    return model, init, losses


def save(path, model, init, losses):
    """Final (w000...) and initial (i000...) weights by position, their paths and the
    running-mean losses Keras logs after each step; no pickle."""
    import numpy as np

    arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"i{i:03d}": w for i, w in enumerate(init)})
    np.savez(
        path,
        paths=np.array([v.path for v in model.weights]),
        losses=np.array(losses, dtype=np.float64),
        **arrays,
    )


def sharding_report(model):
    """path -> (partition spec, number of distinct pieces the array is split into)."""
    report = {}
    for v in model.weights:
        value = v.value
        pieces = {
            tuple((s.start, s.stop) for s in shard.index) for shard in value.addressable_shards
        }
        report[v.path] = [str(value.sharding.spec), len(pieces)]
    return report


def run_single(out):
    import keras

    from kerasformers.pretraining.distribution import data_parallel, model_parallel

    devices = keras.distribution.list_devices()
    for name, distribution in [
        ("single", None),
        ("data_parallel", data_parallel()),
        ("model_parallel", model_parallel(2)),
    ]:
        model, init, losses = train(distribution, os.path.join(out, "shards"))
        save(os.path.join(out, f"{name}.npz"), model, init, losses)
    with open(os.path.join(out, "sharding.json"), "w") as f:
        json.dump({"devices": len(devices), "weights": sharding_report(model)}, f)


def run_multi(out, coordinator, num_processes, process_id):
    from kerasformers.pretraining.distribution import data_parallel, initialize_multiprocess

    initialize_multiprocess(coordinator, num_processes, process_id)
    model, init, losses = train(
        data_parallel(), os.path.join(out, "shards"), process_id, num_processes
    )
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
