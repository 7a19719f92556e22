"""SSE keep-alive: a stream waiting longer than CHARLM_SSE_KEEPALIVE_S for its next event sends an SSE comment
(": keep-alive"), which clients ignore, so proxies do not cut idle streams; the idle timeout still ends a
stalled one."""
import threading
import time

import httpx2
import pytest
from openai import OpenAI

from serving.app import create_app
from serving.generation import KEEP_ALIVE
from serving_helpers import sse_payloads, wait_until

BODY = {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 12, "seed": 5, "temperature": 0.8}


class SlowBackend:
    """The real backend, each call `delay` seconds late (or held on `gate` once `hold_after` calls are done)."""

    def __init__(self, backend, delay=0.0, hold_after=None):
        self.backend, self.delay, self.hold_after, self.calls = backend, delay, hold_after, 0
        self.gate = threading.Event()

    def call(self, *args, **kwargs):
        self.calls += 1
        if self.hold_after is not None and self.calls > self.hold_after:
            self.gate.wait(30)
        time.sleep(self.delay)
        return self.backend.call(*args, **kwargs)


def make_app(exported_model, **settings):
    return create_app({"model_dir": exported_model[0], "first_chunk": 4, "max_chunk": 4, **settings})


@pytest.fixture(scope="module")
def app(exported_model):
    """Keep-alive every 50 ms, calls 150 ms apart: every wait between two chunks sends comments."""
    app = make_app(exported_model, sse_keepalive_s=0.05)
    batcher = app.extensions["charlm.batcher"]
    batcher.backend = SlowBackend(batcher.backend, delay=0.15)
    return app


def texts(body: str) -> str:
    return "".join(p["choices"][0]["text"] for p in sse_payloads(body) if p != "[DONE]" and p["choices"])


def test_a_slow_stream_carries_comments_and_the_same_text(app):
    client = app.test_client()
    plain = client.post("/v1/completions", json=BODY).get_json()["choices"][0]["text"]
    body = client.post("/v1/completions", json={**BODY, "stream": True}).get_data(as_text=True)
    assert body.count(KEEP_ALIVE) >= 2  # 3 calls of 4 characters, each 150 ms: waits of 150 ms, comments every 50
    assert texts(body) == plain and len(plain) == 12
    assert sse_payloads(body)[-1] == "[DONE]"
    # Comments come only between events, each a whole SSE block: every block is a comment or a data event.
    assert all(block.startswith((": keep-alive", "data: ")) for block in body.split("\n\n") if block)
    native = client.post("/v1/generate", json={"prompt": "KING:", "max_chars": 8, "seed": 2, "stream": True})
    assert KEEP_ALIVE in native.get_data(as_text=True)
    assert "".join(p["text"] for p in sse_payloads(native.get_data(as_text=True)) if p != "[DONE]") == \
        client.post("/v1/generate", json={"prompt": "KING:", "max_chars": 8, "seed": 2}).get_json()["text"]


def test_the_openai_client_reads_through_the_comments(app):
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://gateway")
    client = OpenAI(base_url="http://gateway/v1", api_key="unused", http_client=http, max_retries=0)
    raw = app.test_client().post("/v1/completions", json={**BODY, "stream": True}).get_data(as_text=True)
    assert KEEP_ALIVE in raw
    stream = client.completions.create(**BODY, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == texts(raw) and len(texts(raw)) == 12


def test_zero_turns_comments_off(exported_model):
    app = make_app(exported_model, sse_keepalive_s=0)
    batcher = app.extensions["charlm.batcher"]
    batcher.backend = SlowBackend(batcher.backend, delay=0.15)
    body = app.test_client().post("/v1/completions", json={**BODY, "stream": True}).get_data(as_text=True)
    assert all(block.startswith("data: ") for block in body.split("\n\n") if block)  # no comment at all
    assert len(texts(body)) == 12


def test_the_idle_timeout_still_ends_a_stalled_stream(exported_model):
    app = make_app(exported_model, sse_keepalive_s=0.05, stream_idle_timeout_s=0.5)
    batcher = app.extensions["charlm.batcher"]
    backend = batcher.backend = SlowBackend(batcher.backend, hold_after=1)  # the second call never comes back
    try:
        started = time.perf_counter()
        body = app.test_client().post("/v1/completions", json={**BODY, "stream": True}).get_data(as_text=True)
        waited = time.perf_counter() - started
    finally:
        backend.gate.set()
    payloads = sse_payloads(body)
    assert payloads[0]["choices"][0]["text"] and payloads[-1]["error"]["code"] == "generation_stalled"
    assert body.count(KEEP_ALIVE) >= 5  # ~0.5 s of waiting, a comment every 50 ms
    assert 0.5 <= waited < 10
    assert wait_until(lambda: batcher.count() == 0)
