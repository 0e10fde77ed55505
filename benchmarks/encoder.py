"""Encoder forward-pass speed: kerasformers BERT on each Keras backend vs transformers' BertModel.

Model: bert-base-sized random weights (12 layers, hidden 768, 12 heads, intermediate 3072,
vocab 21128, max_position 512), float32, inference; inputs are 8 sequences of 128 tokens
(token ids drawn from 1..vocab-1, so nothing is padding; segment ids 0 for the first half and
1 for the second). ``--quick`` uses 2 layers instead of 12, as a smoke check.

* transformers: ``BertModel(config, add_pooling_layer=False)`` (we build no pooler either),
  ``.eval()``, default attention implementation (SDPA), under ``torch.inference_mode()``,
  called with ``input_ids``, ``token_type_ids`` and an all-ones ``attention_mask``. Its
  LayerNorm gammas/betas and Linear biases are randomised too (HF initialises them to 1/0),
  so a swapped or missing weight in our loader would show in the check below.
* ours: ``build_transformer_model(checkpoint_path=tmpdir)`` on the directory that
  ``save_pretrained`` wrote, one process per Keras backend (``KERAS_BACKEND`` set in its
  environment). Every inference path in ``our_paths`` is tried; each one's sequence output is
  checked against transformers' (max |delta| < 1e-3, else it does not count) and the fastest
  valid path is the backend's number.

Every contender runs in its own worker process (this script with ``--child --backend X``;
transformers is ``--backend transformers``). Workers start one at a time, so the first call
(compilation/tracing included, reported separately) and ``--warmup`` more calls run on an
otherwise idle machine. Then the timing is interleaved: ``--runs`` rounds, and in each round
every path of every worker does ``--reps`` calls in turn (the order rotates each round)
while the other workers sit idle, blocked on their stdin. A path's time per call in a round
is that round's total / ``--reps``; the reported time is the median over rounds. Interleaving
spreads the noise of a shared machine (run-to-run swings of several x were seen here) over
all contenders instead of whichever ran during a noisy minute.

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 on this machine).

tokens/s = 8 * 128 / median seconds; ratio = ours tokens/s / transformers tokens/s.
Results go to ``benchmarks/results/encoder.json`` (``encoder-quick.json`` with ``--quick``),
with the date, machine and versions.

``--try-fixes`` also times, in the same workers and rounds, each backend's main path with a
proposed package fix monkeypatched in (``LayerNormalization`` through
``keras.ops.layer_normalization``); those rows are marked and never count as the backend's number.

Run: ``python benchmarks/encoder.py [--quick] [--backends jax torch tensorflow]
[--runs 7] [--reps 3] [--warmup 2] [--try-fixes]``
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch", "tensorflow")
BATCH, SEQ = 8, 128
TOKENS = BATCH * SEQ
THREADS = 2
TOLERANCE = 1e-3
MARK = "@@bench "


def model_config(quick):
    return dict(vocab_size=21128, hidden_size=768, num_hidden_layers=2 if quick else 12,
                num_attention_heads=12, intermediate_size=3072, max_position=512)


def make_inputs(vocab_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, vocab_size, size=(BATCH, SEQ)).astype("int32")
    segment_ids = np.zeros((BATCH, SEQ), dtype="int32")
    segment_ids[:, SEQ // 2:] = 1
    return token_ids, segment_ids


def identity(x):
    return x


# ------------------------------------------------------------------------ transformers
def transformers_paths(args):
    """Build BertModel, save it (checkpoint + inputs + reference output) to the workdir."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    torch.set_num_threads(THREADS)
    cfg = model_config(args.quick)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                        num_hidden_layers=cfg["num_hidden_layers"],
                        num_attention_heads=cfg["num_attention_heads"],
                        intermediate_size=cfg["intermediate_size"],
                        max_position_embeddings=cfg["max_position"], hidden_act="gelu",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(os.path.join(args.workdir, "hf"))

    token_ids, segment_ids = make_inputs(cfg["vocab_size"])
    ids = torch.from_numpy(token_ids.astype("int64"))
    segs = torch.from_numpy(segment_ids.astype("int64"))
    mask = torch.ones_like(ids)

    def forward():
        with torch.inference_mode():
            return model(input_ids=ids, token_type_ids=segs, attention_mask=mask).last_hidden_state

    with torch.inference_mode():
        reference = forward().numpy()
    np.savez(os.path.join(args.workdir, "data.npz"), token_ids=token_ids,
             segment_ids=segment_ids, reference=reference)
    name = f"BertModel.eval() + inference_mode, attn={model.config._attn_implementation}"
    return [(name, forward, identity)], reference


# ------------------------------------------------------------------------------- ours
def our_paths(backend, args):
    """[(name, fn, sync)]: the inference paths tried on this backend."""
    import keras
    import numpy as np

    from kerasformers import build_transformer_model

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    data = np.load(os.path.join(args.workdir, "data.npz"))
    x_np = [data["token_ids"], data["segment_ids"]]
    model = build_transformer_model(checkpoint_path=os.path.join(args.workdir, "hf"))
    paths = []
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = [jnp.asarray(a) for a in x_np]
        # own copies: predict_on_batch donates the model's variable buffers on every call
        tv = [jnp.array(v.value, copy=True) for v in model.trainable_variables]
        ntv = [jnp.array(v.value, copy=True) for v in model.non_trainable_variables]

        @jax.jit
        def forward(tv, ntv, x):
            return model.stateless_call(tv, ntv, x, training=False)[0]

        paths.append(("jax.jit(model.stateless_call)", lambda: forward(tv, ntv, x),
                      lambda o: o.block_until_ready()))
    elif backend == "torch":
        import torch

        x = [keras.ops.convert_to_tensor(a) for a in x_np]

        def eager():
            with torch.inference_mode():
                return model(x, training=False)

        paths.append(("model(x, training=False) + inference_mode", eager, identity))
    elif backend == "tensorflow":
        import tensorflow as tf

        x = [tf.constant(a) for a in x_np]
        graph = tf.function(lambda x: model(x, training=False), jit_compile=False)
        xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
        paths.append(("tf.function(model(x, training=False))", lambda: graph(x), identity))
        paths.append(("tf.function(..., jit_compile=True)", lambda: xla(x), identity))
    paths.append(("model.predict_on_batch", lambda: model.predict_on_batch(x_np), identity))
    if args.try_fixes:
        paths += proposed_fix_paths(backend, model, x_np)
    return paths, data["reference"]


FIX_TAG = "[proposed fix] "


def fused_layer_norm():
    """Context manager: LayerNormalization.call -> keras.ops.layer_normalization (the
    proposed fix; on torch that is one fused F.layer_norm kernel instead of ~9 ops)."""
    import contextlib

    from keras import ops

    from kerasformers.layers import normalization

    cls = normalization.LayerNormalization
    original = cls.call

    def call(self, inputs):
        if (self.conditional or not (self.zero_mean and self.unit_variance)
                or self.scale is not True or self.offset is not True):
            return original(self, inputs)
        x = ops.cast(inputs, "float32")
        y = ops.layer_normalization(x, ops.cast(self.gamma, "float32"),
                                    ops.cast(self.beta, "float32"), epsilon=self.epsilon)
        return ops.cast(y, self.compute_dtype)

    @contextlib.contextmanager
    def patch():
        cls.call = call
        try:
            yield
        finally:
            cls.call = original

    return patch


def proposed_fix_paths(backend, model, x_np):
    """The backend's main path with the proposed fix monkeypatched in (never 'best')."""
    import keras

    patch = fused_layer_norm()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = [jnp.asarray(a) for a in x_np]
        tv = [jnp.array(v.value, copy=True) for v in model.trainable_variables]
        ntv = [jnp.array(v.value, copy=True) for v in model.non_trainable_variables]
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])

        def fn():
            with patch():  # only matters while tracing
                return forward(tv, ntv, x)

        return [(FIX_TAG + "jax.jit + fused LayerNorm", fn, lambda o: o.block_until_ready())]
    if backend == "torch":
        import torch

        x = [keras.ops.convert_to_tensor(a) for a in x_np]

        def fn():
            with patch(), torch.inference_mode():
                return model(x, training=False)

        return [(FIX_TAG + "model(x) + inference_mode + fused LayerNorm", fn, identity)]
    import tensorflow as tf

    x = [tf.constant(a) for a in x_np]
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)

    def fn():
        with patch():  # only matters while tracing
            return xla(x)

    return [(FIX_TAG + "tf.function(jit_compile=True) + fused LayerNorm", fn, identity)]


def set_threads(backend):
    if backend in ("torch", "transformers"):
        import torch

        torch.set_num_threads(THREADS)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def to_numpy(out):
    if hasattr(out, "detach"):
        return out.detach().cpu().numpy()
    import numpy as np

    return np.asarray(out)


def run_child(args):
    """Worker: set up, time first call + warm-up, then serve 'run' requests on stdin."""
    import numpy as np

    proto = os.fdopen(os.dup(1), "w", buffering=1)  # protocol channel
    os.dup2(2, 1)  # anything libraries print goes to stderr
    sys.stdout = sys.stderr

    def send(msg):
        proto.write(MARK + json.dumps(msg) + "\n")

    set_threads(args.backend)
    t = time.perf_counter()
    if args.backend == "transformers":
        paths, reference = transformers_paths(args)
    else:
        paths, reference = our_paths(args.backend, args)
    setup_s = time.perf_counter() - t
    if args.only:
        paths = [p for p in paths if args.backend == "transformers"
                 or any(o in p[0] for o in args.only)]
    infos, live = [], []
    for name, fn, sync in paths:
        try:
            t = time.perf_counter()
            out = sync(fn())
            first = time.perf_counter() - t
            for _ in range(args.warmup):
                out = sync(fn())
            delta = float(np.max(np.abs(to_numpy(out) - reference)))
        except Exception as e:  # a path that does not work here is reported, not fatal
            infos.append({"path": name, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        infos.append({"path": name, "first_call_s": first, "max_abs_delta": delta,
                      "valid": delta < TOLERANCE})
        live.append((len(infos) - 1, fn, sync))
    send({"ready": True, "setup_s": setup_s, "paths": infos, "versions": versions()})
    runnable = {i: (fn, sync) for i, fn, sync in live}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        fn, sync = runnable[cmd["path"]]
        t = time.perf_counter()
        for _ in range(cmd["reps"]):
            sync(fn())
        send({"per_call_s": (time.perf_counter() - t) / cmd["reps"]})


# ----------------------------------------------------------------------------- parent
def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name, dists in (("numpy", ["numpy"]), ("keras", ["keras"]), ("jax", ["jax"]),
                        ("jaxlib", ["jaxlib"]), ("torch", ["torch"]),
                        ("tensorflow", ["tensorflow", "tensorflow-cpu"]),
                        ("transformers", ["transformers"]), ("kerasformers", ["kerasformers"])):
        for dist in dists:
            try:
                out[name] = version(dist)
                break
            except PackageNotFoundError:
                pass
    return out


def machine_info():
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": THREADS}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return None


class Worker:
    def __init__(self, backend, args, workdir):
        self.backend = backend
        self.log_path = os.path.join(workdir, f"{backend}.log")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--backend", backend,
               "--workdir", workdir, "--warmup", str(args.warmup)]
        if args.quick:
            cmd.append("--quick")
        if args.only:
            cmd += ["--only", *args.only]
        if args.try_fixes:
            cmd.append("--try-fixes")
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TF_CPP_MIN_LOG_LEVEL="2")
        if backend != "transformers":
            env["KERAS_BACKEND"] = backend
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.error = None

    def receive(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.proc.wait()
        self.log.flush()
        with open(self.log_path) as f:
            tail = "\n".join(f.read().strip().splitlines()[-12:])
        self.error = f"worker exited ({self.proc.returncode}):\n{tail}"
        return None

    def request(self, msg):
        if self.error:
            return None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.receive()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def cpu_steal():
    """(steal, total) jiffies from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[7], sum(fields)
    except (OSError, IndexError, ValueError):
        return None


def run_parent(args):
    cfg = model_config(args.quick)
    print(f"encoder benchmark: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"batch {BATCH} x {SEQ} tokens, float32, {THREADS} threads; "
          f"{args.runs} interleaved rounds x {args.reps} calls", flush=True)
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_info(), "versions": versions(), "git_commit": git_commit(),
              "config": dict(cfg, batch=BATCH, seq_len=SEQ, dtype="float32", threads=THREADS,
                             warmup=args.warmup, runs=args.runs, reps=args.reps),
              "results": {}}
    workers = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            for backend in ["transformers", *args.backends]:
                module = "torch" if backend == "transformers" else backend
                if importlib.util.find_spec(module) is None or (
                        backend == "transformers"
                        and importlib.util.find_spec("transformers") is None):
                    print(f"{backend}: not installed, skipped")
                    report["results"][backend] = {"skipped": "not installed"}
                    if backend == "transformers":
                        raise SystemExit("transformers (torch) is needed for the reference")
                    continue
                w = Worker(backend, args, workdir)
                ready = w.receive()
                if ready is None:
                    print(f"{backend}: {w.error}")
                    report["results"][backend] = {"error": w.error}
                    w.close()
                    if backend == "transformers":
                        raise SystemExit("transformers worker failed")
                    continue
                workers.append(w)
                w.info = ready
                report["results"][backend] = {"setup_s": ready["setup_s"],
                                              "paths": ready["paths"]}
                for p in ready["paths"]:
                    p["runs_s"] = []
                    if "error" in p:
                        print(f"  [{backend}] {p['path']}: FAILED {p['error'][:200]}")
                    else:
                        print(f"  [{backend}] {p['path']}: first call {p['first_call_s']:.3f}s"
                              f", max|d| {p['max_abs_delta']:.2e}", flush=True)
            jobs = [(w, i) for w in workers for i, p in enumerate(w.info["paths"])
                    if "error" not in p]
            steal0, t0 = cpu_steal() or (0, 0), time.time()
            for r in range(args.runs):
                k = r % len(jobs)
                for w, i in jobs[k:] + jobs[:k]:
                    reply = w.request({"op": "run", "path": i, "reps": args.reps})
                    if reply is None:
                        print(f"{w.backend}: {w.error}")
                        continue
                    w.info["paths"][i]["runs_s"].append(reply["per_call_s"])
                print(f"  round {r + 1}/{args.runs} done ({time.time() - t0:.0f}s)", flush=True)
            steal1 = cpu_steal()
            if steal1 and steal1[1] > steal0[1]:
                report["cpu_steal_pct"] = 100 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
        finally:
            for w in workers:
                w.close()
    summarise(report, args)


def summarise(report, args):
    results = report["results"]
    for r in results.values():
        for p in r.get("paths", []):
            if p.get("runs_s"):
                p["median_s"] = statistics.median(p["runs_s"])
                p["min_s"] = min(p["runs_s"])
                p["tokens_per_s"] = TOKENS / p["median_s"]
        done = [p for p in r.get("paths", []) if p.get("valid") and "median_s" in p
                and not p["path"].startswith(FIX_TAG)]
        r["best"] = min(done, key=lambda p: p["median_s"]) if done else None
    hf = results["transformers"]["best"]
    if hf is None:
        raise SystemExit("transformers produced no timing")
    for r in results.values():
        for p in r.get("paths", []):
            if "tokens_per_s" in p:
                p["ratio_vs_transformers"] = p["tokens_per_s"] / hf["tokens_per_s"]

    rows = [("transformers (torch)", hf, "-")]
    for backend in args.backends:
        best = results[backend].get("best")
        if best:
            rows.append((f"ours ({backend})", best, f"{best['max_abs_delta']:.1e}"))
        else:
            rows.append((f"ours ({backend})", None, results[backend].get("skipped", "failed")))
    header = ("backend", "first call s", "median s", "tokens/s", "ratio vs transformers",
              "max|d|", "path")
    table = [header]
    for name, p, d in rows:
        if p is None:
            table.append((name, "-", "-", "-", "-", d, "-"))
        else:
            table.append((name, f"{p['first_call_s']:.3f}", f"{p['median_s']:.4f}",
                          f"{p['tokens_per_s']:.0f}", f"{p['ratio_vs_transformers']:.2f}x", d,
                          p["path"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print()
    for i, row in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print("\nall paths (median / min of rounds, s per call):")
    for backend, r in results.items():
        for p in r.get("paths", []):
            if "error" in p:
                print(f"  {backend:<12} {p['path']:<62} error: {p['error'][:80]}")
            elif "median_s" in p:
                print(f"  {backend:<12} {p['path']:<62} first {p['first_call_s']:7.3f}  "
                      f"median {p['median_s']:.4f}  min {p['min_s']:.4f}  "
                      f"{p['ratio_vs_transformers']:.2f}x  max|d| {p['max_abs_delta']:.1e}"
                      f"{'' if p['valid'] else '  INVALID (max|d| >= 1e-3)'}")
    if "cpu_steal_pct" in report:
        print(f"cpu steal during timing: {report['cpu_steal_pct']:.1f}%")
    spread = max((max(p["runs_s"]) / p["min_s"], p["path"]) for r in results.values()
                 for p in r.get("paths", []) if p.get("runs_s"))
    report["max_round_spread"] = spread[0]
    if spread[0] > 1.3:
        print(f"note: noisy machine, slowest/fastest round up to {spread[0]:.1f}x "
              f"({spread[1]}); medians over interleaved rounds are robust to a minority of "
              "slow rounds, but compare the min columns too")
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) if args.out else out_dir, exist_ok=True)
    out_path = args.out or os.path.join(out_dir,
                                        "encoder-quick.json" if args.quick else "encoder.json")
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {os.path.relpath(out_path, ROOT)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers instead of 12 (smoke check)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--runs", type=int, default=None,
                   help="interleaved timing rounds; median reported (default 7, quick 3)")
    p.add_argument("--reps", type=int, default=3, help="calls per path per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--only", nargs="+", help="only our paths whose name contains one of these")
    p.add_argument("--try-fixes", action="store_true",
                   help="also time each backend's main path with the proposed fix "
                        "(LayerNormalization -> keras.ops.layer_normalization) monkeypatched in; "
                        "reported apart, never picked as the backend's number")
    p.add_argument("--out", help="results JSON (default benchmarks/results/encoder.json, "
                                 "or encoder-quick.json with --quick)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=("transformers",) + BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runs is None:
        args.runs = 3 if args.quick else 7
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
