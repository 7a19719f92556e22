"""End to end: gunicorn (serving/gunicorn.conf.py, gthread) serving the session's tiny model on 127.0.0.1,
driven by the official `openai` client and by a raw socket that hangs up mid-stream. Spawned once."""
import runpy
import signal
import socket
from pathlib import Path

import pytest
import requests

from serving.launch import GunicornGateway
from serving_helpers import metric_value, wait_until

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key"


def test_configuration(monkeypatch, tmp_path):
    """Read as gunicorn reads it: threads for every stream, no preloading (TensorFlow and gRPC after the fork)."""
    from gunicorn.config import Config

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("CHARLM_MAX_STREAMS", "10")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    config = Config()
    for name, value in runpy.run_path(str(ROOT / "serving/gunicorn.conf.py")).items():
        if name in config.settings:
            config.set(name, value)
    assert config.worker_class_str == "gthread" and config.workers == 1 and config.threads == 26
    assert not config.preload_app and config.graceful_timeout >= 10 and config.control_socket_disable
    (tmp_path / "counter_1.db").write_bytes(b"")
    config.on_starting(None)
    assert not list(tmp_path.iterdir())  # a previous run's values are wiped at start


@pytest.fixture(scope="module")
def gateway(exported_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {"CHARLM_API_KEYS": API_KEY, "CHARLM_MAX_STREAMS": "8", "CHARLM_FIRST_CHUNK": "4",
           "CHARLM_MAX_CHUNK": "8", "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Stopped also when start-up fails: never a server (or an orphaned worker) left behind.
    with GunicornGateway(exported_model[0], log, env, ready_timeout_s=180) as gateway:
        yield gateway


@pytest.fixture
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.mark.slow
def test_openai_client_plain_and_streaming(client):
    completion = client.completions.create(model="charlm", prompt="ROMEO:\n", max_tokens=200, seed=12,
                                           temperature=0.8)
    text = completion.choices[0].text
    assert len(text) == 200 and completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 200
    pieces = []
    stream = client.completions.create(model="charlm", prompt="ROMEO:\n", max_tokens=200, seed=12,
                                       temperature=0.8, stream=True)
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
    assert "".join(pieces) == text and len(pieces) > 10
    assert [m.id for m in client.models.list()] == ["charlm"]


@pytest.mark.slow
def test_openai_client_sees_errors(client, gateway):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="charlm", prompt="A", temperature=0)
    assert raised.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="A")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0).models.list()


def metrics(url) -> str:
    return requests.get(url + "/metrics", timeout=10).text


@pytest.mark.slow
def test_hanging_up_mid_stream_stops_the_generation(gateway):
    url = gateway.url
    before = metric_value(metrics(url), "charlm_cancelled_streams_total") or 0
    body = b'{"model": "charlm", "prompt": "A", "max_tokens": 8192, "stream": true}'
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"data: {" not in received:
            received += s.recv(4096)
        assert b" 200 " in received.split(b"\r\n", 1)[0]
    # Multiprocess metrics (PROMETHEUS_MULTIPROC_DIR, set by gunicorn.conf.py) are what this reads.
    assert wait_until(lambda: metric_value(metrics(url), "charlm_active_streams") == 0, timeout=30)
    scraped = metrics(url)
    assert metric_value(scraped, "charlm_cancelled_streams_total") == before + 1
    assert metric_value(scraped, "charlm_time_to_first_char_seconds_count", 'endpoint="/v1/completions"') >= 1


@pytest.mark.slow
def test_sigterm_lets_a_running_stream_finish(gateway):
    """Last in this module: it stops the server. graceful_timeout gives streams in flight time to end."""
    process, url = gateway.process, gateway.url
    response = requests.post(url + "/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 1000,
                                                            "stream": True, "seed": 1},
                             headers={"Authorization": f"Bearer {API_KEY}"}, stream=True, timeout=60)
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: {")
    process.send_signal(signal.SIGTERM)
    rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert process.wait(timeout=60) == 0, gateway.log.read_text()
