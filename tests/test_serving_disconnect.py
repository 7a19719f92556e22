"""A non-streaming request whose client hangs up stops generating (serving/disconnect.py), on a real threaded
werkzeug server reached through a raw socket; test_serving_gunicorn.py does the same under gunicorn gthread."""
import json
import socket
import threading

import pytest
import requests
from werkzeug.serving import make_server

from serving.app import create_app
from serving.disconnect import client_gone
from serving_helpers import metric_value, wait_until


@pytest.fixture(scope="module")
def server(exported_model):
    """Chunks of 2 characters: 8,192 of them take many seconds, so the test can hang up while they run."""
    app = create_app({"model_dir": exported_model[0], "first_chunk": 2, "max_chunk": 2, "disconnect_check_s": 0.05})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield app, httpd.server_port
    httpd.shutdown()
    thread.join()


def send_and_hang_up(port, path, body, wait_for):
    """POST `body` without reading the reply, and close the socket once `wait_for()` holds."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        assert wait_until(wait_for, timeout=30)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "charlm", "prompt": "A", "max_tokens": 8192}),
    ("/v1/completions", {"model": "charlm", "prompt": "A", "max_tokens": 8192, "n": 2, "logprobs": 1}),
    ("/v1/generate", {"prompt": "A", "max_chars": 8192}),
])
def test_a_plain_request_whose_client_hangs_up_stops(server, path, body):
    app, port = server
    batcher, metrics = app.extensions["charlm.batcher"], app.extensions["charlm.metrics"]
    streams = body.get("n", 1)
    before = metrics.registry.get_sample_value("charlm_cancelled_streams_total") or 0
    chars_before = metrics.registry.get_sample_value("charlm_generated_chars_total") or 0
    send_and_hang_up(port, path, body, lambda: batcher.count() == streams)
    # The rows leave the batch at the next chunk, long before 8,192 characters.
    assert wait_until(lambda: batcher.count() == 0, timeout=10)
    exposition = metrics.exposition().decode()
    assert metric_value(exposition, "charlm_active_streams") == 0
    assert metric_value(exposition, "charlm_cancelled_streams_total") == before + streams
    assert metric_value(exposition, "charlm_generated_chars_total") - chars_before < 8192 * streams / 2


def test_a_client_that_waits_gets_its_reply(server):
    """The watching never mistakes a live client (a kept-alive connection, one request after another) for a gone one."""
    _, port = server
    with requests.Session() as session:
        for _ in range(2):
            reply = session.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                                 json={"model": "charlm", "prompt": "A", "max_tokens": 400, "seed": 1}).json()
            assert len(reply["choices"][0]["text"]) == 400


def test_client_gone_reads_nothing():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not client_gone(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined next request: alive, and left in place
        assert not client_gone(ours) and ours.recv(100) == b"GET / HTTP/1.1\r\n"
        theirs.close()
        assert client_gone(ours)
