"""Exported-model inference: ONNX (from `kerasformers export`, run by onnxruntime) vs our Keras
model on the torch backend, CPU, side by side in one process.

Model: bert-base-sized random weights (12 layers, hidden 768, 12 heads, intermediate 3072,
vocab 21128), float32, the encoder's last hidden states; inputs 8 sequences of 128 tokens
(token ids from 1..vocab-1, segment ids 0 then 1 for the second half), the encoder
benchmark's. ``--quick``: 2 layers.

* ONNX: `kerasformers.cli.export.export(..., "onnx", 8, 128)`, i.e. Keras' ``model.export``
  on torch (fixed shape 8×128), then ``onnxruntime.InferenceSession`` on the CPU provider
  with default graph optimisations, 2 intra-op threads.
* ours: the same Keras model on torch, ``model(x, training=False)`` under
  ``torch.inference_mode`` and ``model.predict_on_batch``; the faster is our number.

Both outputs are checked against each other first (max |delta| <= 1e-4, else no timing).
Then ``--warmup`` calls each and ``--runs`` interleaved rounds of ``--reps`` calls per
contender (order alternating); the reported time per call is the median over rounds.
Threads: 2 (``torch.set_num_threads(2)``, onnxruntime intra-op 2).

Results: ``benchmarks/results/export.json`` (``export-quick.json`` with ``--quick``).
Run: ``python benchmarks/export.py [--quick] [--runs 7] [--reps 3] [--warmup 2]``
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

BATCH, SEQ = 8, 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import keras
    import numpy as np
    import onnxruntime
    import torch

    from kerasformers import build_transformer_model
    from kerasformers.cli.export import export

    torch.set_num_threads(harness.THREADS)
    config = dict(
        vocab_size=21128,
        hidden_size=768,
        num_hidden_layers=2 if args.quick else 12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position=512,
    )
    transformer = build_transformer_model(None, return_keras_model=False, **config)
    model = transformer.model
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, config["vocab_size"], (BATCH, SEQ)).astype("int32")
    segment_ids = np.zeros((BATCH, SEQ), "int32")
    segment_ids[:, SEQ // 2 :] = 1
    x_np = [token_ids, segment_ids]

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "bert.onnx")
    start = time.perf_counter()
    export_diff = export(transformer, path, "onnx", BATCH, SEQ)
    export_s = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = harness.THREADS
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {spec.name: a for spec, a in zip(session.get_inputs(), x_np)}

    x = [keras.ops.convert_to_tensor(a) for a in x_np]

    def eager():
        with torch.inference_mode():
            return model(x, training=False)

    contenders = {
        "onnxruntime": lambda: session.run(None, feeds)[0],
        "ours: model(x, training=False) + inference_mode": eager,
        "ours: model.predict_on_batch": lambda: model.predict_on_batch(x_np),
    }
    reference = np.asarray(session.run(None, feeds)[0])
    diffs = {}
    for name, call in contenders.items():
        diffs[name] = float(np.max(np.abs(harness.to_numpy(call()) - reference)))
        assert diffs[name] <= 1e-4, (name, diffs[name])
        for _ in range(args.warmup):
            call()
    times = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(args.runs):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(args.reps):
                contenders[name]()
            times[name].append((time.perf_counter() - start) / args.reps)
    results = {}
    for name, rounds in times.items():
        median = statistics.median(rounds)
        results[name] = {
            "median_s": median,
            "tokens_per_s": BATCH * SEQ / median,
            "rounds_s": rounds,
            "max_abs_diff_vs_onnx": diffs[name],
        }
    ours = min((n for n in results if n.startswith("ours")), key=lambda n: results[n]["median_s"])
    ratio = results["onnxruntime"]["tokens_per_s"] / results[ours]["tokens_per_s"]
    versions = harness.versions()
    for name in ("onnx", "onnxruntime", "onnxscript"):
        from importlib.metadata import version

        versions[name] = version(name)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": harness.machine_info(),
        "load_average": os.getloadavg(),
        "versions": versions,
        "git_commit": harness.git_commit(),
        "config": {
            **config,
            "batch": BATCH,
            "seq_len": SEQ,
            "dtype": "float32",
            "threads": harness.THREADS,
            "warmup": args.warmup,
            "runs": args.runs,
            "reps": args.reps,
        },
        "export_s": export_s,
        "export_check_max_abs_diff": export_diff,
        "results": results,
        "ours_best": ours,
        "onnxruntime_over_ours": ratio,
    }
    name = "export-quick.json" if args.quick else "export.json"
    out = os.path.join(harness.ROOT, "benchmarks", "results", name)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    for name, r in results.items():
        print(f"{name:<50} {r['median_s'] * 1000:8.1f} ms  {r['tokens_per_s']:8.0f} tok/s")
    print(f"onnxruntime / ours ({ours}): {ratio:.2f}x; export {export_s:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()
