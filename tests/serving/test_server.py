"""The real server (uvicorn in a subprocess, loopback): streaming over HTTP, a client that goes
away, graceful shutdown, and the loopback bind."""

import json
import signal
import time

import httpx

from tests.serving.conftest import get_json


def events(response):
    """The `data:` payloads of a server-sent-event response, as they arrive."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_stream_arrives_token_by_token_and_equals_the_full_answer(server):
    body = {"model": "gpt2", "prompt": "Hello world", "max_tokens": 12, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        full = client.post("/v1/completions", json=body).json()["choices"][0]
        pieces, arrivals = [], []
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for data in events(r):
                arrivals.append(time.monotonic())
                if data == "[DONE]":
                    break
                pieces.append(json.loads(data)["choices"][0])
    assert "".join(p["text"] for p in pieces) == full["text"]
    assert pieces[-1]["finish_reason"] == full["finish_reason"] == "length"
    assert len([p for p in pieces if p["text"]]) > 1  # several pieces, not one at the end


def test_client_disconnect_stops_its_generation(server):
    body = {"model": "gpt2", "prompt": "Hi", "max_tokens": 1000, "temperature": 0, "stream": True}
    before = get_json(server.url + "/health")["stream_steps"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            for i, _ in enumerate(events(r)):
                if i == 3:
                    break  # leave: the response is closed with the connection
    deadline = time.monotonic() + 30
    while True:
        health = get_json(server.url + "/health")
        if health["running"] == 0 and health["in_progress"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    steps = health["stream_steps"] - before
    assert 3 <= steps < 1000, steps
    time.sleep(0.5)
    assert get_json(server.url + "/health")["stream_steps"] - before == steps  # and stays so


def test_binds_loopback_only(server):
    # /proc/net/tcp lists listening sockets (state 0A) as hex ADDR:PORT; 0100007F = 127.0.0.1
    port = "%04X" % server.port
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and local.endswith(":" + port):
                    listening.append(local.split(":")[0])
    assert listening == ["0100007F"]


def test_graceful_shutdown_finishes_the_stream_in_flight(server):
    # the last test here: it stops the shared server (the fixture starts another if needed)
    # 64 tokens: well within serve's graceful_timeout_s (30 s) even on a loaded machine
    body = {"model": "gpt2", "prompt": "Hello", "max_tokens": 64, "temperature": 0}
    pieces = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                for data in events(r):
                    if not pieces:
                        server.proc.send_signal(signal.SIGTERM)  # mid-stream
                    pieces.append(data)
    finally:
        code, output = server.stop()
    assert pieces[-1] == "[DONE]", output
    last = json.loads(pieces[-2])["choices"][0]
    assert last["finish_reason"] == "length"
    assert sum(len(json.loads(p)["choices"][0]["text"]) > 0 for p in pieces[:-1]) >= 20
    # uvicorn exits by re-raising the signal once the in-flight requests are answered
    assert code == -signal.SIGTERM and "Traceback" not in output, output
