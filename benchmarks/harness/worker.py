"""A worker process (``--child``): build the paths of one contender, check them against the
reference, then time them on request."""

import json
import os
import sys
import time

from .machine import versions
from .process import MARK
from .spec import PATH_OPTIONS, THREADS


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
        paths = [
            p for p in paths if args.backend == "transformers" or any(o in p[0] for o in args.only)
        ]
    scale = float(np.max(np.abs(reference))) if spec.relative else 1.0
    infos, live = [], []
    for name, fn, sync, *extra in paths:
        options = extra[0] if extra else {}
        unknown = set(options) - set(PATH_OPTIONS)
        assert not unknown, f"unknown path options {unknown}"
        tags = {k: options[k] for k in ("group", "tokens", "row") if k in options}
        tags.update(options.get("facts", {}))
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
