"""The results: per-path medians, the best path per backend, ratios vs transformers, the
tables printed and the JSON written to ``benchmarks/results/``."""

import json
import os
import statistics

from .spec import FIX_TAG, ROOT

#: the path users call without choosing one: reported beside each backend's fastest path
DEFAULT_PATH = "model.predict_on_batch"

#: the keys of a path's report that `facts` leaves out (the rest: Spec.describe's, "shape")
STANDARD_KEYS = {
    "path",
    "group",
    "tokens",
    "row",
    "agreement",
    "first_call_s",
    "max_abs_delta",
    "max_abs_reference",
    "rel_delta",
    "valid",
    "runs_s",
    "error",
    "median_s",
    "min_s",
    "tokens_per_s",
    "ratio_vs_transformers",
}


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
            done = [
                p
                for p in r.get("paths", [])
                if p.get("group") == g
                and p.get("valid")
                and "median_s" in p
                and not p["path"].startswith(FIX_TAG)
                and "row" not in p
            ]
            best[g] = min(done, key=lambda p: p["median_s"]) if done else None
        r["best"] = best if grouped else best[None]
    hf = {
        g: results["transformers"]["best"][g] if grouped else results["transformers"]["best"]
        for g in groups
    }
    if all(h is None for h in hf.values()):
        raise SystemExit("transformers produced no timing")
    for r in results.values():
        for p in r.get("paths", []):
            h = hf.get(p.get("group"))
            if "tokens_per_s" in p and h is not None:
                p["ratio_vs_transformers"] = p["tokens_per_s"] / h["tokens_per_s"]

    header = (
        "backend",
        "first call s",
        "compile s",
        "median s",
        "tokens/s",
        "ratio vs transformers",
        "max|d|",
        "path",
    )
    for g in groups:

        def best_of(backend):
            return results[backend]["best"][g] if grouped else results[backend].get("best")

        def no_number(backend):
            """Why a backend has no number in this group: skipped, failed or INVALID."""
            r = results[backend]
            mine = [
                p
                for p in r.get("paths", [])
                if p.get("group") == g and "row" not in p and not p["path"].startswith(FIX_TAG)
            ]
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
            # the path a user calls by default, beside the fastest one (like with like)
            default = [
                p
                for p in results[backend].get("paths", [])
                if p.get("group") == g and p["path"] == DEFAULT_PATH and "median_s" in p
            ]
            if default and default[0] is not best:
                d = default[0]
                rows.append((f"ours ({backend}), default path", d, f"{d['max_abs_delta']:.1e}"))
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
                ratio = (
                    f"{p['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in p else "-"
                )
                table.append(
                    (
                        name,
                        f"{p['first_call_s']:.3f}",
                        f"{p['compile_s']:.3f}",
                        f"{p['median_s']:.4f}",
                        f"{p['tokens_per_s']:.0f}",
                        ratio,
                        d,
                        p["path"],
                    )
                )
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        print()
        if grouped:
            print(spec.group_title(g, args) if spec.group_title else g)
        for i, row in enumerate(table):
            print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                print("-+-".join("-" * w for w in widths))
    if spec.relative:
        scale = max(
            (
                p["max_abs_reference"]
                for r in results.values()
                for p in r.get("paths", [])
                if "max_abs_reference" in p
            ),
            default=0.0,
        )
        print(
            f"(max|d| is absolute; valid means {spec.criterion().replace('>=', '<')}, "
            f"max|ref| = {scale:.3g})"
        )
    print("\nall paths (median / min of rounds, s per call):")
    for backend, r in results.items():
        for p in r.get("paths", []):
            name = (
                f"{p['group']:<{max(len(str(g)) for g in groups)}} {p['path']}"
                if grouped
                else p["path"]
            )
            if "error" in p:
                print(f"  {backend:<12} {name:<62} error: {p['error'][:80]}")
            elif "median_s" in p:
                ratio = (
                    f"{p['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in p else "-"
                )
                print(
                    f"  {backend:<12} {name:<62} first {p['first_call_s']:7.3f}  "
                    f"median {p['median_s']:.4f}  min {p['min_s']:.4f}  "
                    f"{ratio}  max|d| {p['max_abs_delta']:.1e}"
                    f"{'' if p['valid'] else f'  INVALID ({spec.criterion()}){facts(p)}'}"
                )
    if "cpu_steal_pct" in report:
        print(f"cpu steal during timing: {report['cpu_steal_pct']:.1f}%")
    spread = max(
        (max(p["runs_s"]) / p["min_s"], p["path"])
        for r in results.values()
        for p in r.get("paths", [])
        if p.get("runs_s")
    )
    report["max_round_spread"] = spread[0]
    if spread[0] > 1.3:
        print(
            f"note: noisy machine, slowest/fastest round up to {spread[0]:.1f}x "
            f"({spread[1]}); medians over interleaved rounds are robust to a minority of "
            "slow rounds, but compare the min columns too"
        )
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) if args.out else out_dir, exist_ok=True)
    out_path = args.out or os.path.join(
        out_dir, f"{spec.name}-quick.json" if args.quick else f"{spec.name}.json"
    )
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {os.path.relpath(out_path, ROOT)}")
