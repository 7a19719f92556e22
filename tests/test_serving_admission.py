"""Admission through HTTP: past CHARLM_MAX_STREAMS a request waits in a bounded queue for a slot (first come first
served), and only then gets a 429; a full queue answers 429 at once; a client leaving frees its slot at once, and a
waiting client leaving leaves the queue. The batcher's own tests (test_serving_batcher.py) drive the same directly."""
import json
import socket
import threading
import time

import pytest
from werkzeug.serving import make_server

from serving.app import create_app
from serving_helpers import assert_error, metric_value, wait_until

MODEL = 'model_name="charlm"'
LONG = {"model": "charlm", "prompt": "A", "max_tokens": 8192, "stream": True}  # one character a call: many seconds


@pytest.fixture(scope="module")
def app(exported_model):
    """Two slots, a queue of one request for at most a second; one character per backend call, so a stream of
    8,192 characters runs for many seconds while a test acts."""
    return create_app({"model_dir": exported_model[0], "first_chunk": 1, "max_chunk": 1, "max_streams": 2,
                       "max_queued": 1, "max_queue_wait_s": 1.0, "retry_after_s": 2, "disconnect_check_s": 0.05})


@pytest.fixture(scope="module")
def server(app):
    """The same app on a real (threaded werkzeug) server, for a client that hangs up."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_port
    httpd.shutdown()
    thread.join()


class Metrics:
    """The app's admission series, as a scrape shows them."""

    def __init__(self, app):
        self.app = app
        self.before = self.scrape()

    def scrape(self) -> str:
        return self.app.extensions["charlm.metrics"].exposition().decode()

    def depth(self) -> float:
        return metric_value(self.scrape(), "charlm_admission_queue_depth", MODEL)

    def waits(self, outcome: str, what: str = "count") -> float:
        labels = f'{MODEL},outcome="{outcome}"'
        name = f"charlm_admission_wait_seconds_{what}"
        return (metric_value(self.scrape(), name, labels) or 0) - (metric_value(self.before, name, labels) or 0)


class Holders:
    """Streaming requests that take every slot, open until closed (the Flask test client: a close is what the WSGI
    server does when the client's socket is gone)."""

    def __init__(self, app, count=2):
        client = app.test_client()
        self.responses = []
        for _ in range(count):
            response = client.post("/v1/completions", json=LONG, buffered=False)
            assert response.status_code == 200
            self.responses.append(response)

    def close(self, i=None):
        for response in self.responses if i is None else [self.responses[i]]:
            response.close()


class Request:
    """A plain completion in its own thread (a client's), with when it was answered."""

    def __init__(self, app, **body):
        self.response, self.answered_at = None, None
        body = {"model": "charlm", "prompt": "A", "max_tokens": 5, **body}
        self.thread = threading.Thread(target=self._post, args=(app.test_client(), body), daemon=True)
        self.thread.start()

    def _post(self, client, body):
        self.response = client.post("/v1/completions", json=body)
        self.answered_at = time.perf_counter()

    def done(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


@pytest.fixture
def holders(app):
    batcher = app.extensions["charlm.batcher"]
    assert wait_until(lambda: batcher.count() == 0 and batcher.waiting() == 0)
    holding = Holders(app)
    yield holding
    holding.close()
    assert wait_until(lambda: batcher.count() == 0)


def test_a_request_past_the_limit_waits_and_succeeds_when_a_slot_frees(app, holders):
    metrics = Metrics(app)
    waiting = Request(app)
    assert wait_until(lambda: metrics.depth() == 1)
    assert not waiting.done(timeout=0.3)  # not a 429: it waits
    freed_at = time.perf_counter()
    holders.close(0)  # that client hangs up: its slot frees now, not at the next chunk
    assert waiting.done(timeout=5)
    assert waiting.response.status_code == 200, waiting.response.get_data(as_text=True)
    assert len(waiting.response.get_json()["choices"][0]["text"]) == 5
    print(f"answered {1000 * (waiting.answered_at - freed_at):.1f} ms after a slot freed")
    assert metrics.depth() == 0
    assert metrics.waits("admitted") == 1 and metrics.waits("admitted", "sum") >= 0.3
    assert metrics.waits("timeout") == 0 and metrics.waits("queue_full") == 0


def test_a_full_queue_is_429_at_once_and_a_wait_that_runs_out_is_429(app, holders):
    metrics = Metrics(app)
    waiting = Request(app)
    assert wait_until(lambda: metrics.depth() == 1)
    client = app.test_client()
    started = time.perf_counter()
    refused = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5})
    took = time.perf_counter() - started
    error = assert_error(refused, 429, code="queue_full")
    assert error["type"] == "rate_limit_error" and refused.headers["Retry-After"] == "2" and took < 0.5
    assert "waiting" in error["message"]
    assert waiting.done(timeout=5)
    error = assert_error(waiting.response, 429, code="too_many_streams")
    assert waiting.response.headers["Retry-After"] == "2" and "no slot freed for 1 s" in error["message"]
    assert metrics.depth() == 0
    assert metrics.waits("queue_full") == 1 and metrics.waits("timeout") == 1
    assert metrics.waits("timeout", "sum") >= 1.0


def test_a_streamed_request_waits_too(app, holders):
    """The wait happens before the 200: a streamed request that gets a slot streams as usual."""
    client = app.test_client()
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(r=client.post(
        "/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 20, "stream": True})), daemon=True)
    thread.start()
    assert wait_until(lambda: app.extensions["charlm.batcher"].waiting() == 1)
    holders.close(1)
    thread.join(5)
    body = answer["r"].get_data(as_text=True)
    assert answer["r"].status_code == 200 and body.endswith("data: [DONE]\n\n")


def test_a_waiting_client_that_hangs_up_leaves_the_queue(app, server, holders):
    metrics = Metrics(app)
    batcher = app.extensions["charlm.batcher"]
    body = json.dumps({"model": "charlm", "prompt": "A", "max_tokens": 5}).encode()
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(lambda: batcher.waiting() == 1)
    left = wait_until(lambda: metrics.waits("gone") == 1, timeout=0.9)  # before its wait (1 s) would run out
    assert left and batcher.waiting() == 0 and metrics.depth() == 0 and metrics.waits("timeout") == 0
    # Its turn is not kept: a slot that frees goes to the next request.
    holders.close(0)
    assert app.test_client().post("/v1/completions", json={"model": "charlm", "prompt": "A",
                                                           "max_tokens": 5}).status_code == 200
