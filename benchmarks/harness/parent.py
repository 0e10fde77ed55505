"""The parent process: start one worker per contender in turn, run the interleaved timing
rounds, then hand the numbers to `report.summarise`."""

import datetime
import importlib.util
import json
import os
import sys
import tempfile
import time

from .machine import cpu_steal, git_commit, machine_info, versions
from .process import ChildProcess
from .report import facts, summarise
from .spec import THREADS


class Worker(ChildProcess):
    def __init__(self, spec, backend, args, workdir):
        self.backend = backend
        cmd = [
            sys.executable,
            spec.script,
            "--child",
            "--backend",
            backend,
            "--workdir",
            workdir,
            "--warmup",
            str(args.warmup),
        ]
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


def run_parent(spec, args):
    cfg = spec.model_config(args.quick)
    print(
        f"{spec.name} benchmark: {spec.header(cfg)}, {spec.workload_text(args)}, "
        f"float32, {THREADS} threads; "
        f"{args.runs} interleaved rounds x {args.reps} calls",
        flush=True,
    )
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "git_commit": git_commit(),
        "config": dict(
            cfg,
            **spec.config_entries(args),
            dtype="float32",
            threads=THREADS,
            warmup=args.warmup,
            runs=args.runs,
            reps=args.reps,
        ),
        "results": {},
    }
    if spec.relative:
        report["config"]["validity"] = spec.criterion().replace(">=", "<")
    workers = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            for backend in ["transformers", *args.backends]:
                module = "torch" if backend == "transformers" else backend
                if importlib.util.find_spec(module) is None or (
                    backend == "transformers" and importlib.util.find_spec("transformers") is None
                ):
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
                report["results"][backend] = {"setup_s": ready["setup_s"], "paths": ready["paths"]}
                for p in ready["paths"]:
                    p["runs_s"] = []
                    label = f"{p['path']} [{p['group']}]" if "group" in p else p["path"]
                    if "error" in p:
                        print(f"  [{backend}] {label}: FAILED {p['error'][:200]}")
                    else:
                        rel = f" (rel {p['rel_delta']:.1e})" if "rel_delta" in p else ""
                        print(
                            f"  [{backend}] {label}: first call {p['first_call_s']:.3f}s"
                            f", max|d| {p['max_abs_delta']:.2e}{rel}{facts(p)}",
                            flush=True,
                        )
            jobs = [
                (w, i) for w in workers for i, p in enumerate(w.info["paths"]) if "error" not in p
            ]
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
