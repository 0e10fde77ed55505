"""The HTTP API in process (httpx's ASGI transport): answers equal the library's own results,
batched answers equal single-request answers, and bad requests get a clear error."""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
from keras import ops

from kerasformers import build_transformer_model
from kerasformers.generation import generate
from kerasformers.serving import ServedModel, create_app
from kerasformers.tokenizers import from_pretrained


@pytest.fixture(scope="module")
def served(model_dirs):
    return {name: ServedModel(path) for name, path in model_dirs.items()}


@pytest.fixture(scope="module")
def app(served):
    return create_app(served, max_batch_size=8, max_wait_ms=50)


def call(app, requests):
    """Send (method, path, json) requests concurrently; the responses in order."""

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *(
                    client.request(method, path, **({"json": body} if body is not None else {}))
                    if not isinstance(body, bytes)
                    else client.request(method, path, content=body)
                    for method, path, body in requests
                )
            )

    return asyncio.run(main())


def post(app, path, body):
    return call(app, [("POST", path, body)])[0]


SENTENCES = ["今天天气很好", "我喜欢吃苹果", "北京是中国的首都", "你好"]


def forward(model, ids):
    """The Keras model called directly on one unpadded row (no compiled predict)."""
    ids = np.array([ids])
    return ops.convert_to_numpy(model([ids, np.zeros_like(ids)]))[0]


def test_models_and_health(app):
    models, health = call(app, [("GET", "/v1/models", None), ("GET", "/health", None)])
    assert models.status_code == 200
    data = {m["id"]: m for m in models.json()["data"]}
    assert data["bert"]["tasks"] == ["tokenize", "embeddings", "fill-mask"]
    assert data["gpt2"]["tasks"] == ["tokenize", "completions"]
    assert all(m["object"] == "model" for m in data.values())
    assert health.json()["status"] == "ok"
    page = call(app, [("GET", "/", None)])[0]
    assert page.status_code == 200 and "/v1/completions" in page.text


def test_embeddings_equal_the_model_and_batching_changes_nothing(app, model_dirs):
    # the reference: the model built directly, one unpadded sentence at a time, mean-pooled
    bert = build_transformer_model(checkpoint_path=model_dirs["bert"])
    tokenizer = from_pretrained(model_dirs["bert"])
    expected = []
    for text in SENTENCES:
        v = forward(bert, tokenizer.encode(text)[0]).mean(0)
        expected.append(v / np.linalg.norm(v))
    batched = call(
        app, [("POST", "/v1/embeddings", {"input": t, "model": "bert"}) for t in SENTENCES]
    )
    alone = [post(app, "/v1/embeddings", {"input": t, "model": "bert"}) for t in SENTENCES]
    health = call(app, [("GET", "/health", None)])[0].json()
    assert health["batches"] < health["requests"]  # the concurrent four shared a batch
    for r_batched, r_alone, want in zip(batched, alone, expected):
        assert r_batched.status_code == r_alone.status_code == 200
        body = r_batched.json()
        assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
        got = np.array(body["data"][0]["embedding"])
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got, r_alone.json()["data"][0]["embedding"], atol=1e-6)
    # a list input is one request; base64 is little-endian float32, as OpenAI's
    listed = post(
        app, "/v1/embeddings", {"input": SENTENCES, "model": "bert", "encoding_format": "base64"}
    ).json()
    assert [d["index"] for d in listed["data"]] == [0, 1, 2, 3]
    assert listed["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(t)[0]) for t in SENTENCES)
    for d, want in zip(listed["data"], expected):
        got = np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fill_mask_equals_the_mlm_head(app, model_dirs):
    bert = build_transformer_model(checkpoint_path=model_dirs["bert"], with_mlm=True)
    tokenizer = from_pretrained(model_dirs["bert"])
    r = post(app, "/v1/fill-mask", {"input": "今天天气很[MASK]。", "top_k": 3, "model": "bert"})
    assert r.status_code == 200
    masks = r.json()["data"][0]["masks"]
    ids = tokenizer.encode("今天天气很好。")[0]
    ids[6] = tokenizer.token_to_id("[MASK]")
    probs = forward(bert, ids)[6]
    best = np.argsort(-probs, kind="stable")[:3]
    assert [m["position"] for m in masks] == [6]
    candidates = masks[0]["candidates"]
    assert [c["token_id"] for c in candidates] == [int(t) for t in best]
    np.testing.assert_allclose([c["score"] for c in candidates], probs[best], atol=1e-6)
    first = candidates[0]
    assert first["text"] == "今天天气很" + tokenizer.decode([int(best[0])]) + "。"


def test_greedy_completions_are_token_identical_batched_or_alone(app, model_dirs, served):
    gpt2 = served["gpt2"]
    prompts = ["Hello world", "The capital of France is", "A", "Once upon a time, there"]
    lengths = [4, 3, 4, 2]  # compiled loops: 4 and 2 new tokens
    bodies = [
        {"model": "gpt2", "prompt": p, "max_tokens": n, "temperature": 0}
        for p, n in zip(prompts, lengths)
    ]
    batched = call(app, [("POST", "/v1/completions", b) for b in bodies])
    for p, n, r in zip(prompts, lengths, batched):
        assert r.status_code == 200, r.text
        ids = gpt2.prompt_ids(p)
        want = [int(t) for t in generate(gpt2.lm, [ids], max_new_tokens=n)[0]]
        body = r.json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        choice = body["choices"][0]
        assert choice["text"] == gpt2.tokenizer.decode(want)
        assert choice["finish_reason"] == "length"
        assert body["usage"] == {
            "prompt_tokens": len(ids),
            "completion_tokens": n,
            "total_tokens": len(ids) + n,
        }
    # several prompts in one request: one choice each, in order, the same answers
    listed = post(app, "/v1/completions", {**bodies[0], "prompt": prompts}).json()["choices"]
    assert [c["index"] for c in listed] == [0, 1, 2, 3]
    for i in (0, 2):  # the prompts asked for 4 tokens above too
        assert listed[i]["text"] == batched[i].json()["choices"][0]["text"]
    # the streamed chunks concatenate to the same text
    stream = post(app, "/v1/completions", {**bodies[1], "stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [e[len("data: ") :] for e in stream.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert (
        "".join(c["choices"][0]["text"] for c in chunks) == batched[1].json()["choices"][0]["text"]
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_cut_the_text(app, served):
    body = {"model": "gpt2", "prompt": "Hello world", "max_tokens": 4, "temperature": 0}
    full = post(app, "/v1/completions", body).json()["choices"][0]["text"]
    stop = full[3:5]
    cut = post(app, "/v1/completions", {**body, "stop": stop}).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("/v1/embeddings", {"model": "bert"}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": 5}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": ["a", 3]}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": ""}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": []}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": "长" * 100}, 422, "input"),
        ("/v1/embeddings", {"model": "bert", "input": "a", "dimensions": 8}, 422, "dimensions"),
        ("/v1/embeddings", {"model": "nope", "input": "a"}, 400, "model"),
        ("/v1/embeddings", {"input": "a"}, 400, "model"),  # two models served: which?
        ("/v1/embeddings", {"model": "gpt2", "input": "a"}, 400, "model"),
        ("/v1/embeddings", [1, 2], 400, "body"),
        ("/v1/embeddings", b"{not json", 400, "body"),
        ("/v1/fill-mask", {"model": "bert", "input": "no mask here"}, 422, "input"),
        ("/v1/fill-mask", {"model": "bert", "input": "[MASK]", "top_k": 0}, 422, "top_k"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "max_tokens": "5"}, 422, "max_tokens"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
        (
            "/v1/completions",
            {"model": "gpt2", "prompt": "a", "max_tokens": 5000},
            422,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "temperature": 3}, 422, "temperature"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "top_p": 0}, 422, "top_p"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "n": 2}, 422, "n"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "logprobs": 2}, 422, "logprobs"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "stream": "yes"}, 422, "stream"),
        ("/v1/completions", {"model": "gpt2", "prompt": "a", "stop": ""}, 422, "stop"),
        ("/v1/completions", {"model": "bert", "prompt": "a"}, 400, "model"),
        ("/v1/completions", {"model": "gpt2", "prompt": ["a"] * 9}, 422, "prompt"),
        ("/v1/tokenize", {"model": "bert", "text": "a"}, 422, "input"),
    ],
)
def test_bad_requests_name_the_field(app, path, body, status, param):
    before = call(app, [("GET", "/health", None)])[0].json()
    r = post(app, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert param in error["message"] or param == "body"
    after = call(app, [("GET", "/health", None)])[0].json()
    assert after["batches"] == before["batches"]  # nothing ran


def test_body_limit_busy_queue_and_timeout(served):
    small = create_app(served, max_body_bytes=100, queue_size=1, max_wait_ms=300, timeout_s=30)
    r = post(small, "/v1/embeddings", {"model": "bert", "input": "长" * 200})
    assert r.status_code == 413 and "100" in r.json()["error"]["message"]
    first, second = call(
        small,
        [
            ("POST", "/v1/embeddings", {"model": "bert", "input": "你好"}),
            ("POST", "/v1/embeddings", {"model": "bert", "input": "再见"}),
        ],
    )
    assert first.status_code == 200  # the first waits 300 ms for company: the queue is full
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    slow = create_app(served, max_wait_ms=500, timeout_s=0.05)
    r = post(slow, "/v1/embeddings", {"model": "bert", "input": "你好"})
    assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="max_batch_size"):
        create_app(served, max_batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        create_app(served, batch_size=4)
