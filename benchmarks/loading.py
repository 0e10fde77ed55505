"""Loading big checkpoints: time and peak memory, ours per backend and dtype vs transformers.

Checkpoints (random weights, written once to ``--cache``, default
``~/.cache/kerasformers/bench-loading/``; nothing is downloaded):

* ``medium``: GPT2-medium-sized (24 layers, n_embd 1024, 16 heads, vocab 50257, 355M
  parameters, 1.42 GB float32) as an HF directory (``config.json`` + one
  ``model.safetensors``, the names and layout ``GPT2LMHeadModel.save_pretrained`` writes), and
  as a Google TF checkpoint under GPT2's original names (``gpt/...``, our ``gpt2`` table).
* ``1.5b``: GPT2_ML-1.5B-sized (48 layers, hidden 1536, 24 heads, intermediate 6144, vocab
  8021, 1.37B parameters, 5.5 GB float32) as an HF GPT-2 directory of 2 GB safetensors shards
  with ``model.safetensors.index.json`` (transformers' ``GPT2LMHeadModel`` of the same sizes
  reads it), and as a Google TF checkpoint under GPT2_ML's original names
  (``newslm/layerNN/...``, our ``gpt2_ml``).

Values: N(0, 0.02) float32 from a seeded generator, LayerNorm gammas 1 + N(0, 0.02); the
files are written tensor by tensor (the TF one by our ``save_tf_checkpoint``, CRC32C
included), so writing needs about one tensor of memory.

Contenders, each in a fresh process (``--child``), one at a time:

* transformers: ``GPT2LMHeadModel.from_pretrained(dir)`` (``dtype=torch.bfloat16`` for the
  bfloat16 rows), torch threads 2;
* ours: ``build_transformer_model(checkpoint_path=dir)`` for the safetensors directory, and
  ``build_transformer_model(config, prefix, model=...)`` for the TF checkpoint, with
  ``dtype='bfloat16'`` for the bfloat16 rows, per Keras backend.

Before each contender its files are read once (page cache warm: the disk of this machine
reads ~45 MB/s cold, which would time the disk). Each child imports everything first (import
time is not load time), records its RSS (``VmRSS``), resets the peak
(``/proc/self/clear_refs`` 5), then times the load alone and reads the peak (``VmHWM``).
Reported: load seconds, peak RSS, the load's own peak (peak - RSS before the load) and that as
a multiple of the model's in-memory size (the sum of its weights' bytes; for bfloat16 rows
also as a multiple of the float32 size). Goal (issue #19): load's own peak <= 1.25x the
model's size, bfloat16 <= 0.7x the float32 size; time <= 1.0x transformers on the best
backend and <= 1.5x on the others; TF checkpoints within 1.5x of safetensors.

Then the 1.5B model in bfloat16 on torch samples 32 tokens (``generate``, top-k 40, seed 0,
one 8-token prompt): first-call and steady tokens/s.

Run: ``python benchmarks/loading.py [--sizes medium 1.5b] [--backends jax torch tensorflow]
[--dtypes float32 bfloat16] [--no-sample]``. Results: ``benchmarks/results/loading.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SIZES = {
    "medium": dict(n_embd=1024, n_layer=24, n_head=16, n_inner=4096, vocab_size=50257),
    "1.5b": dict(n_embd=1536, n_layer=48, n_head=24, n_inner=6144, vocab_size=8021),
}
TF_MODEL = {"medium": "gpt2", "1.5b": "gpt2_ml"}
SHARD_BYTES = 2 * 1024**3


def cache_dir(args, size):
    return os.path.join(os.path.expanduser(args.cache), size)


# ----------------------------------------------------------------------------- writing
def _random(shape, name, seed):
    rng = np.random.default_rng(seed)
    value = rng.standard_normal(shape, dtype=np.float32)
    value *= 0.02
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "gamma")):
        value += 1
    return value


def write_hf(folder, size):
    """config.json + safetensors shards (+ index when more than one) with GPT2LMHeadModel names."""
    import torch
    import transformers

    config = transformers.GPT2Config(n_positions=1024, **SIZES[size])
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    shards, current, total = [], [], 0
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape))
        if current and total + nbytes > SHARD_BYTES:
            shards.append(current)
            current, total = [], 0
        current.append((name, shape))
        total += nbytes
    shards.append(current)
    os.makedirs(folder, exist_ok=True)
    weight_map = {}
    seed = 0
    for i, shard in enumerate(shards):
        file = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            nbytes = 4 * int(np.prod(shape))
            header[name] = {
                "dtype": "F32",
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(folder, file + ".tmp"), "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for name, shape in shard:
                seed += 1
                f.write(_random(shape, name, seed).tobytes())
        os.replace(os.path.join(folder, file + ".tmp"), os.path.join(folder, file))
    if len(shards) > 1:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    config.save_pretrained(folder)


class _Lazy:
    """A tensor made when the writer asks for it (np.asarray), so writing holds one at a time."""

    def __init__(self, shape, name, seed):
        self.shape, self.name, self.seed = shape, name, seed

    def __array__(self, dtype=None, copy=None):
        return _random(self.shape, self.name, self.seed)


def write_tf(folder, size):
    """A Google TF checkpoint under the model's original names, from its weight table."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    from kerasformers.checkpoints import deferred
    from kerasformers.checkpoints.loader import as_key
    from kerasformers.checkpoints.tf_checkpoint import save_tf_checkpoint
    from kerasformers.models import MODELS

    s = SIZES[size]
    transformer = MODELS[TF_MODEL[size]](
        vocab_size=s["vocab_size"],
        hidden_size=s["n_embd"],
        num_hidden_layers=s["n_layer"],
        num_attention_heads=s["n_head"],
        intermediate_size=s["n_inner"],
        max_position=1024,
    )
    with deferred.deferred_build() as created:  # shapes only: no weight is allocated
        transformer.build()
    variables = transformer.variables()
    shapes = {}
    for row in transformer.weight_table():
        key = as_key(row[1])
        if key is None or row[0] not in variables:
            continue
        shapes[key.name] = key.stored_shape(variables[row[0]].shape)
    deferred.forget(created)
    os.makedirs(folder, exist_ok=True)
    tensors = {
        name: _Lazy(shape, name, i) for i, (name, shape) in enumerate(sorted(shapes.items()))
    }
    save_tf_checkpoint(os.path.join(folder, "model.ckpt"), tensors)
    config = {
        "vocab_size": s["vocab_size"],
        "hidden_size": s["n_embd"],
        "num_hidden_layers": s["n_layer"],
        "num_attention_heads": s["n_head"],
        "intermediate_size": s["n_inner"],
        "max_position_embeddings": 1024,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def prepare(args, size):
    base = cache_dir(args, size)
    hf, tf = os.path.join(base, "hf"), os.path.join(base, "tf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        print(f"writing {hf} ...", flush=True)
        _run_child(["--write", "hf", "--size", size, "--cache", args.cache], "torch")
    if not os.path.exists(os.path.join(tf, "config.json")):
        print(f"writing {tf} ...", flush=True)
        _run_child(["--write", "tf", "--size", size, "--cache", args.cache], "torch")
    return hf, tf


# ----------------------------------------------------------------------------- children
def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    hf, tf = (
        os.path.join(cache_dir(args, args.size), "hf"),
        os.path.join(cache_dir(args, args.size), "tf"),
    )
    if args.contender == "transformers":
        import torch
        import transformers

        torch.set_num_threads(2)
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

        def load():
            return transformers.GPT2LMHeadModel.from_pretrained(hf, dtype=dtype)

        def size_of(model):
            return sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        import keras

        from kerasformers import build_transformer_model

        if keras.backend.backend() == "torch":
            import torch

            torch.set_num_threads(2)
        elif keras.backend.backend() == "tensorflow":
            import tensorflow as tensorflow

            tensorflow.config.threading.set_intra_op_parallelism_threads(2)
            tensorflow.config.threading.set_inter_op_parallelism_threads(1)
        dtype = None if args.dtype == "float32" else args.dtype

        def load():
            if args.contender == "safetensors":
                return build_transformer_model(checkpoint_path=hf, dtype=dtype)
            return build_transformer_model(
                os.path.join(tf, "config.json"),
                os.path.join(tf, "model.ckpt"),
                model=TF_MODEL[args.size],
                dtype=dtype,
            )

        def size_of(model):
            return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)

    before = _status("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    out = {
        "seconds": seconds,
        "rss_before": before,
        "peak": peak,
        "load_peak": peak - before,
        "peak_reset": reset,
        "model_bytes": size_of(model),
    }
    if args.sample:
        out.update(sample(model))
    print("RESULT " + json.dumps(out), flush=True)


def sample(model):
    from kerasformers.generation import generate

    prompt = [[11, 42, 7, 300, 5, 99, 1000, 17]]
    start = time.perf_counter()
    tokens = generate(model, prompt, max_new_tokens=32, do_sample=True, top_k=40, seed=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = generate(model, prompt, max_new_tokens=32, do_sample=True, top_k=40, seed=0)
    steady = time.perf_counter() - start
    tokens, again = np.asarray(tokens), np.asarray(again)
    return {
        "sample_tokens": tokens.reshape(-1).tolist(),
        "sample_same_twice": bool(np.array_equal(tokens, again)),
        "sample_first_s": first,
        "sample_first_tok_s": 32 / first,
        "sample_tok_s": 32 / steady,
    }


def warm(folder):
    """Read every file of `folder` once, so each contender starts from the page cache (the
    disk here reads ~45 MB/s cold, which would time the disk, not the loaders)."""
    buf = bytearray(64 << 20)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _run_child(extra, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="2", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    if proc.returncode:
        raise RuntimeError(f"child {extra} failed:\n{proc.stderr[-3000:]}")
    return None


# ----------------------------------------------------------------------------- parent
def contenders(args):
    for dtype in args.dtypes:
        if dtype in args.transformers_dtypes:
            yield ("transformers", "torch", dtype)
        for backend in args.backends:
            yield ("safetensors", backend, dtype)
            if dtype == "float32":
                yield ("tf", backend, dtype)


def save(args, rows, sampled):
    """Ratios, then the results JSON (rewritten after every contender)."""
    from harness import git_commit, machine_info, versions

    for row in rows:  # ratios against transformers (same size and dtype) and safetensors
        ref = [
            r
            for r in rows
            if r["size"] == row["size"]
            and r["contender"] == "transformers"
            and r["dtype"] == row["dtype"]
        ]
        if ref:
            row["time_vs_transformers"] = row["seconds"] / ref[0]["seconds"]
        row["load_peak_vs_model"] = row["load_peak"] / row["model_bytes"]
        f32 = [
            r
            for r in rows
            if r["size"] == row["size"]
            and r["backend"] == row["backend"]
            and r["contender"] == row["contender"]
            and r["dtype"] == "float32"
        ]
        if f32:
            row["load_peak_vs_float32_model"] = row["load_peak"] / f32[0]["model_bytes"]
        if row["contender"] == "tf":
            st = [
                r
                for r in rows
                if r["size"] == row["size"]
                and r["backend"] == row["backend"]
                and r["contender"] == "safetensors"
                and r["dtype"] == row["dtype"]
            ]
            if st:
                row["time_vs_safetensors"] = row["seconds"] / st[0]["seconds"]
    result = {
        "benchmark": "loading",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + " ".join(["benchmarks/loading.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "versions": versions(),
        "git_commit": git_commit(),
        "rows": rows,
        "sample": sampled,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--backends", nargs="+", default=["jax", "torch", "tensorflow"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--cache", default="~/.cache/kerasformers/bench-loading")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument(
        "--transformers-dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        help="dtypes transformers runs in (its bfloat16 load peaks at 1.6x the float32 size)",
    )
    p.add_argument("--out", default=os.path.join(HERE, "results", "loading.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--write", choices=["hf", "tf"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write:
        folder = os.path.join(cache_dir(args, args.size), args.write)
        (write_hf if args.write == "hf" else write_tf)(folder, args.size)
        return
    if args.child:
        return child(args)

    rows = []
    for size in args.sizes:
        prepare(args, size)
        for contender, backend, dtype in contenders(args):
            warm(os.path.join(cache_dir(args, size), "tf" if contender == "tf" else "hf"))
            extra = ["--child", "--size", size, "--contender", contender, "--dtype", dtype]
            extra += ["--cache", args.cache]
            result = _run_child(extra, backend)
            row = dict(size=size, contender=contender, backend=backend, dtype=dtype, **result)
            rows.append(row)
            print(
                f"{size:6s} {contender:12s} {backend:10s} {dtype:8s} "
                f"{result['seconds']:6.1f} s  peak {result['peak'] / 1e9:5.2f} GB  "
                f"load peak {result['load_peak'] / 1e9:5.2f} GB = "
                f"{result['load_peak'] / result['model_bytes']:.2f}x model "
                f"({result['model_bytes'] / 1e9:.2f} GB)",
                flush=True,
            )
            save(args, rows, None)
    sampled = None
    if not args.no_sample and "1.5b" in args.sizes:
        warm(os.path.join(cache_dir(args, "1.5b"), "hf"))
        extra = ["--child", "--size", "1.5b", "--contender", "safetensors", "--dtype", "bfloat16"]
        sampled = _run_child(extra + ["--cache", args.cache, "--sample"], "torch")
        print(
            f"1.5B bfloat16 torch: load {sampled['seconds']:.1f} s, 32 sampled tokens: "
            f"{sampled['sample_first_tok_s']:.2f} tok/s first call, "
            f"{sampled['sample_tok_s']:.2f} tok/s after",
            flush=True,
        )
    save(args, rows, sampled)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
