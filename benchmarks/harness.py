"""Shared machinery of the model benchmarks (encoder.py, decoder.py, generation.py): ours vs
transformers.

A benchmark script describes its model in a `Spec` and ends in ``harness.main(SPEC)``. The
harness then does the rest, the same way for every model:

* the parent process starts one worker process per contender (the benchmark script itself with
  ``--child --backend X``; transformers is ``--backend transformers`` and runs first, because it
  writes the checkpoint, the inputs and the reference output to the shared workdir), one at a
  time, so every first call (compilation/tracing included) and the ``--warmup`` calls run on an
  otherwise idle machine;
* each worker builds its paths (``Spec.transformers_paths`` / ``Spec.our_paths``: a list of
  ``(name, fn, sync)``, where ``sync(fn())`` runs one complete call and returns its output),
  checks every path's output against the reference and reports back;
* a path may carry a 4th element, a dict of options (``PATH_OPTIONS``): a ``group`` (a
  benchmark with several workloads, e.g. generation's modes, gets one table per group, each
  path compared with the transformers path of its group), its own ``reference`` and
  ``tokens`` per call, a ``row`` label (reported in its own row, never the backend's number);
* timing is interleaved: ``--runs`` rounds, and in each round every path of every worker does
  ``--reps`` calls in turn (the order rotates each round) while the other workers sit idle,
  blocked on their stdin; a path's time per call in a round is the round's total / ``--reps``
  and the reported time is the median over rounds;
* the table reports each path's first call and, as "compile s", what it cost beyond the
  median call (compilation / tracing: first call - median, at least 0);
* the parent prints the table, writes ``benchmarks/results/<name>.json``
  (``<name>-quick.json`` with ``--quick``) with the date, machine, versions and git commit.

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 on this machine).
"""
import argparse
import contextlib
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
from dataclasses import dataclass, field
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch", "tensorflow")
THREADS = 2
MARK = "@@bench "
FIX_TAG = "[proposed fix] "
#: the options a path may carry as a 4th element: (name, fn, sync, {option: value})
PATH_OPTIONS = {
    "group": "workload the path belongs to: one table per group, ratios vs the transformers "
             "path of the same group",
    "reference": "the output to check against, instead of the worker's reference",
    "tokens": "tokens per call for tokens/s, instead of Spec.tokens",
    "row": "label of a row of its own in the group's table; never the backend's number",
    "approximate": "reduced precision (bf16, int8): never INVALID; the table shows the share "
                   "of output elements equal to the reference ('agreement') instead of max|d|",
}


@dataclass
class Spec:
    """What a benchmark measures; everything else is the harness's.

    name: results go to ``benchmarks/results/<name>.json`` (``<name>-quick.json``).
    doc: the benchmark's docstring (its first line is the ``--help`` description).
    script: absolute path of the benchmark script; workers are launched with it.
    batch, seq_len: input shape; tokens per call = batch * seq_len.
    model_config(quick): dict of model sizes, printed in the header and saved in the JSON.
    header(cfg): the model part of the header line, e.g. "12 layers, hidden 768".
    transformers_paths(args): builds the reference, saves checkpoint + inputs + reference output
        to ``args.workdir``; returns ``([(name, fn, sync)], reference)``.
    our_paths(backend, args): returns ``([(name, fn, sync)], reference)``; appends
        ``proposed_fix_paths`` itself when ``args.try_fixes`` (it holds the model and inputs).
    tolerance: a path is valid if max |out - reference| < tolerance, or with ``relative=True``
        if max |out - reference| / max |reference| < tolerance.
    fix_help: help of ``--try-fixes``; None = the benchmark has no proposed fix (no flag).

    Optional hooks, for benchmarks whose workload is not one batch x seq_len call:
    add_arguments(parser): adds the benchmark's own options; the harness forwards their values
        to the workers.
    defaults: overrides of the harness's option defaults, e.g. ``{"runs": 3, "reps": 1}``.
    workload(args): replaces "batch B x S tokens" in the header line.
    run_config(args): replaces ``{"batch": B, "seq_len": S}`` in the JSON's config.
    group_title(group, args): the title printed above a group's table (default: the group).
    describe(out, reference): extra facts about a path's output (a dict, e.g. where it first
        differs), saved with the path and printed after its max|d|.
    """

    name: str
    doc: str
    script: str
    batch: int
    seq_len: int
    model_config: Callable[[bool], dict]
    header: Callable[[dict], str]
    transformers_paths: Callable
    our_paths: Callable
    tolerance: float = 1e-3
    relative: bool = False
    fix_help: Optional[str] = None
    add_arguments: Optional[Callable] = None
    defaults: dict = field(default_factory=dict)
    workload: Optional[Callable] = None
    run_config: Optional[Callable] = None
    group_title: Optional[Callable] = None
    describe: Optional[Callable] = None

    @property
    def tokens(self):
        return self.batch * self.seq_len

    def criterion(self):
        if self.relative:
            return f"max|d| / max|ref| >= {self.tolerance:g}"
        return f"max|d| >= {self.tolerance:g}"

    def workload_text(self, args):
        if self.workload:
            return self.workload(args)
        return f"batch {self.batch} x {self.seq_len} tokens"

    def config_entries(self, args):
        if self.run_config:
            return self.run_config(args)
        return {"batch": self.batch, "seq_len": self.seq_len}


def identity(x):
    return x


# ------------------------------------------------------------------------ paths
def keras_paths(backend, model, x_np):
    """The inference paths tried for a Keras model on `backend`, inputs a list of arrays:
    jax ``jax.jit(model.stateless_call)``; torch eager under ``inference_mode``; TensorFlow
    ``tf.function`` with and without XLA; ``model.predict_on_batch`` everywhere."""
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
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
    return paths


def patched_paths(backend, model, x_np, patch, label):
    """The backend's main path with `patch` (a context manager factory: the proposed fix,
    monkeypatched in) active around every call; names start with FIX_TAG and end in `label`,
    and such rows never count as the backend's number."""
    import keras

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

        return [(f"{FIX_TAG}jax.jit + {label}", fn, lambda o: o.block_until_ready())]
    if backend == "torch":
        import torch

        x = [keras.ops.convert_to_tensor(a) for a in x_np]

        def fn():
            with patch(), torch.inference_mode():
                return model(x, training=False)

        return [(f"{FIX_TAG}model(x) + inference_mode + {label}", fn, identity)]
    import tensorflow as tf

    x = [tf.constant(a) for a in x_np]
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)

    def fn():
        with patch():  # only matters while tracing
            return xla(x)

    return [(f"{FIX_TAG}tf.function(jit_compile=True) + {label}", fn, identity)]


def method_patch(cls, attr, replacement):
    """Context manager factory: ``cls.attr = replacement`` while active."""

    @contextlib.contextmanager
    def patch():
        original = getattr(cls, attr)
        setattr(cls, attr, replacement)
        try:
            yield
        finally:
            setattr(cls, attr, original)

    return patch


# ------------------------------------------------------------------------ worker
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


def run_child(spec, args):
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
        paths, reference = spec.transformers_paths(args)
    else:
        paths, reference = spec.our_paths(args.backend, args)
    setup_s = time.perf_counter() - t
    if args.only:
        paths = [p for p in paths if args.backend == "transformers"
                 or any(o in p[0] for o in args.only)]
    scale = float(np.max(np.abs(reference))) if spec.relative else 1.0
    infos, live = [], []
    for name, fn, sync, *extra in paths:
        options = extra[0] if extra else {}
        unknown = set(options) - set(PATH_OPTIONS)
        assert not unknown, f"unknown path options {unknown}"
        tags = {k: options[k] for k in ("group", "tokens", "row") if k in options}
        ref = options.get("reference", reference)
        try:
            t = time.perf_counter()
            out = sync(fn())
            first = time.perf_counter() - t
            for _ in range(args.warmup):
                out = sync(fn())
            out = to_numpy(out)
            if out.shape != np.shape(ref):
                delta = float("inf")
                tags["shape"] = f"{list(out.shape)}, reference {list(np.shape(ref))}"
            else:
                delta = float(np.max(np.abs(out - ref), initial=0.0))
                if options.get("approximate"):
                    tags["agreement"] = float(np.mean(out == ref))
            if spec.describe:
                tags.update(spec.describe(out, ref))
        except Exception as e:  # a path that does not work here is reported, not fatal
            infos.append({"path": name, **tags, "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        del out
        info = {"path": name, **tags, "first_call_s": first, "max_abs_delta": delta}
        if spec.relative:
            info["max_abs_reference"] = scale
            info["rel_delta"] = delta / scale
        info["valid"] = delta / scale < spec.tolerance
        if options.get("approximate"):
            info["valid"] = True
            info.setdefault("agreement", 0.0)  # a shape mismatch agrees nowhere
        infos.append(info)
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


# ------------------------------------------------------------------------ parent
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


class ChildProcess:
    """A benchmark worker process: JSON requests on its stdin, `MARK`-prefixed replies on stdout,
    stderr to `log_path`; `error` holds the log's tail once it has died."""

    quit_timeout = 60

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
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
                self.proc.wait(timeout=self.quit_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Worker(ChildProcess):
    def __init__(self, spec, backend, args, workdir):
        self.backend = backend
        cmd = [sys.executable, spec.script, "--child", "--backend", backend,
               "--workdir", workdir, "--warmup", str(args.warmup)]
        if args.quick:
            cmd.append("--quick")
        if args.only:
            cmd += ["--only", *args.only]
        if getattr(args, "try_fixes", False):
            cmd.append("--try-fixes")
        if args.spec_dests:
            cmd += ["--spec-args", json.dumps({k: getattr(args, k) for k in args.spec_dests})]
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TF_CPP_MIN_LOG_LEVEL="2")
        if backend != "transformers":
            env["KERAS_BACKEND"] = backend
        super().__init__(cmd, env, os.path.join(workdir, f"{backend}.log"))


def cpu_steal():
    """(steal, total) jiffies from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[7], sum(fields)
    except (OSError, IndexError, ValueError):
        return None


def run_parent(spec, args):
    cfg = spec.model_config(args.quick)
    print(f"{spec.name} benchmark: {spec.header(cfg)}, {spec.workload_text(args)}, "
          f"float32, {THREADS} threads; "
          f"{args.runs} interleaved rounds x {args.reps} calls", flush=True)
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_info(), "versions": versions(), "git_commit": git_commit(),
              "config": dict(cfg, **spec.config_entries(args), dtype="float32",
                             threads=THREADS, warmup=args.warmup, runs=args.runs,
                             reps=args.reps),
              "results": {}}
    if spec.relative:
        report["config"]["validity"] = spec.criterion().replace(">=", "<")
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
                w = Worker(spec, backend, args, workdir)
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
                    label = f"{p['path']} [{p['group']}]" if "group" in p else p["path"]
                    if "error" in p:
                        print(f"  [{backend}] {label}: FAILED {p['error'][:200]}")
                    else:
                        rel = f" (rel {p['rel_delta']:.1e})" if "rel_delta" in p else ""
                        print(f"  [{backend}] {label}: first call {p['first_call_s']:.3f}s"
                              f", max|d| {p['max_abs_delta']:.2e}{rel}{facts(p)}", flush=True)
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
    summarise(spec, report, args)


#: the keys of a path's report that `facts` leaves out (the rest: Spec.describe's, "shape")
STANDARD_KEYS = {"path", "group", "tokens", "row", "agreement", "first_call_s", "max_abs_delta",
                 "max_abs_reference", "rel_delta", "valid", "runs_s", "error", "median_s",
                 "min_s", "tokens_per_s", "ratio_vs_transformers"}


def facts(p):
    """The extra facts about a path's output, as text: ' key=value ...' or ''."""
    return "".join(f" {k}={v}" for k, v in p.items() if k not in STANDARD_KEYS)


def summarise(spec, report, args):
    results = report["results"]
    groups = []  # in order of appearance, transformers' first; [None] when ungrouped
    for r in results.values():
        for p in r.get("paths", []):
            if p.get("group") not in groups:
                groups.append(p.get("group"))
    grouped = groups != [None] and bool(groups)
    groups = groups or [None]
    for r in results.values():
        for p in r.get("paths", []):
            if p.get("runs_s"):
                p["median_s"] = statistics.median(p["runs_s"])
                p["min_s"] = min(p["runs_s"])
                p["tokens_per_s"] = (p["tokens"] if "tokens" in p else spec.tokens) / p["median_s"]
                # what the first call costs beyond a warm one: compilation / tracing
                p["compile_s"] = max(0.0, p["first_call_s"] - p["median_s"])
        best = {}
        for g in groups:
            done = [p for p in r.get("paths", []) if p.get("group") == g and p.get("valid")
                    and "median_s" in p and not p["path"].startswith(FIX_TAG)
                    and "row" not in p]
            best[g] = min(done, key=lambda p: p["median_s"]) if done else None
        r["best"] = best if grouped else best[None]
    hf = {g: results["transformers"]["best"][g] if grouped else results["transformers"]["best"]
          for g in groups}
    if all(h is None for h in hf.values()):
        raise SystemExit("transformers produced no timing")
    for r in results.values():
        for p in r.get("paths", []):
            h = hf.get(p.get("group"))
            if "tokens_per_s" in p and h is not None:
                p["ratio_vs_transformers"] = p["tokens_per_s"] / h["tokens_per_s"]

    header = ("backend", "first call s", "compile s", "median s", "tokens/s",
              "ratio vs transformers", "max|d|", "path")
    for g in groups:
        def best_of(backend):
            return results[backend]["best"][g] if grouped else results[backend].get("best")

        def no_number(backend):
            """Why a backend has no number in this group: skipped, failed or INVALID."""
            r = results[backend]
            mine = [p for p in r.get("paths", []) if p.get("group") == g and "row" not in p
                    and not p["path"].startswith(FIX_TAG)]
            invalid = [p for p in mine if p.get("valid") is False]
            if invalid:
                return f"INVALID ({min(p['max_abs_delta'] for p in invalid):.1e})"
            return r.get("skipped", "failed")

        rows = [("transformers (torch)", hf[g], "-" if hf[g] else no_number("transformers"))]
        for backend in args.backends:
            best = best_of(backend) if "best" in results[backend] else None
            if best:
                rows.append((f"ours ({backend})", best, f"{best['max_abs_delta']:.1e}"))
            else:
                rows.append((f"ours ({backend})", None, no_number(backend)))
        for backend, r in results.items():
            for p in r.get("paths", []):
                if p.get("group") == g and "row" in p:
                    if "agreement" in p and "median_s" in p:
                        rows.append((p["row"], p, f"agreement {p['agreement']:.1%}"))
                    elif p.get("valid") and "median_s" in p:
                        rows.append((p["row"], p, f"{p['max_abs_delta']:.1e}"))
                    elif "error" in p or "median_s" not in p:
                        rows.append((p["row"], None, "failed"))
                    else:
                        rows.append((p["row"], None, f"INVALID ({p['max_abs_delta']:.1e})"))
        table = [header]
        for name, p, d in rows:
            if p is None:
                table.append((name, "-", "-", "-", "-", "-", d, "-"))
            else:
                ratio = (f"{p['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in p
                         else "-")
                table.append((name, f"{p['first_call_s']:.3f}", f"{p['compile_s']:.3f}",
                              f"{p['median_s']:.4f}",
                              f"{p['tokens_per_s']:.0f}", ratio, d, p["path"]))
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        print()
        if grouped:
            print(spec.group_title(g, args) if spec.group_title else g)
        for i, row in enumerate(table):
            print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                print("-+-".join("-" * w for w in widths))
    if spec.relative:
        scale = max((p["max_abs_reference"] for r in results.values()
                     for p in r.get("paths", []) if "max_abs_reference" in p), default=0.0)
        print(f"(max|d| is absolute; valid means {spec.criterion().replace('>=', '<')}, "
              f"max|ref| = {scale:.3g})")
    print("\nall paths (median / min of rounds, s per call):")
    for backend, r in results.items():
        for p in r.get("paths", []):
            name = f"{p['group']:<{max(len(str(g)) for g in groups)}} {p['path']}" if grouped \
                else p["path"]
            if "error" in p:
                print(f"  {backend:<12} {name:<62} error: {p['error'][:80]}")
            elif "median_s" in p:
                ratio = (f"{p['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in p
                         else "-")
                print(f"  {backend:<12} {name:<62} first {p['first_call_s']:7.3f}  "
                      f"median {p['median_s']:.4f}  min {p['min_s']:.4f}  "
                      f"{ratio}  max|d| {p['max_abs_delta']:.1e}"
                      f"{'' if p['valid'] else f'  INVALID ({spec.criterion()}){facts(p)}'}")
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
    out_path = args.out or os.path.join(
        out_dir, f"{spec.name}-quick.json" if args.quick else f"{spec.name}.json")
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {os.path.relpath(out_path, ROOT)}")


# ------------------------------------------------------------------------ CLI
def parse_args(spec, argv=None):
    p = argparse.ArgumentParser(description=spec.doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers instead of 12 (smoke check)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    runs = spec.defaults.get("runs")
    p.add_argument("--runs", type=int, default=None,
                   help="interleaved timing rounds; median reported "
                        f"({f'default {runs}' if runs else 'default 7, quick 3'})")
    p.add_argument("--reps", type=int, default=3, help="calls per path per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--only", nargs="+", help="only our paths whose name contains one of these")
    if spec.fix_help:
        p.add_argument("--try-fixes", action="store_true", help=spec.fix_help)
    p.add_argument("--out", help=f"results JSON (default benchmarks/results/{spec.name}.json, "
                                 f"or {spec.name}-quick.json with --quick)")
    known = {a.dest for a in p._actions}
    if spec.add_arguments:
        spec.add_arguments(p)
    spec_dests = [a.dest for a in p._actions if a.dest not in known]
    p.set_defaults(**spec.defaults)
    p.add_argument("--spec-args", help=argparse.SUPPRESS)  # the parent's values, for workers
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=("transformers",) + BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.spec_args:
        vars(args).update(json.loads(args.spec_args))
    args.spec_dests = spec_dests
    if not spec.fix_help:
        args.try_fixes = False
    if args.runs is None:
        args.runs = 3 if args.quick else 7
    return args


def main(spec, argv=None):
    args = parse_args(spec, argv)
    if args.child:
        run_child(spec, args)
    else:
        run_parent(spec, args)
