"""The ASGI application (FastAPI): routes, limits, and the batched work behind them.

`create_app(models, ...)` returns the app; `kerasformers.serving.serve` runs it on uvicorn.

>>> app = create_app([])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: create_app needs at least one model directory
"""

import asyncio
import base64
import contextlib
import importlib.resources
import json
import os
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from kerasformers.serving import schemas
from kerasformers.serving.batcher import Batcher, Job, Worker
from kerasformers.serving.models import MIN_LENGTH, Detokenizer, ServedModel, bucket
from kerasformers.serving.schemas import ApiError

DEFAULTS = dict(
    max_batch_size=32,
    max_wait_ms=5,
    queue_size=1024,
    timeout_s=60.0,
    max_body_bytes=1 << 20,
)


def _check_limits(max_batch_size, max_wait_ms, queue_size, timeout_s, max_body_bytes):
    checks = (
        ("max_batch_size", max_batch_size, 1, int),
        ("max_wait_ms", max_wait_ms, 0, (int, float)),
        ("queue_size", queue_size, 1, int),
        ("timeout_s", timeout_s, 1e-3, (int, float)),
        ("max_body_bytes", max_body_bytes, 1, int),
    )
    for name, value, low, kind in checks:
        if isinstance(value, bool) or not isinstance(value, kind) or value < low:
            raise ValueError(f"{name} must be a number >= {low}, got {value!r}")


def _load_models(models, application, pool, normalize):
    if isinstance(models, (str, os.PathLike, ServedModel)):
        models = [models]
    if isinstance(models, dict):
        items = list(models.items())
    else:
        items = [(None, m) for m in models]
    if not items:
        raise ValueError("create_app needs at least one model directory")
    served = {}
    for name, m in items:
        if not isinstance(m, ServedModel):
            m = ServedModel(m, name=name, application=application, pool=pool, normalize=normalize)
        if m.name in served:
            raise ValueError(f"two models are named {m.name!r}: pass a dict name -> path")
        served[m.name] = m
    return served


class Server:
    """The app's state: models, the worker thread, one batcher per kind of work, counters."""

    def __init__(self, models, max_batch_size, max_wait_ms, queue_size, timeout_s, max_body):
        self.models = models
        self.queue_size, self.timeout_s, self.max_body = queue_size, float(timeout_s), max_body
        self.worker = Worker()
        self.admitted = 0
        self.stats = {"requests": 0, "rejected_busy": 0, "timeouts": 0, "stream_steps": 0}
        self.encoder = Batcher(self._run_encoder, max_batch_size, max_wait_ms)
        self.completions = Batcher(self._run_completions, max_batch_size, max_wait_ms)
        self.streams = Batcher(self._run_streams, max_batch_size, max_wait_ms)
        self.batchers = (self.encoder, self.completions, self.streams)
        self.created = int(time.time())

    # -- admission: a bounded number of requests in the server at once -----------------------
    @contextlib.contextmanager
    def admission(self):
        self.take()
        try:
            yield
        finally:
            self.admitted -= 1

    def take(self):
        if self.admitted >= self.queue_size:
            self.stats["rejected_busy"] += 1
            raise ApiError(
                503,
                f"server busy: {self.admitted} requests in progress (queue_size="
                f"{self.queue_size}); retry later",
                type="server_busy",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        self.stats["requests"] += 1

    def model(self, name, task):
        if name is None:
            if len(self.models) > 1:
                raise ApiError(
                    400, f"model is required: one of {', '.join(self.models)}", param="model"
                )
            model = next(iter(self.models.values()))
        elif name not in self.models:
            raise ApiError(
                400,
                f"model {name!r} is not served here; available: {', '.join(self.models)}",
                param="model",
            )
        else:
            model = self.models[name]
        if task not in model.tasks:
            raise ApiError(
                400,
                f"model {model.name!r} does not serve {task} (it serves {', '.join(model.tasks)})",
                param="model",
            )
        return model

    async def wait(self, job):
        """A job's result within the request timeout (504 after it; the job is dropped)."""
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True
            self.stats["timeouts"] += 1
            raise ApiError(
                504, f"request timed out after {self.timeout_s:g} s", type="timeout"
            ) from None
        finally:
            if not job.future.done():
                job.cancelled = True

    # -- batches, run on the worker thread ----------------------------------------------------
    async def _run_encoder(self, key, jobs):
        model, task = key[0], key[1]
        rows = [r for job in jobs for r in job.payload["rows"]]
        top_k = key[2] if task == "fill-mask" else None
        out = await self.worker.run(_encode, model, task, rows, self.encoder.max_batch_size, top_k)
        start = 0
        for job in jobs:
            n = len(job.payload["rows"])
            job.resolve(out[start : start + n])
            start += n

    async def _run_completions(self, key, jobs):
        model = key[0]
        prompts = [p for job in jobs for p in job.payload["prompts"]]
        longest = max(job.payload["max_tokens"] for job in jobs)
        config = model.generation_config(longest, *key[1:6])
        out = await self.worker.run(model.complete, prompts, config)
        start = 0
        for job in jobs:
            n = len(job.payload["prompts"])
            job.resolve(out[start : start + n])
            start += n

    async def _run_streams(self, key, jobs):
        model = key[0]
        prompts = [p for job in jobs for p in job.payload["prompts"]]
        owners = [(job, j) for job in jobs for j in range(len(job.payload["prompts"]))]
        longest = max(job.payload["max_tokens"] for job in jobs)
        config = model.generation_config(longest, *key[1:6])
        steps = model.stream(prompts, config)
        for job in jobs:
            job.resolve(None)  # started: the response begins
        end = object()
        try:
            while not all(job.cancelled or job.payload["done"] for job in jobs):
                step = await self.worker.run(next, steps, end)
                if step is end:
                    break
                self.stats["stream_steps"] += 1
                for (job, j), token in zip(owners, step):
                    if not job.cancelled:
                        job.payload["push"](j, token)
        except Exception as error:  # the response has begun: the error goes into the stream
            for job in jobs:
                job.payload["fail"](error)
            raise
        finally:
            await self.worker.run(steps.close)
            for job in jobs:
                job.payload["release"]()
        for job in jobs:
            if not job.cancelled:
                job.payload["close"]()


def _encode(model, task, rows, size, top_k):
    """Embeddings or fill-mask for a batch's rows: one forward pass per length bucket (at most
    `size` rows each), so a short text is not padded to the longest one in the batch (on a CPU
    that padding costs more than the batch saves)."""
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault(bucket(len(r), MIN_LENGTH), []).append(i)
    out = [None] * len(rows)
    for indices in groups.values():
        for k in range(0, len(indices), size):
            chunk = indices[k : k + size]
            part = [rows[i] for i in chunk]
            done = model.embed(part) if task == "embeddings" else model.fill_mask(part, top_k)
            for i, value in zip(chunk, done):
                out[i] = value
    return out


def _page():
    return (
        importlib.resources.files("kerasformers.serving")
        .joinpath("static/index.html")
        .read_text(encoding="utf-8")
    )


async def _read_json(request, limit):
    """The body as a JSON object: 413 past `limit` bytes, 400 if it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"bad Content-Length header {length!r}")
        if int(length) > limit:
            raise ApiError(413, f"request body is {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"body is not valid JSON: {error}", param="body") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(data).__name__}", param="body")
    return data


def _ids(model, items, field, encode):
    rows = []
    for i, text in enumerate(items):
        ids = encode(text)
        where = field if len(items) == 1 else f"{field}[{i}]"
        if model.max_length and len(ids) > model.max_length:
            raise ApiError(
                422,
                f"{where} is {len(ids)} tokens; model {model.name!r} takes at most "
                f"{model.max_length}",
                param=field,
            )
        rows.append(ids)
    return rows


def create_app(
    models,
    *,
    max_batch_size=DEFAULTS["max_batch_size"],
    max_wait_ms=DEFAULTS["max_wait_ms"],
    queue_size=DEFAULTS["queue_size"],
    timeout_s=DEFAULTS["timeout_s"],
    max_body_bytes=DEFAULTS["max_body_bytes"],
    application=None,
    pool="mean",
    normalize=True,
):
    """The FastAPI app serving `models` (a model directory, a list of them, or a dict
    name -> directory; `ServedModel` objects work too).

    max_batch_size: rows per batch (1 turns batching off); max_wait_ms: how long a request
    waits for others to share its batch; queue_size: requests in the server at once (more
    get 503 + Retry-After); timeout_s: per request (504 after it; a stream gets an error
    event and ends); max_body_bytes: larger bodies get 413. application, pool, normalize:
    see `ServedModel`.

    >>> from kerasformers.serving import create_app
    >>> create_app("no/such/dir")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model directory 'no/such/dir' does not exist
    """
    _check_limits(max_batch_size, max_wait_ms, queue_size, timeout_s, max_body_bytes)
    served = _load_models(models, application, pool, normalize)
    server = Server(served, max_batch_size, max_wait_ms, queue_size, timeout_s, max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for batcher in server.batchers:  # uvicorn has answered the in-flight requests
            await batcher.stop()
        server.worker.close()

    app = FastAPI(title="kerasformers", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request, error):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(_page())

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "models": list(served),
            "in_progress": server.admitted,
            "queued": sum(len(b.pending) for b in server.batchers),
            "running": sum(b.running for b in server.batchers),
            "batches": sum(b.batches for b in server.batchers),
            **server.stats,
        }

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": server.created,
                    "owned_by": "kerasformers",
                    "model_type": m.model_type,
                    "tasks": m.tasks,
                    "max_length": m.max_length,
                }
                for m in served.values()
            ],
        }

    @app.post("/v1/tokenize")
    async def tokenize(request: Request):
        req = schemas.parse(schemas.TokenizeRequest, await _read_json(request, max_body_bytes))
        model = server.model(req.model, "tokenize")
        items = schemas.texts(req.input, "input")
        data = []
        for i, text in enumerate(items):
            ids = model.encode(text)
            data.append({"index": i, "ids": ids, "tokens": model.tokenizer.ids_to_tokens(ids)})
        return {"object": "list", "model": model.name, "data": data}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = schemas.parse(schemas.EmbeddingRequest, await _read_json(request, max_body_bytes))
        model = server.model(req.model, "embeddings")
        rows = _ids(model, schemas.texts(req.input, "input"), "input", model.encode)
        with server.admission():
            job = server.encoder.enqueue(
                Job({"rows": rows}, key=(model, "embeddings"), size=len(rows))
            )
            vectors = await server.wait(job)
        data = []
        for i, v in enumerate(vectors):
            v = np.asarray(v, "float32")
            value = (
                base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                if req.encoding_format == "base64"
                else v.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        n = sum(len(r) for r in rows)
        return {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    @app.post("/v1/fill-mask")
    async def fill_mask(request: Request):
        req = schemas.parse(schemas.FillMaskRequest, await _read_json(request, max_body_bytes))
        model = server.model(req.model, "fill-mask")
        items = schemas.texts(req.input, "input")
        rows = _ids(model, items, "input", model.masked_ids)
        for i, row in enumerate(rows):
            if model.mask_id not in row:
                where = "input" if len(rows) == 1 else f"input[{i}]"
                raise ApiError(422, f"{where} has no {model.mask_token} token", param="input")
        with server.admission():
            job = server.encoder.enqueue(
                Job({"rows": rows}, key=(model, "fill-mask", req.top_k), size=len(rows))
            )
            found = await server.wait(job)
        data = []
        for i, (row, masks) in enumerate(zip(rows, found)):
            entries = []
            for position, candidates in masks:
                entries.append(
                    {
                        "position": position,
                        "candidates": [
                            {
                                "token": model.tokenizer.id_to_token(t),
                                "token_id": t,
                                "score": p,
                                "text": _filled(model, row, position, t),
                            }
                            for t, p in candidates
                        ],
                    }
                )
            data.append({"index": i, "masks": entries})
        return {"object": "list", "model": model.name, "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = schemas.parse(schemas.CompletionRequest, await _read_json(request, max_body_bytes))
        model = server.model(req.model, "completions")
        items = schemas.texts(req.prompt, "prompt")
        if len(items) > server.completions.max_batch_size:
            raise ApiError(
                422,
                f"prompt has {len(items)} prompts; at most max_batch_size="
                f"{server.completions.max_batch_size} per request",
                param="prompt",
            )
        prompts = _ids(model, items, "prompt", model.prompt_ids)
        for i, p in enumerate(prompts):
            if model.max_position and len(p) + req.max_tokens > model.max_position:
                where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
                raise ApiError(
                    422,
                    f"max_tokens {req.max_tokens} with {where} of {len(p)} tokens exceeds the "
                    f"model's {model.max_position} positions: at most "
                    f"{max(model.max_position - len(p), 0)}",
                    param="max_tokens",
                )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(422, "stop: at most 4 non-empty strings", param="stop")
        # settings that must be equal within a batch (max_tokens may differ: each row is cut
        # to its own); a seeded sample draws per batch row, so it runs alone
        settings = (req.temperature, req.top_p, req.top_k, req.seed, req.repetition_penalty)
        key = (model, *settings)
        if req.seed is not None and req.temperature > 0:
            key = key + (uuid.uuid4().hex,)
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def choice(i, text, reason):
            return {"text": text, "index": i, "logprobs": None, "finish_reason": reason}

        def usage(generated):
            n = sum(len(p) for p in prompts)
            return {
                "prompt_tokens": n,
                "completion_tokens": generated,
                "total_tokens": n + generated,
            }

        base = {"id": cid, "object": "text_completion", "created": created, "model": model.name}
        if not req.stream:
            with server.admission():
                job = server.completions.enqueue(
                    Job({"prompts": prompts, "max_tokens": req.max_tokens}, key, len(prompts))
                )
                rows = await server.wait(job)
            choices, generated = [], 0
            for i, tokens in enumerate(rows):
                d = Detokenizer(model.tokenizer, model.eos_id, stop, limit=req.max_tokens)
                text = "".join(d.push(t) for t in tokens[: req.max_tokens])
                text += "" if d.done else d.flush()
                generated += d.count
                choices.append(choice(i, text, d.finish_reason or "length"))
            return {**base, "choices": choices, "usage": usage(generated)}

        server.take()  # released when the client goes away or the generation ends
        queue = asyncio.Queue()
        detoks = [
            Detokenizer(model.tokenizer, model.eos_id, stop, limit=req.max_tokens) for _ in prompts
        ]
        payload = {"prompts": prompts, "max_tokens": req.max_tokens, "done": False}

        def push(j, token):
            d = detoks[j]
            if d.done:
                return
            piece = d.push(token)
            if piece:
                queue.put_nowait({**base, "choices": [choice(j, piece, None)]})
            if d.done:
                queue.put_nowait({**base, "choices": [choice(j, "", d.finish_reason)]})
                if all(x.done for x in detoks):
                    payload["done"] = True
                    queue.put_nowait(None)

        def close():
            for j, d in enumerate(detoks):
                if not d.done:
                    d.finish_reason = "length"
                    piece = d.flush()
                    queue.put_nowait({**base, "choices": [choice(j, piece, "length")]})
            if not payload["done"]:
                payload["done"] = True
                queue.put_nowait(None)

        def fail(error):
            payload["done"] = True
            queue.put_nowait(error)

        def release():  # once: when the client has gone or the generation has ended
            if not payload.get("released"):
                payload["released"] = True
                server.admitted -= 1

        payload.update(push=push, close=close, fail=fail, release=release)
        try:
            job = server.streams.enqueue(Job(payload, key, len(prompts)))
        except BaseException:
            release()
            raise

        async def events():
            deadline = time.monotonic() + server.timeout_s
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(
                            queue.get(), max(deadline - time.monotonic(), 0)
                        )
                    except asyncio.TimeoutError:
                        server.stats["timeouts"] += 1
                        error = ApiError(504, f"request timed out after {server.timeout_s:g} s")
                        yield f"data: {json.dumps(error.body())}\n\n"
                        break
                    if isinstance(item, BaseException):
                        yield f"data: {json.dumps(ApiError(500, str(item)).body())}\n\n"
                        break
                    if item is None:
                        yield "data: [DONE]\n\n"
                        break
                    yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
            finally:
                job.cancelled = True  # a client that went away stops its rows' generation
                release()

        def failed(future):
            if not future.cancelled() and future.exception() is not None:
                queue.put_nowait(future.exception())

        job.future.add_done_callback(failed)
        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


def _filled(model, row, position, token):
    """The text with one [MASK] replaced by `token` (other masks stay)."""
    ids = list(row)
    ids[position] = token
    specials = {
        getattr(model.tokenizer, "token_start", None),
        getattr(model.tokenizer, "token_end", None),
    }
    tokens = [t for t in model.tokenizer.ids_to_tokens(ids) if t not in specials]
    return model.tokenizer.decode(model.tokenizer.tokens_to_ids(tokens))
