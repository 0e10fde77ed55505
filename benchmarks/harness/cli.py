"""The command line every model benchmark shares, and `main`."""

import argparse
import json

from .parent import run_parent
from .spec import BACKENDS
from .worker import run_child


def parse_args(spec, argv=None):
    p = argparse.ArgumentParser(description=spec.doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers instead of 12 (smoke check)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    runs = spec.defaults.get("runs")
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="interleaved timing rounds; median reported "
        f"({f'default {runs}' if runs else 'default 7, quick 3'})",
    )
    p.add_argument("--reps", type=int, default=3, help="calls per path per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    p.add_argument("--only", nargs="+", help="only our paths whose name contains one of these")
    if spec.fix_help:
        p.add_argument("--try-fixes", action="store_true", help=spec.fix_help)
    p.add_argument(
        "--out",
        help=f"results JSON (default benchmarks/results/{spec.name}.json, "
        f"or {spec.name}-quick.json with --quick)",
    )
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
