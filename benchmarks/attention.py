"""Where linear attention pays: softmax vs linear vs Performer attention, forward and decoding.

Forward: a 4-layer BERT encoder (random weights, vocab 1000, head size 64, intermediate
4 x hidden, float32, batch 1, no padding) at hidden 256 and 768, sequence lengths 128,
256, ... 16384, with attention_type 'softmax' (Keras' fused dot_product_attention),
'linear' (feature_map 'elu') and 'performer' (2 x 64 = 128 random features), on JAX
(`jax.jit(model.stateless_call)`, the fastest backend in benchmarks/encoder.py). Each
(hidden, attention) pair runs in its own process, lengths ascending; a length is timed as
the median of up to 5 calls after one compiling call. Peak memory: the highest resident set
size sampled every 2 ms during those calls minus the size before the first call at that
length (XLA's allocations included; a length's compilation buffers may stay resident).
Bounds: a length whose first call takes over TIME_LIMIT seconds ends the pair's series,
and softmax stops before its [heads, n, n] score tensor would exceed SCORE_LIMIT bytes
(the machine is shared: 2 cores, about 8 GB free).

Decoding: a 4-layer GPT2 (hidden 256, 4 heads, intermediate 1024, vocab 1000) prompted
with 512, 2048 and 8192 tokens (one prefill call), then 32 greedy single-token steps of
`jax.jit(call_with_cache)`: tokens/s = 32 / the median of 3 such loops (after a compiling
step). Softmax decodes on the key/value cache (context + 33 positions, read every step),
linear (elu) on the recurrent state (constant size); `cache_floats` gives each one's size.

Crossover: the shortest measured length where linear (or Performer) attention's forward
is faster than softmax's. Su Jianlin's "线性Transformer应该不是你要等的那个模型" argues
standard attention stays close to linear until n is well above the hidden size; the
report compares the crossover with the hidden size.

Run: ``python benchmarks/attention.py [--quick]`` (--quick: lengths up to 1024, hidden 256,
decoding at 512). Results: benchmarks/results/attention.json (attention-quick.json).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
HIDDENS = [256, 768]
KINDS = {
    "softmax": {},
    "linear": {"attention_type": "linear", "feature_map": "elu"},
    "performer": {"attention_type": "performer"},
}
CONTEXTS = [512, 2048, 8192]
TIME_LIMIT = 60.0
STEPS = 32
SCORE_LIMIT = 1.5e9
LAYERS, VOCAB = 4, 1000


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The highest RSS seen by a 2 ms sampling thread while the block runs."""

    def __enter__(self):
        self.base, self.peak, self.running = rss(), rss(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def child_forward(hidden, kind, lengths):
    import jax
    import numpy as np

    from kerasformers import build_transformer_model

    heads = hidden // 64
    model = build_transformer_model(
        None,
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position=max(lengths),
        **KINDS[kind],
    )
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    fn = jax.jit(lambda ids, seg: model.stateless_call(*state, [ids, seg])[0])
    for n in lengths:
        if kind == "softmax" and heads * n * n * 4 > SCORE_LIMIT:
            print(json.dumps({"n": n, "skipped": "score tensor over SCORE_LIMIT"}), flush=True)
            break
        ids = np.random.RandomState(0).randint(1, VOCAB, (1, n)).astype("int32")
        seg = np.zeros_like(ids)
        with PeakMemory() as mem:
            start = time.perf_counter()
            fn(ids, seg).block_until_ready()
            first = time.perf_counter() - start
            times = []
            if first < TIME_LIMIT:
                for _ in range(5):
                    start = time.perf_counter()
                    fn(ids, seg).block_until_ready()
                    times.append(time.perf_counter() - start)
                    if sum(times) > TIME_LIMIT:
                        break
        row = {"n": n, "first_call_s": first, "runs_s": times}
        row["median_s"] = float(np.median(times)) if times else None
        row["peak_mb"] = (mem.peak - mem.base) / 2**20
        print(json.dumps(row), flush=True)
        if first >= TIME_LIMIT:
            break


def child_decode(kind, contexts):
    import jax
    import numpy as np

    from kerasformers import build_transformer_model

    model = build_transformer_model(
        None,
        model="gpt2",
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position=max(contexts) + 64,
        final_activation="linear",
        return_keras_model=False,
        **KINDS[kind],
    )
    step = jax.jit(lambda ids, cache: model.call_with_cache(ids, cache, logits=True))
    for n in contexts:
        prompt = np.random.RandomState(0).randint(1, VOCAB, (1, n)).astype("int32")
        cache = model.init_cache(1, n + STEPS + 1)
        logits, cache = model.call_with_cache(prompt, cache, logits=True)  # prefill
        token = np.asarray(logits[:, -1:].argmax(-1)).astype("int32")
        _, warm = step(token, cache)  # compiles
        jax.block_until_ready(warm)
        times = []
        for _ in range(3):
            c, t = cache, token
            start = time.perf_counter()
            for _ in range(STEPS):
                logits, c = step(t, c)
                t = logits[:, -1:].argmax(-1).astype("int32")
            jax.block_until_ready(t)
            times.append(time.perf_counter() - start)
        state = sum(int(np.prod(x.shape)) for slot in cache["self"] for x in slot)
        row = {"context": n, "runs_s": times, "tok_s": STEPS / float(np.median(times))}
        row["cache_floats"] = state
        print(json.dumps(row), flush=True)


def run_child(args, extra):
    env = dict(os.environ, KERAS_BACKEND="jax")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=extra)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        rows.append(
            {"error": proc.stderr.strip().splitlines()[-1:] or ["exit %d" % proc.returncode]}
        )
    return rows


def crossover(series):
    """The shortest length where each linear kind's forward beats softmax's."""
    soft = {r["n"]: r["median_s"] for r in series["softmax"] if r.get("median_s")}
    last_soft = max(soft) if soft else None
    out = {}
    for kind in ("linear", "performer"):
        found = None
        for r in series[kind]:
            n, t = r.get("n"), r.get("median_s")
            if t is None:
                continue
            if n in soft and t < soft[n]:
                found = n
                break
            if last_soft is not None and n > last_soft:
                found = f"> {last_soft} (softmax stopped at {last_soft})"
                break
        out[kind] = found if found is not None else "none measured"
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--mode")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--kind")
    parser.add_argument("--lengths", type=int, nargs="*")
    args = parser.parse_args()
    if args.child:
        if args.mode == "forward":
            child_forward(args.hidden, args.kind, args.lengths)
        else:
            child_decode(args.kind, args.lengths)
        return
    sys.path.insert(0, HERE)
    from harness import machine

    lengths = [n for n in LENGTHS if n <= 1024] if args.quick else LENGTHS
    hiddens = HIDDENS[:1] if args.quick else HIDDENS
    contexts = CONTEXTS[:1] if args.quick else CONTEXTS
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine.machine_info(),
        "versions": machine.versions(),
        "git_commit": machine.git_commit(),
        "load_average_at_start": os.getloadavg(),
        "config": {
            "backend": "jax",
            "layers": LAYERS,
            "vocab": VOCAB,
            "head_size": 64,
            "lengths": lengths,
            "time_limit_s": TIME_LIMIT,
            "score_limit_bytes": SCORE_LIMIT,
            "decode_contexts": contexts,
        },
        "forward": {},
        "decoding": {},
    }
    for hidden in hiddens:
        series = {}
        for kind in KINDS:
            rows = run_child(
                ["--mode", "forward", "--hidden", str(hidden), "--kind", kind, "--lengths"]
                + [str(n) for n in lengths],
                extra=20 * TIME_LIMIT,
            )
            series[kind] = rows
            for r in rows:
                print(hidden, kind, r, flush=True)
        report["forward"][str(hidden)] = {"series": series, "crossover": crossover(series)}
        print(hidden, "crossover", report["forward"][str(hidden)]["crossover"], flush=True)
    for kind in ("softmax", "linear"):
        rows = run_child(
            ["--mode", "decode", "--kind", kind, "--lengths"] + [str(n) for n in contexts],
            extra=30 * TIME_LIMIT,
        )
        report["decoding"][kind] = rows
        for r in rows:
            print("decode", kind, r, flush=True)
    name = "attention-quick.json" if args.quick else "attention.json"
    with open(os.path.join(HERE, "results", name), "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", name)


if __name__ == "__main__":
    main()
