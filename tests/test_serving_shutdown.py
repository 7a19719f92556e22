"""SIGTERM under load, under real gunicorn (serving/gunicorn.conf.py, gthread) on 127.0.0.1: 50 streams running, then
SIGTERM to the master. Every stream ends with [DONE] after its full length or with an error event in OpenAI's
envelope (server_shutting_down: it would have outlasted CHARLM_SHUTDOWN_GRACE_S), never a cut connection; nothing new
is answered 200 after the signal; the worker exits by itself and the master with 0. Its own gateway, stopped by the
test itself."""
import http.client
import json
import signal
import threading
import time

import pytest
import requests

from serving.launch import GunicornGateway
from serving_helpers import wait_until

STREAMS = 50
GRACE_S = 5.0  # CHARLM_SHUTDOWN_GRACE_S here; gunicorn's graceful_timeout stays 30 s
GRACEFUL_TIMEOUT_S = 30
# At ~340 characters a second per stream (50 streams, chunks of 4, 2 cores), the shorter ones end in 1-6 s, so most
# end within the grace, and 8,192 characters take ~20 s, far past it.
SHORT = [300 + 1700 * i // (STREAMS // 2 - 1) for i in range(STREAMS // 2)]
LENGTHS = [n for pair in zip(SHORT, [8192] * len(SHORT)) for n in pair]


class StreamClient(threading.Thread):
    """One streaming completion over its own connection, read to its end: its payloads, how it ended, and when."""

    def __init__(self, port: int, max_tokens: int):
        super().__init__(daemon=True)
        self.port, self.max_tokens = port, max_tokens
        self.status, self.payloads, self.text, self.failure = None, [], "", None
        self.first = threading.Event()
        self.ended_at = None

    def run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            body = {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": self.max_tokens, "stream": True, "seed": 1}
            connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            self.status = response.status
            while True:
                line = response.readline()  # (http.client undoes the chunked encoding: a cut one raises)
                if not line:
                    break
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: "):].strip().decode()
                payload = data if data == "[DONE]" else json.loads(data)
                self.payloads.append(payload)
                if isinstance(payload, dict) and "choices" in payload:
                    self.text += payload["choices"][0]["text"]
                self.first.set()
        except Exception as e:  # a connection cut without an end: what must never happen
            self.failure = f"{type(e).__name__}: {e}"
        finally:
            self.ended_at = time.monotonic()
            self.first.set()
            connection.close()

    def outcome(self) -> str:
        """"done" ([DONE] after the full length), "error" (the shutdown's error event, last), or what went wrong."""
        if self.failure or self.status != 200 or not self.payloads:
            return f"broken: status {self.status}, {self.failure or 'no events'}"
        last = self.payloads[-1]
        if last == "[DONE]":
            return "done" if len(self.text) == self.max_tokens else f"short: {len(self.text)} of {self.max_tokens}"
        error = last.get("error") if isinstance(last, dict) else None
        if error and set(error) == {"message", "type", "param", "code"} and error["code"] == "server_shutting_down" \
                and error["type"] == "server_error" and len(self.text) < self.max_tokens:
            return "error"
        return f"ended with {last!r}"


def attempt(make_request) -> tuple[bool, str]:
    """(answered 200, what came back: a status and error code, or the exception: refused, reset, never answered)."""
    try:
        response = make_request()
    except requests.RequestException as e:
        return False, type(e).__name__
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = response.text[:100]
    return response.status_code == 200, f"{response.status_code} {code}"


@pytest.mark.slow
def test_sigterm_under_load_ends_every_stream_cleanly_and_exits_0(exported_model, tmp_path):
    log = tmp_path / "gunicorn.log"
    env = {"CHARLM_FIRST_CHUNK": "1", "CHARLM_MAX_CHUNK": "4", "CHARLM_SHUTDOWN_GRACE_S": str(GRACE_S),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    gateway = GunicornGateway(exported_model[0], log, env, ready_timeout_s=180, stop_timeout_s=GRACEFUL_TIMEOUT_S + 10)
    try:
        gateway.start()
        clients = [StreamClient(gateway.port, n) for n in LENGTHS]
        for client in clients:
            client.start()
        assert all(client.first.wait(60) for client in clients)
        assert all(client.status == 200 and client.ended_at is None for client in clients), \
            [client.outcome() for client in clients if client.ended_at is not None]  # every one mid-stream
        kept_alive = requests.Session()  # a connection gunicorn keeps open after its reply
        assert kept_alive.get(gateway.url + "/healthz", timeout=10).status_code == 200

        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "shutting down:" in log.read_text(), timeout=10), log.read_text()
        body = {"model": "charlm", "prompt": "A", "max_tokens": 5}
        # A new connection is not served (the master closed its socket, the worker accepts nothing more); a request
        # on a kept-alive one, which gthread still reads for a moment, is not admitted (503 server_shutting_down).
        on_kept_alive = attempt(lambda: kept_alive.post(gateway.url + "/v1/completions", json=body, timeout=3))
        new_connection = attempt(lambda: requests.post(gateway.url + "/v1/completions", json=body, timeout=3))
        assert not new_connection[0] and not on_kept_alive[0], (new_connection, on_kept_alive)

        for client in clients:
            client.join(GRACE_S + 30)
        outcomes = [client.outcome() for client in clients]
        assert all(outcome in ("done", "error") for outcome in outcomes), outcomes
        done_after = [c for c in clients if c.outcome() == "done" and c.ended_at > signalled]
        errors = [c for c in clients if c.outcome() == "error"]
        assert done_after, "no stream running at SIGTERM finished: the drain was not exercised"
        assert errors, "no stream outlasted the grace: the deadline was not exercised"
        ended = [c.ended_at - signalled for c in errors]
        assert GRACE_S - 0.5 <= min(ended) and max(ended) <= GRACE_S + 5, ended

        exit_code = gateway.process.wait(timeout=GRACEFUL_TIMEOUT_S + 10)
        exited = time.monotonic() - signalled
        text = log.read_text()
        assert exit_code == 0, text
        assert "Worker exiting" in text and "SIGKILL" not in text, text  # the worker left by itself, not killed
        assert exited < GRACEFUL_TIMEOUT_S, text
        print(f"\n{len(done_after)} streams finished after SIGTERM, {outcomes.count('done') - len(done_after)} "
              f"before it, {len(errors)} ended with server_shutting_down {min(ended):.2f}-{max(ended):.2f} s after "
              f"it; exit 0 after {exited:.2f} s; after SIGTERM a new connection got {new_connection[1]}, a kept-alive "
              f"one {on_kept_alive[1]}")
    finally:
        gateway.stop()
