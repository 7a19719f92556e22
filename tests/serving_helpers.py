"""Helpers shared by the serving tests (not tests themselves)."""
from __future__ import annotations

import json
import time


def sse_payloads(body: str) -> list:
    """The `data:` payloads of a server-sent event stream, JSON-decoded ("[DONE]" kept as the string)."""
    payloads = []
    for event in body.split("\n\n"):
        if event.startswith("data: "):
            data = event[len("data: "):]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02):
    """Poll until predicate() is truthy; returns its value, or the last one after `timeout` (tests assert on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """A sample's value from Prometheus text exposition, e.g. metric_value(t, "charlm_active_streams")."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return None


_apps = {}


def shared_app(model_dir):
    """One gateway app per model directory for the whole session: loading a model costs seconds. Tests that
    use it must not change it (they make their own app for that)."""
    from serving.app import create_app

    key = str(model_dir)
    if key not in _apps:
        _apps[key] = create_app({"model_dir": model_dir})
    return _apps[key]


def assert_error(response, status, param=None, code=None) -> dict:
    """The response is `status` with OpenAI's error envelope (and the given param/code); returns the error."""
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def post_ok(client, path: str, **body) -> dict:
    """POST a JSON body with a Flask test client; the reply must be a 200: its JSON."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()
