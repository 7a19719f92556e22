"""The gateway under a long, mixed and hostile load, until it stops by itself: does anything break, leak or hang?

    python -m benchmarks.soak [--requests 20000 --clients 120 --hidden 512 --layers 2 --backend local|tfserving|both
                               --seconds-limit 1800 --seed 0 --roles hangup=0.2,malformed=0.1,tampered=0.05,slow=0.1
                               --no-record]

Exports a random-weights model of the shape (training.export.export_untrained, tiny-shakespeare's 65 characters,
so the version has a chat template), starts gunicorn with serving/gunicorn.conf.py on 127.0.0.1
(serving.launch.GunicornGateway) with the local backend, and then again with CHARLM_BACKEND=tfserving against the
TF Serving stand-in (serving.tfserving_standin: TF Serving's gRPC PredictionService over the same SavedModel, run
in this process on a free port; NOT TF Serving). The TF Serving run also stops the stand-in for --outage-seconds
in the middle and starts it again on the same port: a 503 is the only 5xx allowed then.

`--clients` threads (http.client, a new connection per request) share `--requests` HTTP requests, each client a
seeded random mix by its role:

- normal (the rest): plain and streamed completions (n, logprobs, echo, stop, best_of), plain and streamed chat,
  /v1/generate chains continuing through their states (some checked against one uninterrupted request with the
  same seed), /v1/score (sometimes from a state), /v1/activations, and the small GETs;
- 20% hang up: read the first event(s) of a long stream and close the socket (FIN or RST), or send a plain
  request and close before the reply;
- 10% send malformed or hostile bodies: a catalogue (invalid JSON, wrong types, unknown fields, huge and negative
  numbers, unknown model and route, oversize body, bad UTF-8, deep nesting, wrong content type, refused chat
  features, broken HTTP framing) and random byte mutations of valid bodies;
- 5% send tampered states: a real state from /v1/generate with bytes flipped, truncated, its version or width or
  numbers replaced (unsigned), and -- signed with the gateway's own CHARLM_STATE_SECRETS, which this benchmark
  sets -- another version, width, non-finite numbers or a bad position, to see the checks behind the signature
  (signed states with huge finite numbers, which only the gateway could make, are reported, not judged);
- 10% read very slowly (a small SO_RCVBUF, a few hundred bytes at a time with pauses).

Hang-ups, malformed bodies and tampered states are answered at once, so those clients wait about as long as a
normal request takes before each of theirs: the shares hold for the requests, not only for the clients. A 429
is retried after its Retry-After, a 503 after a second or so, as a client would.

Checked: no 5xx (but a 503 while the stand-in is down); catalogue bodies and tampered states get a 4xx in
OpenAI's error envelope, mutated bodies anything but a 5xx; valid requests get a 200 (or a 429 with Retry-After);
every response body that is JSON is strict JSON (no NaN); every completed stream and plain reply has the length
asked for (where no stop string applies); continued generations equal the uninterrupted one; afterwards
charlm_active_streams and charlm_queue_depth go back to 0, the worker's thread count back to its idle value
after warm-up (the thread pool is filled to its size at the end of warm-up, so a leaked thread shows), it is the
same worker process, still ready, and its log holds no traceback. The worker's RSS is read idle after the warm-up
(--warmup requests), in the middle of the soak and at the end; growth per 1,000 requests is printed for the whole
soak and for each half, and the second half's must stay under --max-rss-growth-mib (the first half also holds
the allocator's own warm-up, which levels off; a leak grows both). The defaults are sized by that warm-up: over
20,000 requests (docs/results.md) each worker's RSS grew fastest in the first few thousand and ever slower after
(local 2.1, 1.2, 1.2, 0.5 and tfserving 5.9, 1.8, 1.2, 1.0 MiB per 1,000 requests in successive quarters); with 5,000 requests a half's growth
was within the RSS readings' own noise of the bound. Reported: status counts, p50/p99 time to first
character of streamed requests.

Bounded: at most --requests requests and --seconds-limit seconds per backend (then no new request starts);
gunicorn and the stand-in are stopped in `finally`. One JSON line per backend; exit status 1 if any check failed;
a dated section is appended to docs/results.md unless --no-record.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import http.client
import json
import math
import os
import random
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.bench_generate import RESULTS  # noqa: E402
from benchmarks.machine import machine  # noqa: E402
from serving.launch import GunicornGateway, free_port  # noqa: E402

# tiny-shakespeare's characters: a version with these has the `plain` chat template (export's `auto` without a corpus).
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEXT_CHARS = " " * 12 + "\n" * 2 + "etaoinshrdlu" * 3 + VOCAB  # prompts: mostly letters and spaces
MODEL = "charlm"
MAX_BODY_BYTES = 1 << 20  # CHARLM_MAX_BODY_BYTES, set explicitly so the oversize bodies know the limit
ROLES = "hangup=0.2,malformed=0.1,tampered=0.05,slow=0.1"  # shares of the clients; the rest are normal
LENGTHS = ((1, 8, 16, 32, 64, 100, 200, 400), (2, 8, 12, 18, 18, 16, 16, 10))  # max_tokens and weights
# A client gives up on a connection silent this long (a plain reply sends nothing until it is whole; a stream sends a
# keep-alive comment every CHARLM_SSE_KEEPALIVE_S): counted as a failure, so a hang shows and the soak still ends.
SOCKET_TIMEOUT_S = 300.0
PACED = ("malformed", "tampered", "hangup")  # their requests are answered at once: they wait as long as a normal one takes
FAILURE_SAMPLES = 12  # per problem category, printed to stderr


# --- small helpers --------------------------------------------------------------------------------------------------

def strict_json(data: bytes | str):
    """JSON as the RFC has it: NaN and Infinity (which Python's json writes and reads by default) are errors."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(data, parse_constant=refuse)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def excerpt(data, n: int = 300) -> str:
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data[:n]).decode("utf-8", "backslashreplace")
    text = str(data)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def envelope_problem(status: int, data: bytes) -> str | None:
    """None if `data` is OpenAI's error envelope {"error": {"message", "type", "param", "code"}}."""
    try:
        body = strict_json(data)
    except (ValueError, UnicodeDecodeError):
        return f"{status} without a JSON body: {excerpt(data, 120)!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} or not error["message"]:
        return f"{status} body is not the error envelope: {excerpt(data, 120)!r}"
    if "Traceback" in str(error["message"]):
        return f"{status} error message holds a traceback"
    return None


# --- /proc: the gunicorn worker --------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return sorted(set(found))


def proc_status(pid: int) -> dict[str, int]:
    """{"rss_kib", "anon_kib" (heap and other private memory), "file_kib" (mapped files), "threads"} of a
    process, from /proc/<pid>/status."""
    keys = {"VmRSS": "rss_kib", "RssAnon": "anon_kib", "RssFile": "file_kib", "Threads": "threads"}
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                values[keys[key]] = int(rest.split()[0])
    return values


# --- Prometheus text -------------------------------------------------------------------------------------------------

def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        parsed = {}
        for part in labels.rstrip("}").split(","):
            if "=" in part:
                key, _, val = part.partition("=")
                parsed[key.strip()] = val.strip().strip('"')
        try:
            samples.append((name, parsed, float(value)))
        except ValueError:
            pass
    return samples


def metric_sum(samples, name: str, **labels) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


# --- HTTP ------------------------------------------------------------------------------------------------------------

class Budget:
    """The requests and the time one backend's run may use: take() a ticket before each request."""

    def __init__(self, requests: int, deadline: float):
        self.left, self.deadline, self.taken = requests, deadline, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            self.taken += 1
            return True


@dataclasses.dataclass
class Outcome:
    """One HTTP request and what came of it."""

    role: str
    kind: str
    started: float
    ended: float = 0.0
    status: int | str | None = None  # an HTTP status, or "hung_up" (on purpose), "conn_error"
    problem: str | None = None  # a failed expectation: category:text
    request: str = ""
    response: str = ""
    ttfc_s: float | None = None
    streamed: bool = False
    completed_choices: int = 0  # choices whose length was checked
    stream_error: str | None = None  # the code of an error event after a 200
    server_status: int | None = None  # of a stream error event: the status its code maps to (503 for outages)
    note: str | None = None  # e.g. the tamper or catalogue entry


def open_connection(port: int, rcvbuf: int | None = None, timeout: float = SOCKET_TIMEOUT_S):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the window
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.sock = sock
    return connection, sock


def hang_up(connection, sock, reset: bool) -> None:
    """Close abruptly: RST (SO_LINGER 0) or FIN, whatever is still unread."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
    sock.close()


def sse_payloads(response, slow: tuple[int, float] | None = None):
    """The `data:` payloads of an event stream as they arrive (keep-alive comments skipped); `slow`: read at most
    (bytes, then pause seconds) at a time. Yields ("data", text) and, at the end, ("eof", leftover bytes)."""
    buffer = b""
    while True:
        data = response.read1(slow[0] if slow else 65536)
        if not data:
            break
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            lines = [line for line in event.split(b"\n") if not line.startswith(b":")]
            payload = b"\n".join(line[len(b"data: "):] if line.startswith(b"data: ") else line for line in lines)
            if lines:
                yield "data", payload.decode("utf-8")
        if slow:
            time.sleep(slow[1])
    yield "eof", buffer


ERROR_STATUS = {"backend_unavailable": 503, "version_unloaded": 503, "chat_template_unusable": 503,
                "backend_timeout": 504, "generation_stalled": 504, "internal_error": 500}


class Context:
    """What every client shares: the gateway's port, the served model's facts, the state secret, the results."""

    def __init__(self, port: int, card: dict, secret: str, max_streams: int):
        self.port, self.card, self.secret = port, card, secret.encode()
        self.version, self.state_size = card["version"], card["state_size"]
        self.hidden, self.layers = card["hidden_size"], card["num_layers"]
        self.chat = card.get("chat_template") is not None
        self.chat_stop = list(card.get("chat_stop") or [])
        self.max_streams = max_streams
        self.outcomes: list[Outcome] = []
        self.continuations = Counter()  # checked, mismatched
        self.forgery = None  # whether this benchmark signs states as the gateway does (checked on a real one)
        self.normal_s = 0.5  # how long a normal client's request takes, lately (a moving average)
        self._lock = threading.Lock()

    def add(self, outcome: Outcome) -> None:
        outcome.ended = outcome.ended or time.monotonic()
        with self._lock:
            self.outcomes.append(outcome)
            if outcome.role == "normal" and outcome.status == 200:
                self.normal_s = 0.95 * self.normal_s + 0.05 * (outcome.ended - outcome.started)

    # --- the gateway's state format, to forge states it would sign (serving/state_token.py) ---
    def sign(self, header: bytes, numbers: bytes) -> str | None:
        from serving import state_token

        purpose = getattr(state_token, "PURPOSE", None)
        if purpose is None:
            return None
        signed = f"{b64(header)}.{b64(numbers)}"
        return f"{signed}.{b64(hmac.new(self.secret, purpose + signed.encode('ascii'), hashlib.sha256).digest())}"

    def check_forgery(self, token: str) -> bool:
        """Whether sign() makes exactly the token the gateway made (then the signed tamperings test what is behind
        the signature); decided once, on the first real state."""
        with self._lock:
            if self.forgery is None:
                parts = token.split(".")
                try:
                    self.forgery = len(parts) == 3 and self.sign(unb64(parts[0]), unb64(parts[1])) == token
                except Exception:
                    self.forgery = False
            return self.forgery


class Client(threading.Thread):
    """One client: a role and a seeded random mix of requests, one per ticket of the budget."""

    def __init__(self, ctx: Context, budget: Budget, index: int, role: str, seed: str):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.ctx, self.budget, self.role = ctx, budget, role
        self.rng = random.Random(seed)
        self.chain = None  # a /v1/generate chain in progress
        self.state = None  # the last real state this client got (score continues from it; tamperers tamper it)
        self.finished = False

    def run(self) -> None:
        try:
            while True:
                if self.role in PACED:  # as many requests as a normal client, not as many as a 400 allows
                    time.sleep(self.rng.uniform(0.5, 1.5) * self.ctx.normal_s)
                if not self.budget.take():
                    break
                try:
                    getattr(self, f"step_{self.role}")()
                except Exception as e:  # the client's own bug must not stop the soak silently
                    self.ctx.add(Outcome(self.role, "client", time.monotonic(), status="client_error",
                                         problem=f"client_bug:{type(e).__name__}: {e}"))
        finally:
            self.finished = True

    # --- one request --------------------------------------------------------------------------------------------
    def send(self, kind: str, method: str, path: str, body: bytes | None, headers: dict | None = None, *,
             expect: str = "ok", stream: bool = False, check=None, slow: tuple[int, float] | None = None,
             hang: tuple[str, int] | None = None, note: str | None = None, ttfc: bool = True) -> tuple[Outcome, object]:
        """Sends one request and judges it. expect: "ok" (200, or 429 with Retry-After), "4xx" (with the error
        envelope), "not5xx" (anything but a 5xx; a 4xx with the envelope), "400state" (400 invalid_state).
        check(payload | events) -> problem or None judges a 200. hang: ("events", k) read k data events then close,
        ("before", 0) close before the reply. Returns the outcome and the parsed reply (or the list of events)."""
        ctx = self.ctx
        outcome = Outcome(self.role, kind, time.monotonic(), request=excerpt(f"{method} {path} {body!r}"),
                          streamed=stream, note=note)
        parsed = None
        connection = sock = None
        try:
            connection, sock = open_connection(ctx.port, rcvbuf=4096 if slow else None)
            all_headers = {"Content-Type": "application/json"} if body is not None else {}
            all_headers.update(headers or {})
            sent_at = time.monotonic()
            connection.request(method, path, body, all_headers)
            if hang and hang[0] == "before":
                time.sleep(self.rng.uniform(0.02, 0.5))
                hang_up(connection, sock, reset=self.rng.random() < 0.5)
                outcome.status = "hung_up"
                ctx.add(outcome)
                return outcome, None
            response = connection.getresponse()
            outcome.status = response.status
            content_type = response.getheader("Content-Type", "")
            if response.status == 200 and content_type.startswith("text/event-stream"):
                parsed = self.read_stream(response, outcome, sent_at if ttfc else None, slow, hang, connection, sock)
                if outcome.status == "hung_up":
                    return outcome, None
            else:
                data = self.read_body(response, slow)
                outcome.response = excerpt(data)
                if response.status == 200:
                    try:
                        parsed = strict_json(data) if content_type.startswith("application/json") else data
                    except ValueError as e:
                        outcome.problem = f"bad_json:200 reply is not strict JSON ({e})"
                elif response.status >= 400:
                    problem = envelope_problem(response.status, data)
                    if problem:
                        outcome.problem = f"bad_envelope:{problem}"
                if response.status == 429 and not response.getheader("Retry-After"):
                    outcome.problem = "bad_envelope:429 without Retry-After"
        except (OSError, http.client.HTTPException) as e:
            outcome.status = "conn_error"
            outcome.response = f"{type(e).__name__}: {e}"
        finally:
            if connection is not None:
                connection.close()
        outcome.ended = time.monotonic()
        self.judge(outcome, expect, check, parsed)
        ctx.add(outcome)
        if outcome.status == 429:
            time.sleep(1.0)  # Retry-After
        elif outcome.status == 503 or outcome.server_status == 503:
            time.sleep(self.rng.uniform(0.5, 1.5))  # the backend is down: a client backs off, it does not hammer
        return outcome, parsed

    def read_body(self, response, slow) -> bytes:
        if not slow:
            return response.read()
        parts = []
        while True:
            data = response.read1(512)
            if not data:
                return b"".join(parts)
            parts.append(data)
            time.sleep(self.rng.uniform(0.005, 0.02))

    def read_stream(self, response, outcome: Outcome, sent_at: float, slow, hang, connection, sock):
        events, done, data_events = [], False, 0
        pacing = (self.rng.choice((128, 256, 512)), self.rng.uniform(0.005, 0.02)) if slow else None
        for what, payload in sse_payloads(response, pacing):
            if what == "eof":
                if payload.strip():
                    outcome.problem = f"stream:incomplete last event {excerpt(payload, 80)!r}"
                break
            if payload == "[DONE]":
                done = True
                continue
            if done:
                outcome.problem = "stream:an event after [DONE]"
                break
            try:
                event = strict_json(payload)
            except ValueError as e:
                outcome.problem = f"bad_json:event is not strict JSON ({e}): {excerpt(payload, 80)!r}"
                break
            data_events += 1
            if isinstance(event, dict) and "error" in event:
                problem = envelope_problem(200, payload.encode())
                outcome.stream_error = (event["error"] or {}).get("code") if not problem else "malformed"
                outcome.server_status = ERROR_STATUS.get(outcome.stream_error, 400)
                outcome.response = excerpt(payload)
                if problem:
                    outcome.problem = f"bad_envelope:stream error {problem}"
                continue
            events.append(event)
            if outcome.ttfc_s is None and sent_at is not None and event_text(event):
                outcome.ttfc_s = time.monotonic() - sent_at
            if hang and hang[0] == "events" and data_events >= hang[1]:
                hang_up(connection, sock, reset=self.rng.random() < 0.5)
                outcome.status = "hung_up"
                outcome.ended = time.monotonic()
                self.ctx.add(outcome)
                return None
        if not done and outcome.stream_error is None and outcome.problem is None:
            outcome.problem = "stream:ended without [DONE]"
        return events

    def judge(self, outcome: Outcome, expect: str, check, parsed) -> None:
        status = outcome.status
        if outcome.problem:
            return
        if isinstance(status, int) and status >= 500:
            outcome.problem = f"5xx:{status} {outcome.response[:200]}"
        elif outcome.stream_error is not None:
            outcome.problem = f"stream_error:{outcome.stream_error}"
        elif status == "conn_error":
            outcome.problem = f"conn_error:{outcome.response}"
        elif expect == "ok":
            if status == 200:
                problem = check(parsed) if check else None
                if problem:
                    outcome.problem = problem
            elif status != 429:
                outcome.problem = f"unexpected_status:{status} for a valid request: {outcome.response[:200]}"
        elif expect == "4xx":
            if not (isinstance(status, int) and 400 <= status < 500):
                outcome.problem = f"accepted_bad_input:{status} for {outcome.note}"
        elif expect == "400state":
            if status != 400:
                outcome.problem = f"tampered_state_accepted:{status} for {outcome.note}"
            elif '"invalid_state"' not in outcome.response and "invalid_state" not in outcome.response:
                outcome.problem = f"tampered_state_wrong_code:{outcome.note}: {outcome.response[:160]}"

    # --- what requests look like -------------------------------------------------------------------------------
    def text(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(TEXT_CHARS, k=self.rng.randint(low, high)))

    def length(self) -> int:
        return self.rng.choices(*LENGTHS)[0]

    def sampling(self) -> dict:
        body = {"temperature": self.rng.choice((0, 0.5, 0.8, 1.0, 1.0, 1.3))}
        if self.rng.random() < 0.3:
            body["top_p"] = self.rng.choice((0.5, 0.9, 0.95))
        if self.rng.random() < 0.2:
            body["top_k"] = self.rng.choice((1, 5, 20))
        if self.rng.random() < 0.1:
            body["min_p"] = 0.05
        return body

    def completion_body(self, stream: bool, max_tokens: int | None = None) -> dict:
        rng = self.rng
        prompts = [self.text(1, 120) if rng.random() < 0.95 else self.text(300, 1500)]
        if rng.random() < 0.1:
            prompts.append(self.text(1, 50))
        n = rng.choices((1, 2, 3), (80, 15, 5))[0]
        body = {"model": MODEL, "prompt": prompts[0] if len(prompts) == 1 else prompts,
                "max_tokens": max_tokens if max_tokens is not None else self.length(), "n": n,
                "seed": rng.randrange(1 << 31), "stream": stream, **self.sampling()}
        if rng.random() < 0.2:
            body["logprobs"] = rng.choice((0, 1, 5))
        if rng.random() < 0.15:
            body["stop"] = rng.choice(("e", "\n", ["th", "q"], " a"))
        if rng.random() < 0.1:
            body["echo"] = True
        if rng.random() < 0.03:
            body["max_tokens"] = 0
        if stream and rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
        if not stream and rng.random() < 0.05:
            body["best_of"] = n + 1
        return body

    def chat_body(self, stream: bool) -> dict:
        rng = self.rng
        messages = [{"role": "user", "content": self.text(1, 120)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": self.text(1, 60)})
        if rng.random() < 0.3:
            messages += [{"role": "assistant", "content": self.text(1, 60)}, {"role": "user", "content": self.text(1, 60)}]
        body = {"model": MODEL, "messages": messages, "max_completion_tokens": self.length(),
                "seed": rng.randrange(1 << 31), "stream": stream, **self.sampling()}
        if rng.random() < 0.15:
            body["n"] = 2
        if rng.random() < 0.15:
            body["logprobs"], body["top_logprobs"] = True, rng.choice((0, 2))
        if rng.random() < 0.1:
            body["stop"] = ["e"]
        if stream and rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
        return body

    # --- roles --------------------------------------------------------------------------------------------------
    def step_normal(self) -> None:
        if self.chain is not None:
            return self.chain_step()
        kinds = ("completion", "completion_stream", "chat", "chat_stream", "generate", "score", "activations", "light")
        kind = self.rng.choices(kinds, (14, 20, 7 if self.ctx.chat else 0, 10 if self.ctx.chat else 0, 16, 10, 8, 5))[0]
        if kind.startswith("completion"):
            self.completion(kind.endswith("stream"))
        elif kind.startswith("chat"):
            self.chat_request(kind.endswith("stream"))
        elif kind == "generate":
            self.start_chain()
        elif kind == "score":
            self.score()
        elif kind == "activations":
            self.activations()
        else:
            self.light()

    def completion(self, stream: bool, slow=None, max_tokens=None) -> None:
        body = self.completion_body(stream, max_tokens)
        self.send("completion_stream" if stream else "completion", "POST", "/v1/completions",
                  json.dumps(body).encode(), stream=stream, slow=slow, ttfc=not body.get("echo"),
                  check=lambda reply: check_completion(body, reply, stream))

    def chat_request(self, stream: bool, slow=None) -> None:
        body = self.chat_body(stream)
        stops = list(body.get("stop", [])) + self.ctx.chat_stop
        self.send("chat_stream" if stream else "chat", "POST", "/v1/chat/completions", json.dumps(body).encode(),
                  stream=stream, slow=slow, check=lambda reply: check_chat(body, stops, reply, stream))

    def generate(self, body: dict, kind: str = "generate", expect: str = "ok", note=None):
        stream = body.get("stream", False)
        outcome, reply = self.send(kind + ("_stream" if stream else ""), "POST", "/v1/generate",
                                   json.dumps(body).encode(), stream=stream, expect=expect, note=note,
                                   check=lambda r: check_generate(body, r, stream))
        if outcome.status != 200 or outcome.problem or reply is None:
            return None
        return (*fold_generate(reply, stream), outcome)

    def start_chain(self) -> None:
        rng = self.rng
        lengths = [rng.choice((1, 20, 50, 100, 200)) for _ in range(rng.randint(2, 4))]
        sampling = self.sampling()
        self.chain = {"prompt": self.text(1, 100), "sampling": sampling, "seed": rng.randrange(1 << 31),
                      "lengths": lengths, "done": 0, "text": "", "state": None, "verify": rng.random() < 0.3}
        self.chain_step()

    def chain_step(self) -> None:
        chain, rng = self.chain, self.rng
        if chain["done"] < len(chain["lengths"]):
            body = {"max_chars": chain["lengths"][chain["done"]], "stream": rng.random() < 0.4, **chain["sampling"]}
            if chain["done"] == 0:
                body.update(prompt=chain["prompt"], seed=chain["seed"])
            else:
                body.update(prompt="", state=chain["state"])  # the seed comes from the state
            got = self.generate(body)
            if got is None:
                self.chain = None
                return
            chain["text"] += got[0]
            chain["state"] = self.state = got[1]
            chain["done"] += 1
            if chain["done"] == len(chain["lengths"]) and not chain["verify"]:
                self.chain = None
            return
        # The check: one uninterrupted request, same prompt, seed and sampling, gives the same text.
        self.chain = None
        body = {"prompt": chain["prompt"], "seed": chain["seed"], "max_chars": sum(chain["lengths"]),
                **chain["sampling"]}
        got = self.generate(body, kind="generate_whole")
        if got is not None:
            with self.ctx._lock:
                self.ctx.continuations["checked"] += 1
                if got[0] != chain["text"]:
                    self.ctx.continuations["mismatched"] += 1
                    got[2].problem = (f"continuation:continued in {chain['lengths']} characters gave "
                                      f"{chain['text'][:40]!r}..., one request {got[0][:40]!r}...")

    def score(self) -> None:
        text = self.text(1, 500)
        body = {"text": text, "per_char": self.rng.random() < 0.5}
        if self.state is not None and self.rng.random() < 0.3:
            body["state"] = self.state
        self.send("score", "POST", "/v1/score", json.dumps(body).encode(), check=lambda r: check_score(body, r))

    def activations(self) -> None:
        body = {"text": self.text(1, 100), "kind": self.rng.choice(
            ("tanh_cell", "cell", "hidden", "input_gate", "forget_gate", "cell_candidate", "output_gate"))}
        if self.rng.random() < 0.5:
            body["layer"] = self.rng.randrange(self.ctx.layers)
        hidden = self.ctx.hidden
        self.send("activations", "POST", "/v1/activations", json.dumps(body).encode(),
                  check=lambda r: check_activations(body, hidden, r))

    def light(self) -> None:
        choice = self.rng.randrange(6)
        if choice == 0:
            self.send("light", "GET", "/v1/models", None, check=lambda r: None if r["data"][0]["id"] == MODEL else "light:models")
        elif choice == 1:
            self.send("light", "GET", "/healthz", None)
        elif choice == 2:
            self.send("light", "GET", "/metrics", None)
        elif choice == 3:
            text = self.text(1, 100)
            self.send("light", "POST", "/tokenize", json.dumps({"prompt": text}).encode(),
                      check=lambda r: None if r["count"] == len(text) else f"light:tokenize count {r['count']}")
        elif choice == 4:
            self.send("light", "POST", "/detokenize", json.dumps({"tokens": [1, 2, 3]}).encode())
        else:
            self.send("light", "GET", f"/v1/models/{MODEL}", None)

    def step_hangup(self) -> None:
        rng = self.rng
        what = rng.choices(("completion", "chat", "generate", "plain_completion", "plain_generate"),
                           (40, 15 if self.ctx.chat else 0, 20, 15, 10))[0]
        long = rng.randint(500, 2000)
        if what == "completion":
            body = self.completion_body(True, long)
            self.send("hangup_completion_stream", "POST", "/v1/completions", json.dumps(body).encode(), stream=True,
                      hang=("events", rng.randint(1, 3)), check=lambda r: check_completion(body, r, True))
        elif what == "chat":
            body = {**self.chat_body(True), "max_completion_tokens": long}
            self.send("hangup_chat_stream", "POST", "/v1/chat/completions", json.dumps(body).encode(), stream=True,
                      hang=("events", rng.randint(1, 3)), check=lambda r: None)
        elif what == "generate":
            body = {"prompt": self.text(1, 50), "max_chars": long, "stream": True, "seed": rng.randrange(1 << 31)}
            self.send("hangup_generate_stream", "POST", "/v1/generate", json.dumps(body).encode(), stream=True,
                      hang=("events", rng.randint(1, 3)), check=lambda r: None)
        elif what == "plain_completion":
            body = self.completion_body(False, long)
            body.pop("best_of", None)
            self.send("hangup_completion", "POST", "/v1/completions", json.dumps(body).encode(), hang=("before", 0))
        else:
            body = {"prompt": self.text(1, 50), "max_chars": long}
            self.send("hangup_generate", "POST", "/v1/generate", json.dumps(body).encode(), hang=("before", 0))

    def step_slow(self) -> None:
        rng = self.rng
        slow = (256, 0.01)
        what = rng.choices(("completion_logprobs", "chat", "generate", "plain"), (50, 20 if self.ctx.chat else 0, 15, 15))[0]
        if what == "completion_logprobs":
            body = {**self.completion_body(True, rng.randint(100, 400)), "logprobs": 5, "n": 1, "echo": False}
            body.pop("stop", None)
            self.send("slow_completion_stream", "POST", "/v1/completions", json.dumps(body).encode(), stream=True,
                      slow=slow, check=lambda r: check_completion(body, r, True))
        elif what == "chat":
            self.chat_request(True, slow=slow)
        elif what == "generate":
            body = {"prompt": self.text(1, 50), "max_chars": rng.randint(200, 800), "stream": True}
            self.send("slow_generate_stream", "POST", "/v1/generate", json.dumps(body).encode(), stream=True,
                      slow=slow, check=lambda r: check_generate(body, r, True))
        else:
            body = {**self.completion_body(False, rng.randint(100, 300)), "logprobs": 5}
            self.send("slow_completion", "POST", "/v1/completions", json.dumps(body).encode(), slow=slow,
                      check=lambda r: check_completion(body, r, False))

    def step_malformed(self) -> None:
        if self.rng.random() < 0.55:
            name, method, path, body, headers, expect = self.rng.choice(catalogue(self.ctx))
            if name.startswith("framing") or name.startswith("oversize"):
                return self.raw(name, body, expect)
            self.send("malformed", method, path, body, headers, expect=expect, note=name)
        else:
            path, body = self.valid_body()
            mutated = mutate(self.rng, body)
            stream = b'"stream": true' in mutated
            self.send("mutated", "POST", path, mutated, expect="not5xx", stream=stream, note=f"mutation of {path}")

    def valid_body(self) -> tuple[str, bytes]:
        choice = self.rng.randrange(5)
        if choice == 0:
            return "/v1/completions", json.dumps(self.completion_body(self.rng.random() < 0.5, 32)).encode()
        if choice == 1 and self.ctx.chat:
            return "/v1/chat/completions", json.dumps({**self.chat_body(False), "max_completion_tokens": 32}).encode()
        if choice == 2:
            return "/v1/score", json.dumps({"text": self.text(1, 100), "per_char": True}).encode()
        if choice == 3:
            return "/v1/activations", json.dumps({"text": self.text(1, 50), "layer": 0}).encode()
        return "/v1/generate", json.dumps({"prompt": self.text(1, 50), "max_chars": 32, "seed": 5}).encode()

    def raw(self, name: str, data: bytes, expect: str) -> None:
        """Bytes straight onto a socket (HTTP framing, oversize bodies sent in pieces while watching for the early
        answer), then the reply parsed by http.client."""
        outcome = Outcome(self.role, "malformed", time.monotonic(), request=excerpt(data, 200), note=name)
        sock = socket.create_connection(("127.0.0.1", self.ctx.port), timeout=30)
        try:
            head, _, rest = data.partition(b"\r\n\r\n")
            sock.sendall(head + b"\r\n\r\n")
            for i in range(0, len(rest), 65536):
                if select.select([sock], [], [], 0)[0]:
                    break  # answered early (a 413 before the body): stop sending, read it
                try:
                    sock.sendall(rest[i:i + 65536])
                except OSError:
                    break
            if name.endswith("half_close"):
                sock.shutdown(socket.SHUT_WR)
            response = http.client.HTTPResponse(sock, method="POST")
            try:
                response.begin()
                outcome.status = response.status
                body = response.read()
                outcome.response = excerpt(body)
                if response.status >= 400:  # gunicorn's own answers too (serving/gunicorn.conf.py)
                    problem = envelope_problem(response.status, body)
                    if problem:
                        outcome.problem = f"bad_envelope:{problem} ({name})"
            except (OSError, http.client.HTTPException) as e:
                # The server closing a broken request without an answer is no crash; an oversize body must be answered.
                outcome.status = "closed" if name.startswith("framing") else "conn_error"
                outcome.response = f"{type(e).__name__}: {e}"
        finally:
            sock.close()
        outcome.ended = time.monotonic()
        if outcome.status == "closed":
            pass
        elif outcome.problem is None:
            self.judge(outcome, expect, None, None)
        self.ctx.add(outcome)

    def step_tampered(self) -> None:
        if self.state is None or self.rng.random() < 0.1:
            body = {"prompt": self.text(1, 40), "max_chars": 8, "seed": self.rng.randrange(1 << 31)}
            got = self.generate(body, kind="generate_for_state")
            if got is not None:
                self.state = got[1]
                self.ctx.check_forgery(got[1])
            return
        name, token, expect = tamper(self.rng, self.ctx, self.state)
        route = self.rng.choice(("generate", "generate_stream", "score", "activations"))
        if route.startswith("generate"):
            body = {"prompt": "", "state": token, "max_chars": 20, "stream": route.endswith("stream")}
            self.generate(body, kind="tampered", expect=expect, note=name)
        elif route == "score":
            body = {"text": self.text(1, 30), "state": token}
            self.send("tampered", "POST", "/v1/score", json.dumps(body).encode(), expect=expect, note=name,
                      check=lambda r: check_score(body, r))
        else:
            body = {"text": self.text(1, 30), "state": token}
            hidden = self.ctx.hidden
            self.send("tampered", "POST", "/v1/activations", json.dumps(body).encode(), expect=expect, note=name,
                      check=lambda r: check_activations(body, hidden, r))


# --- judging replies -------------------------------------------------------------------------------------------------

def event_text(event: dict) -> str:
    """The characters an event carries (completions, chat, generate)."""
    if "choices" in event:
        texts = []
        for choice in event.get("choices") or []:
            if "text" in choice:
                texts.append(choice.get("text") or "")
            else:
                texts.append(((choice.get("delta") or {}).get("content")) or "")
        return "".join(texts)
    return event.get("text") or ""


def length_problem(generated: str, max_tokens: int, stops: list[str], finish: str | None) -> str | None:
    if not stops:
        if len(generated) != max_tokens or finish != "length":
            return f"length:{len(generated)} characters, finish {finish!r}, for {max_tokens} asked"
        return None
    if finish == "length" and len(generated) != max_tokens:
        return f"length:{len(generated)} characters with finish 'length', for {max_tokens} asked"
    if finish == "stop" and len(generated) > max_tokens:
        return f"length:{len(generated)} characters with finish 'stop', more than {max_tokens}"
    if finish not in ("stop", "length"):
        return f"length:finish {finish!r}"
    if any(stop in generated for stop in stops):
        return f"length:a stop string is in the text {generated[:60]!r}"
    return None


def check_completion(body: dict, reply, stream: bool) -> str | None:
    prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
    per_prompt = body.get("n", 1)
    count = len(prompts) * per_prompt
    stops = [body["stop"]] if isinstance(body.get("stop"), str) else list(body.get("stop") or [])
    texts, finishes = defaultdict(str), {}
    if stream:
        for event in reply:
            for choice in event.get("choices") or []:
                texts[choice["index"]] += choice["text"]
                if choice.get("finish_reason"):
                    finishes[choice["index"]] = choice["finish_reason"]
                if body.get("logprobs") is not None:
                    if len((choice.get("logprobs") or {}).get("tokens") or []) != len(choice["text"]):
                        return "logprobs:a chunk's tokens differ from its text"
    else:
        for choice in reply["choices"]:
            texts[choice["index"]], finishes[choice["index"]] = choice["text"], choice["finish_reason"]
            if body.get("logprobs") is not None and len(choice["logprobs"]["tokens"]) != len(choice["text"]):
                return "logprobs:tokens differ from the text"
        count = body.get("n", 1) * len(prompts)
    if sorted(texts) != list(range(count)) and not (body["max_tokens"] == 0 and not body.get("echo")):
        return f"choices:{sorted(texts)} for {count} choices"
    for i in range(count):
        text, prompt = texts.get(i, ""), prompts[i // per_prompt]
        if body.get("echo"):
            if not text.startswith(prompt):
                return "echo:the text does not start with the prompt"
            text = text[len(prompt):]
        problem = length_problem(text, body["max_tokens"], stops, finishes.get(i))
        if problem:
            return problem
    return None


def check_chat(body: dict, stops: list[str], reply, stream: bool) -> str | None:
    count = body.get("n", 1)
    texts, finishes = defaultdict(str), {}
    if stream:
        for event in reply:
            for choice in event.get("choices") or []:
                texts[choice["index"]] += (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    finishes[choice["index"]] = choice["finish_reason"]
    else:
        for choice in reply["choices"]:
            texts[choice["index"]] = choice["message"]["content"] or ""
            finishes[choice["index"]] = choice["finish_reason"]
    if sorted(finishes) != list(range(count)):
        return f"choices:finish reasons for {sorted(finishes)} of {count} choices"
    for i in range(count):
        problem = length_problem(texts[i], body["max_completion_tokens"], stops, finishes.get(i))
        if problem:
            return problem
    return None


def fold_generate(reply, stream: bool) -> tuple[str, str]:
    if stream:
        return "".join(e.get("text") or "" for e in reply), reply[-1]["state"]
    return reply["text"], reply["state"]


def check_generate(body: dict, reply, stream: bool) -> str | None:
    if stream:
        if not reply:
            return "stream:no events"
        if any(e.get("state") for e in reply[:-1]):
            return "generate:a state before the last event"
        text, finish, state = "".join(e.get("text") or "" for e in reply), reply[-1].get("finish_reason"), reply[-1].get("state")
    else:
        text, finish, state = reply["text"], reply["finish_reason"], reply["state"]
    if not state:
        return "generate:no state"
    return length_problem(text, body.get("max_chars", 200), [], finish)


def check_score(body: dict, reply) -> str | None:
    if reply["characters"] != len(body["text"]):
        return f"score:{reply['characters']} characters for {len(body['text'])}"
    if not isinstance(reply["bits_per_char"], float) or not math.isfinite(reply["bits_per_char"]):
        return f"score:bits_per_char {reply['bits_per_char']!r}"
    if body.get("per_char") and len(reply["log2_probs"]) != len(body["text"]):
        return "score:log2_probs length"
    return None


def check_activations(body: dict, hidden: int, reply) -> str | None:
    values = reply["values"]
    if len(values) != len(body["text"]) or any(len(row) != hidden for row in values):
        return f"activations:{len(values)} rows for {len(body['text'])} characters"
    return None


# --- the bad-input catalogue, mutations and tampered states ---------------------------------------------------------

_CATALOGUE = None


def catalogue(ctx: Context) -> list[tuple[str, str, str, bytes, dict, str]]:
    """(name, method, path, body, headers, expect). expect "4xx": a 4xx with the error envelope; "not5xx": the
    gateway may accept it (a valid body under a wrong content type; HTTP framing that gunicorn may take or close
    on), and any 4xx it gets still has the envelope, gunicorn's own answers included."""
    global _CATALOGUE
    if _CATALOGUE is not None:
        return _CATALOGUE
    C, G, S, A, CH = "/v1/completions", "/v1/generate", "/v1/score", "/v1/activations", "/v1/chat/completions"

    def j(value) -> bytes:
        return json.dumps(value).encode()

    def comp(**fields) -> bytes:
        return j({"model": MODEL, "prompt": "ROMEO", "max_tokens": 8, **fields})

    deep = 100_000
    entries = [
        # invalid JSON, and JSON that is not an object
        ("invalid_json:truncated", "POST", C, b'{"model": "charlm", "prompt": "A"', {}),
        ("invalid_json:text", "POST", C, b"not json at all", {}),
        ("invalid_json:empty", "POST", G, b"", {}),
        ("invalid_json:trailing_comma", "POST", S, b'{"text": "abc",}', {}),
        ("invalid_json:single_quotes", "POST", C, b"{'model': 'charlm'}", {}),
        ("invalid_json:nul_bytes", "POST", A, b"\x00\x01\x02\x03", {}),
        ("not_object:array", "POST", C, b"[1, 2, 3]", {}),
        ("not_object:string", "POST", G, b'"generate"', {}),
        ("not_object:null", "POST", S, b"null", {}),
        # wrong types
        ("wrong_type:prompt_int", "POST", C, comp(prompt=42), {}),
        ("wrong_type:max_tokens_str", "POST", C, comp(max_tokens="10"), {}),
        ("wrong_type:stream_str", "POST", C, comp(stream="yes"), {}),
        ("wrong_type:n_float", "POST", C, comp(n=1.5), {}),
        ("wrong_type:stop_int", "POST", C, comp(stop=7), {}),
        ("wrong_type:logprobs_bool", "POST", C, comp(logprobs=True), {}),
        ("wrong_type:generate_prompt_list", "POST", G, j({"prompt": ["A"]}), {}),
        ("wrong_type:state_int", "POST", G, j({"state": 12345}), {}),
        ("wrong_type:score_text_int", "POST", S, j({"text": 5}), {}),
        ("wrong_type:layer_str", "POST", A, j({"text": "ab", "layer": "1"}), {}),
        ("wrong_type:messages_str", "POST", CH, j({"model": MODEL, "messages": "hi"}), {}),
        ("wrong_type:content_int", "POST", CH, j({"model": MODEL, "messages": [{"role": "user", "content": 5}]}), {}),
        # unknown fields
        ("unknown_field:typo", "POST", C, comp(temperatur=0.5), {}),
        ("unknown_field:nested", "POST", G, j({"prompt": "A", "extra": {"nested": [1, 2]}}), {}),
        ("unknown_field:message", "POST", CH, j({"model": MODEL, "messages": [{"role": "user", "content": "hi", "x": 1}]}), {}),
        ("unknown_field:surrogate_name", "POST", C, b'{"model": "charlm", "\\ud800": 1}', {}),
        # huge, negative and non-finite numbers
        ("huge:max_tokens", "POST", C, comp(max_tokens=10 ** 30), {}),
        ("huge:max_tokens_float", "POST", C, b'{"model": "charlm", "prompt": "A", "max_tokens": 1e999}', {}),
        ("huge:seed", "POST", C, comp(seed=2 ** 70), {}),
        ("huge:n", "POST", C, comp(n=10 ** 20), {}),
        ("huge:top_k", "POST", G, j({"prompt": "A", "top_k": 10 ** 40}), {}),
        ("huge:temperature", "POST", G, j({"prompt": "A", "temperature": 1e308}), {}),
        ("huge:logprobs", "POST", C, comp(logprobs=10 ** 6), {}),
        ("huge:layer", "POST", A, j({"text": "ab", "layer": 10 ** 100}), {}),
        ("huge:max_chars", "POST", G, j({"prompt": "A", "max_chars": 10 ** 18}), {}),
        ("huge:max_completion_tokens", "POST", CH,
         j({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 10 ** 12}), {}),
        ("huge:prompt_chars", "POST", C, comp(prompt="a" * 20_001), {}),
        ("huge:choices", "POST", C, comp(prompt=["a"] * 40, n=8), {}),
        ("huge:score_chars", "POST", S, j({"text": "a" * 5001}), {}),
        ("negative:max_tokens", "POST", C, comp(max_tokens=-1), {}),
        ("negative:max_chars", "POST", G, j({"prompt": "A", "max_chars": -5}), {}),
        ("negative:n", "POST", C, comp(n=-1), {}),
        ("negative:top_p", "POST", C, comp(top_p=-0.5), {}),
        ("negative:temperature", "POST", G, j({"prompt": "A", "temperature": -1}), {}),
        ("negative:layer", "POST", A, j({"text": "ab", "layer": -1}), {}),
        ("non_finite:temperature_nan", "POST", C, b'{"model": "charlm", "prompt": "A", "temperature": NaN}', {}),
        ("non_finite:top_p_inf", "POST", G, b'{"prompt": "A", "top_p": Infinity}', {}),
        ("non_finite:min_p_-inf", "POST", C, b'{"model": "charlm", "prompt": "A", "min_p": -Infinity}', {}),
        # unknown model, route, method
        ("unknown_model:gpt", "POST", C, j({"model": "gpt-4", "prompt": "A"}), {}),
        ("unknown_model:empty", "POST", CH, j({"model": "", "messages": [{"role": "user", "content": "hi"}]}), {}),
        ("unknown_model:path", "POST", G, j({"model": "../../etc/passwd", "prompt": "A"}), {}),
        ("unknown_model:surrogate", "POST", C, b'{"model": "\\ud800", "prompt": "A"}', {}),
        ("unknown_route:post", "POST", "/v1/complete", comp(), {}),
        ("unknown_route:dots", "GET", "/v1/../../etc/passwd", None, {}),
        ("unknown_route:model", "GET", "/v1/models/gpt-4", None, {}),
        ("wrong_method:get_completions", "GET", C, None, {}),
        ("wrong_method:put_generate", "PUT", G, j({"prompt": "A"}), {}),
        ("wrong_method:delete_models", "DELETE", "/v1/models", None, {}),
        # bad UTF-8, surrogates, characters outside the vocabulary
        ("bad_utf8:ff", "POST", C, b'{"model": "charlm", "prompt": "\xff\xfe\xfd"}', {}),
        ("bad_utf8:truncated_sequence", "POST", G, b'{"prompt": "\xc3"}', {}),
        ("bad_utf8:overlong", "POST", S, b'{"text": "\xc0\xaf"}', {}),
        ("bad_utf8:surrogate_bytes", "POST", S, b'{"text": "\xed\xa0\x80"}', {}),
        ("surrogate:prompt", "POST", C, b'{"model": "charlm", "prompt": "\\ud800"}', {}),
        ("surrogate:chat_name", "POST", CH,
         b'{"model": "charlm", "messages": [{"role": "user", "content": "hi", "name": "\\udfff"}]}', {}),
        ("vocabulary:prompt", "POST", C, j({"model": MODEL, "prompt": "caf\u00e9 \u2603"}), {}),
        ("vocabulary:score", "POST", S, j({"text": "\u00e9\u00e9"}), {}),
        ("vocabulary:replacement_char", "POST", G, j({"prompt": "\u00e9", "unknown_chars": "replace",
                                                       "replacement_char": "\u2603"}), {}),
        # deep nesting
        ("deep_nesting:arrays", "POST", C, b"[" * deep + b"]" * deep, {}),
        ("deep_nesting:objects", "POST", G, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {}),
        ("deep_nesting:in_field", "POST", C, b'{"model": "charlm", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
        ("deep_nesting:800_in_field", "POST", C, b'{"model": "charlm", "prompt": ' + b"[" * 800 + b"]" * 800 + b"}", {}),
        ("deep_nesting:800_stop", "POST", C, b'{"model": "charlm", "prompt": "A", "stop": ' + b"[" * 800 + b'"a"'
         + b"]" * 800 + b"}", {}),
        ("deep_nesting:logit_bias", "POST", C,
         b'{"model": "charlm", "prompt": "A", "logit_bias": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", {}),
        # refused features
        ("refused:suffix", "POST", C, comp(suffix="end"), {}),
        ("refused:presence_penalty", "POST", C, comp(presence_penalty=0.5), {}),
        ("refused:best_of_stream", "POST", C, comp(best_of=3, stream=True), {}),
        ("refused:stop_5", "POST", C, comp(stop=["a", "b", "c", "d", "e"]), {}),
        ("refused:stop_empty", "POST", C, comp(stop=[""]), {}),
        ("refused:tools", "POST", CH, j({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                         "tools": [{"type": "function", "function": {"name": "f"}}]}), {}),
        ("refused:tool_role", "POST", CH, j({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), {}),
        ("refused:image", "POST", CH, j({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}), {}),
        ("refused:json_mode", "POST", CH, j({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "response_format": {"type": "json_object"}}), {}),
        ("refused:no_messages", "POST", CH, j({"model": MODEL, "messages": []}), {}),
        ("refused:kind", "POST", A, j({"text": "ab", "kind": "gates"}), {}),
        ("refused:empty_text", "POST", S, j({"text": ""}), {}),
        ("refused:token_ids", "POST", "/detokenize", j({"tokens": [10 ** 6, -1]}), {}),
    ]
    entries = [(name, method, path, body, headers, "4xx") for name, method, path, body, headers in entries]
    valid = j({"model": MODEL, "prompt": "ROMEO", "max_tokens": 8, "seed": 1})
    entries += [  # a valid body under another content type: the gateway reads the body whatever the header says
        ("content_type:text_plain", "POST", C, valid, {"Content-Type": "text/plain"}, "not5xx"),
        ("content_type:form", "POST", C, valid, {"Content-Type": "application/x-www-form-urlencoded"}, "not5xx"),
        ("content_type:multipart", "POST", C, valid, {"Content-Type": "multipart/form-data; boundary=zz"}, "not5xx"),
        ("content_type:latin1", "POST", S, '{"text": "caf\u00e9"}'.encode("latin-1"),
         {"Content-Type": "application/json; charset=latin-1"}, "4xx"),
    ]
    oversize = j({"model": MODEL, "prompt": "a" * (MAX_BODY_BYTES + 1000)})
    head = f"POST {C} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    entries += [  # sent raw (Client.raw)
        ("oversize:body", "POST", C, (head + f"Content-Length: {len(oversize)}\r\n\r\n").encode() + oversize, {}, "4xx"),
        ("oversize:declared", "POST", C, (head + "Content-Length: 50000000\r\n\r\n").encode() + b'{"model": "charlm"}', {},
         "4xx"),
        ("framing:bad_chunk_size", "POST", G, (f"POST {G} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                              "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").encode(), {}, "not5xx"),
        ("framing:chunk_too_long", "POST", G, (f"POST {G} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                              "5\r\n{\"prompt\": \"A\"}\r\n0\r\n\r\n").encode(), {}, "not5xx"),
        ("framing:content_length_text", "POST", G, f"POST {G} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{{}}".encode(),
         {}, "not5xx"),
        ("framing:short_body_half_close", "POST", G,
         f"POST {G} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"prompt\": \"A\"".encode(), {}, "not5xx"),
        ("framing:request_line", "GET", "/", b"GARBAGE\r\n\r\n", {}, "not5xx"),
        ("framing:header_too_long", "GET", "/healthz",
         ("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * 10000 + "\r\n\r\n").encode(), {}, "not5xx"),
        ("framing:too_many_headers", "GET", "/healthz",
         ("GET /healthz HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-{i}: {i}\r\n" for i in range(200)) + "\r\n").encode(),
         {}, "not5xx"),
    ]
    _CATALOGUE = entries
    return entries


MUTATION_BYTES = b'{}[]":,\\0123456789-+.eE \x00\xff\x80tfn'


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        how = rng.randrange(6)
        if how == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif how == 1:
            data[i] = rng.choice(MUTATION_BYTES)
        elif how == 2:
            del data[i]
        elif how == 3:
            data.insert(i, rng.choice(MUTATION_BYTES))
        elif how == 4:
            j = min(len(data), i + rng.randint(1, 20))
            data[i:i] = data[i:j]
        else:
            del data[i:]
    return bytes(data)


def tamper(rng: random.Random, ctx: Context, token: str) -> tuple[str, str, str]:
    """(name, tampered token, expectation). Unsigned tamperings are what any client can do; signed ones (this
    benchmark holds the gateway's CHARLM_STATE_SECRETS) test the checks behind the signature; `signed_huge` ones are
    states only the gateway could sign, whose outcome is reported, not judged."""
    parts = token.split(".")
    header_b, numbers_b = unb64(parts[0]), unb64(parts[1]) if len(parts) > 1 else b""
    header = json.loads(header_b)
    row = struct.unpack(f"<{len(numbers_b) // 4}f", numbers_b)
    width = len(row)

    def floats(values) -> bytes:
        return struct.pack(f"<{len(values)}f", *values)

    other_widths = [w for w in (width - 1, 1, 129, 2049, 4097) if w != width]  # a 1x64, a 2x512 and a 2x1024 state

    def resized(new_width: int) -> tuple:
        return row[:new_width] + (0.0,) * max(0, new_width - width)

    def flip(text: str) -> str:
        """One base64url character changed so that the bytes it decodes to change too (a last character's
        padding bits are ignored by the decoder: changing only those would alter nothing)."""
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        while True:
            i = rng.randrange(len(text))
            flipped = text[:i] + rng.choice(alphabet.replace(text[i], "")) + text[i + 1:]
            try:
                if unb64(flipped) != unb64(text):
                    return flipped
            except ValueError:
                return flipped

    def with_parts(h: bytes | None = None, n: bytes | None = None) -> str:  # replaced, old signature kept
        return ".".join([b64(h) if h is not None else parts[0], b64(n) if n is not None else parts[1], *parts[2:]])

    other_version = json.dumps({**header, "version": header["version"] + 1}, separators=(",", ":")).encode()
    unsigned = {
        "flip_numbers": lambda: ".".join([parts[0], flip(parts[1]), *parts[2:]]),
        "flip_header": lambda: ".".join([flip(parts[0]), *parts[1:]]),
        "flip_signature": lambda: ".".join([*parts[:-1], flip(parts[-1])]),
        "truncate": lambda: token[:rng.randrange(1, len(token))],
        "drop_signature": lambda: ".".join(parts[:2]),
        "extra_part": lambda: token + ".AAAA",
        "swap_version": lambda: with_parts(h=other_version),
        "other_model": lambda: with_parts(h=json.dumps({**header, "model": "other"}).encode()),
        "other_width": lambda: with_parts(n=floats(resized(rng.choice(other_widths)))),
        "wider": lambda: with_parts(n=floats(row + row)),
        "huge_numbers": lambda: with_parts(n=floats([1e30] * (width - 1) + [row[-1]])),
        "non_finite": lambda: with_parts(n=floats([float("nan")] * (width - 1) + [row[-1]])),
        "garbage": lambda: rng.choice(("", ".", "..", "a.b.c", "\u00e9.\u00e9.\u00e9", "A" * 200_000,
                                       secrets.token_urlsafe(64))),
    }
    signed = {}
    if ctx.forgery:
        signed = {
            "signed_other_version": lambda: ctx.sign(other_version, numbers_b),
            "signed_other_model": lambda: ctx.sign(json.dumps({**header, "model": "other"}).encode(), numbers_b),
            "signed_other_width": lambda: ctx.sign(header_b, floats(resized(rng.choice(other_widths)))),
            "signed_wider": lambda: ctx.sign(header_b, floats(row + (0.0,))),
            "signed_odd_bytes": lambda: ctx.sign(header_b, numbers_b + b"\x00\x00"),
            "signed_nan": lambda: ctx.sign(header_b, floats(row[:-2] + (float("nan"), row[-1]))),
            "signed_inf": lambda: ctx.sign(header_b, floats((float("-inf"),) + row[1:])),
            "signed_negative_position": lambda: ctx.sign(header_b, floats(row[:-1] + (-3.0,))),
            "signed_fractional_position": lambda: ctx.sign(header_b, floats(row[:-1] + (row[-1] + 0.5,))),
            "signed_seed_too_big": lambda: ctx.sign(json.dumps({**header, "seed": 2 ** 70}).encode(), numbers_b),
            "signed_header_list": lambda: ctx.sign(b"[1, 2]", numbers_b),
        }
        observed = {
            "signed_huge_cells": lambda: ctx.sign(header_b, floats([3e38] * (width - 1) + [row[-1]])),
            "signed_huge_position": lambda: ctx.sign(header_b, floats(row[:-1] + (2.0 ** 30,))),
        }
        if rng.random() < 0.15:
            name = rng.choice(sorted(observed))
            return name, observed[name](), "observe"
    table = {**unsigned, **signed}
    name = rng.choice(sorted(table))
    return name, table[name](), "400state"


# --- one backend's run -----------------------------------------------------------------------------------------------

class Outage:
    """Stops the TF Serving stand-in for `seconds` once `at` requests have been taken, then serves again on the
    same port; the window (stop .. gateway ready again + 2 s) is when a 503 is expected."""

    def __init__(self, service, server, port: int, seconds: float, at: int):
        self.service, self.server, self.port, self.seconds, self.at = service, server, port, seconds, at
        self.window: tuple[float, float] | None = None
        self.started_at: float | None = None
        self.stopped_s = self.down_s = self.recovered_s = None

    def run(self, gateway: GunicornGateway) -> None:
        from serving.tfserving_standin import serve

        self.started_at = time.monotonic()
        self.server.stop(0).wait()
        self.stopped_s = time.monotonic() - self.started_at  # stop(0) ends the calls in flight; waits for its threads
        time.sleep(self.seconds)
        self.server, _ = serve(self.service, self.port)
        restarted = time.monotonic()
        self.down_s = restarted - self.started_at
        while not gateway.ready() and time.monotonic() - restarted < 60:
            time.sleep(0.1)
        self.recovered_s = time.monotonic() - restarted
        self.window = (self.started_at, time.monotonic() + 2.0)


def role_shares(text: str) -> dict[str, float]:
    shares = {}
    for part in text.split(","):
        role, _, share = part.partition("=")
        if role.strip() not in ("hangup", "malformed", "tampered", "slow"):
            raise ValueError(f"unknown role {role.strip()!r}: hangup, malformed, tampered, slow")
        shares[role.strip()] = float(share)
    if sum(shares.values()) > 1:
        raise ValueError("the shares add up to more than 1")
    return shares


def assign_roles(count: int, shares: dict[str, float], rng: random.Random) -> list[str]:
    roles = []
    for role, share in shares.items():
        wanted = round(share * count)
        roles += [role] * (max(1, wanted) if share > 0 and count >= 10 else wanted)
    roles += ["normal"] * max(0, count - len(roles))
    rng.shuffle(roles)
    return roles[:count]


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def saturate_threads(port: int, connections: int, hold_s: float = 1.5) -> Counter:
    """Hold `connections` requests half-sent (the request line, then nothing) so each takes a gunicorn thread, then
    finish them: the worker's thread pool grows to its size, and a thread count taken after this is the idle one."""
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        socks.append(s)
    time.sleep(hold_s)
    statuses = Counter()
    for s in socks:
        try:
            s.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        except OSError:
            statuses["send_failed"] += 1
    for s in socks:
        try:
            response = http.client.HTTPResponse(s, method="GET")
            response.begin()
            response.read()
            statuses[response.status] += 1
        except (OSError, http.client.HTTPException):
            statuses["no_reply"] += 1
        finally:
            s.close()
    return statuses


def wait_idle(port: int, timeout_s: float = 60.0) -> dict:
    """Poll /metrics until no stream is admitted or queued; -> the last values and how long it took."""
    started = time.monotonic()
    values = {}
    while True:
        try:
            status, text = get(port, "/metrics")
            samples = metric_samples(text.decode())
            values = {"active_streams": metric_sum(samples, "charlm_active_streams"),
                      "queue_depth": metric_sum(samples, "charlm_queue_depth")}
            if values["active_streams"] == 0 and values["queue_depth"] == 0:
                break
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(0.25)
    values["idle_after_s"] = round(time.monotonic() - started, 2)
    return values


def run_clients(ctx: Context, budget: Budget, roles: list[str], seed: str, join_deadline: float) -> list[Client]:
    clients = [Client(ctx, budget, i, role, f"{seed}:{i}") for i, role in enumerate(roles)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(max(0.0, join_deadline - time.monotonic()))
    return [c for c in clients if c.is_alive()]


def worker_of(gateway: GunicornGateway) -> int:
    workers = children(gateway.process.pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker under {gateway.process.pid}, found {workers}")
    return workers[0]


def soak_backend(backend: str, version_dir: Path, args, workdir: Path) -> dict:
    """One backend: start it, warm up, fill the thread pool, measure idle, soak, measure idle again, judge."""
    secret = secrets.token_hex(24)
    env = {"CHARLM_MAX_STREAMS": str(args.max_streams), "CHARLM_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
           "CHARLM_STATE_SECRETS": secret, "WEB_CONCURRENCY": "1", "CHARLM_API_KEYS": None}
    standin = outage = None
    if backend == "tfserving":
        import tensorflow as tf

        from serving.tfserving_standin import SavedModelPredictionService, serve

        service = SavedModelPredictionService(MODEL, {int(version_dir.name): tf.saved_model.load(str(version_dir))})
        service.requests = deque(maxlen=100)  # the stand-in keeps every request it got: a soak's would fill memory
        server, grpc_port = serve(service, free_port())
        standin = (service, server, grpc_port)
        env.update(CHARLM_BACKEND="tfserving", CHARLM_TFSERVING_ADDRESS=f"127.0.0.1:{grpc_port}")
    log = workdir / f"gunicorn-{backend}.log"
    gateway = GunicornGateway(version_dir.parent, log, env, ready_timeout_s=300, stop_timeout_s=60)
    started = time.monotonic()
    deadline = started + args.seconds_limit
    result = {"backend": backend, "requests_asked": args.requests, "clients": args.clients,
              "hidden": args.hidden, "layers": args.layers, "max_streams": args.max_streams}
    try:
        gateway.start()
        port = gateway.port
        status, card = get(port, f"/v1/models/{MODEL}")
        ctx = Context(port, strict_json(card), secret, args.max_streams)
        worker = worker_of(gateway)
        rng = random.Random(f"{args.seed}:{backend}")
        roles = assign_roles(args.clients, role_shares(args.roles), rng)
        result["roles"] = dict(Counter(roles))

        warmup = min(args.warmup, args.requests // 4)
        budget = Budget(warmup, deadline)
        stuck = run_clients(ctx, budget, roles, f"{args.seed}:{backend}:warmup", deadline + 120)
        saturation = saturate_threads(port, args.max_streams + 16 + 8)  # gunicorn.conf.py: threads = streams + 16
        idle_warm = wait_idle(port)
        time.sleep(1.0)
        warm = proc_status(worker)
        warm_outcomes = len(ctx.outcomes)

        # The soak in two halves with an idle reading between: the allocator's own warm-up can only grow the
        # first half's RSS; a leak grows both.
        soak_total = args.requests - warmup
        if standin is not None and args.outage_seconds > 0:
            outage = Outage(*standin, args.outage_seconds, at=int(0.6 * soak_total))
        samples, soak_requests, mid = [], 0, None
        for half, count in enumerate((soak_total // 2, soak_total - soak_total // 2)):
            budget, stop_sampling = Budget(count, deadline), threading.Event()

            def monitor(budget=budget, offset=soak_requests, stop=stop_sampling):
                while not stop.wait(2.0):
                    try:
                        samples.append((offset + budget.taken, proc_status(worker)))
                    except OSError:
                        return
                    if outage is not None and outage.started_at is None and offset + budget.taken >= outage.at:
                        outage.run(gateway)

            sampler = threading.Thread(target=monitor, name="soak-monitor", daemon=True)
            sampler.start()
            stuck += run_clients(ctx, budget, roles, f"{args.seed}:{backend}:soak{half}", deadline + 120)
            stop_sampling.set()
            sampler.join(120)
            soak_requests += budget.taken
            if half == 0:
                idle_mid = wait_idle(port)
                time.sleep(1.0)
                mid = {**proc_status(worker), "requests": soak_requests, **idle_mid}
        stopped_by = "requests" if soak_requests == soak_total else "time"
        idle_end = wait_idle(port)
        time.sleep(1.0)
        try:
            end = proc_status(worker)
            same_worker = worker_of(gateway) == worker
        except (OSError, RuntimeError):
            end, same_worker = {}, False
        ready_end = gateway.ready()
        _, metrics_text = get(port, "/metrics")
        elapsed = time.monotonic() - started
    finally:
        gateway.stop()
        if standin is not None:
            (outage.server if outage is not None else standin[1]).stop(0)
    log_text = log.read_text(errors="replace")
    if args.rss_trace is not None:
        with open(args.rss_trace, "a") as f:
            f.writelines(f"{backend},{taken},{status['rss_kib'] / 1024:.1f}\n" for taken, status in samples)
    result.update(judge_run(ctx, warm_outcomes, outage, stuck, saturation, idle_warm, mid, idle_end, warm, end,
                            same_worker, ready_end, metric_samples(metrics_text.decode()), log_text, soak_requests,
                            stopped_by, elapsed, args, samples))
    if not result["passed"]:
        kept = Path(tempfile.gettempdir()) / f"charlm-soak-{backend}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        shutil.copy(log, kept)
        result["gunicorn_log"] = str(kept)
    return result


def gateway_figures(samples, elapsed: float) -> dict:
    """What the gateway's own metrics say about its work over the run: generated characters, and its `generate`
    calls (how many, how long on average, how many streams each advanced)."""
    calls = metric_sum(samples, "charlm_backend_call_seconds_count", signature="generate")
    call_s = metric_sum(samples, "charlm_backend_call_seconds_sum", signature="generate")
    batches = metric_sum(samples, "charlm_batch_size_count")
    chars = metric_sum(samples, "charlm_generated_chars_total")
    return {"server_generated_chars": int(chars), "server_chars_per_s": round(chars / elapsed) if elapsed else None,
            "server_generate_calls": int(calls), "server_generate_call_ms_mean": round(1000 * call_s / calls, 1)
            if calls else None, "server_batch_mean": round(metric_sum(samples, "charlm_batch_size_sum") / batches, 1)
            if batches else None, "server_chars_per_call_mean": round(chars / calls, 1) if calls else None}


def observed_only(o: Outcome) -> bool:
    """A state only the gateway could have signed, with huge numbers in it: what happens is reported, not judged."""
    return o.kind == "tampered" and (o.note or "").startswith("signed_huge")


def slope_per_1000(samples: list[tuple[int, dict]]) -> float | None:
    """Least-squares RSS growth (MiB) per 1,000 requests over the samples taken while the soak ran."""
    points = [(taken, status["rss_kib"] / 1024) for taken, status in samples if "rss_kib" in status]
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def judge_run(ctx: Context, warm_outcomes: int, outage: Outage | None, stuck: list, saturation: Counter,
              idle_warm: dict, mid: dict, idle_end: dict, warm: dict, end: dict, same_worker: bool, ready_end: bool,
              server_metrics, log_text: str, soak_requests: int, stopped_by: str, elapsed: float, args,
              rss_samples: list) -> dict:
    outcomes = ctx.outcomes
    window = outage.window if outage is not None else None
    statuses, problems, samples, by_role = Counter(), Counter(), defaultdict(list), defaultdict(Counter)
    sources = defaultdict(Counter)  # per problem category: the catalogue entry, tampering or kind of request
    expected_503, expected_at = 0, []  # and when they started, relative to the stop
    for o in outcomes:
        label = o.status if o.stream_error is None else f"200+error:{o.stream_error}"
        statuses[str(label)] += 1
        by_role[o.role][str(label)] += 1
        if o.problem is None or observed_only(o):
            continue
        category = o.problem.split(":", 1)[0]
        in_outage = window is not None and o.started <= window[1] and o.ended >= window[0]
        if in_outage and category in ("5xx", "stream_error", "unexpected_status") and (
                o.status == 503 or o.server_status == 503):
            expected_503 += 1
            expected_at.append(o.started - window[0])
            continue
        problems[category] += 1
        sources[category][o.note or o.kind] += 1
        if len(samples[category]) < FAILURE_SAMPLES:
            samples[category].append(o)
    completed = [o for o in outcomes if o.status == 200 and o.problem is None and o.stream_error is None]
    ttfc = [o.ttfc_s for o in outcomes if o.ttfc_s is not None and o.stream_error is None]
    observed = Counter(f"{o.note} {o.status}" + (f" ({o.problem.split(':', 1)[0]})" if o.problem else "")
                       for o in outcomes if observed_only(o))
    tampered = Counter(str(o.status) for o in outcomes if o.kind == "tampered" and not observed_only(o))
    malformed = Counter(str(o.status) for o in outcomes if o.kind in ("malformed", "mutated"))
    by_entry = defaultdict(Counter)  # the catalogue's entries and the tamperings, each by status
    for o in outcomes:
        if o.kind in ("malformed", "tampered") and o.note:
            by_entry[o.note][str(o.status)] += 1
    soak_part = outcomes[warm_outcomes:]
    def growth(before: dict, after: dict, requests: int) -> float | None:
        if not after or not before or requests <= 0:
            return None
        return (after["rss_kib"] - before["rss_kib"]) / 1024 / (requests / 1000)

    per_1000 = growth(warm, end, soak_requests)
    first_half = growth(warm, mid, mid["requests"])
    second_half = growth(mid, end, soak_requests - mid["requests"])
    tracebacks = log_text.count("Traceback (most recent call last)")
    error_lines = [line for line in log_text.splitlines() if line.startswith("ERROR") or "[ERROR]" in line
                   or "WORKER TIMEOUT" in line or "[CRITICAL]" in line]
    length_checked = sum(1 for o in completed if o.kind not in ("light", "malformed", "mutated"))
    checks = {
        "no_5xx": problems["5xx"] == 0 and problems["stream_error"] == 0,
        "bad_input_refused": problems["accepted_bad_input"] == 0 and problems["bad_envelope"] == 0,
        "tampered_states_refused": problems["tampered_state_accepted"] == 0 and problems["tampered_state_wrong_code"] == 0,
        "valid_requests_served": problems["unexpected_status"] == 0 and problems["conn_error"] == 0,
        "strict_json": problems["bad_json"] == 0,
        "lengths": problems["length"] == 0 and problems["choices"] == 0 and problems["echo"] == 0,
        "replies_well_formed": sum(problems[c] for c in ("stream", "logprobs", "generate", "score", "activations",
                                                         "light", "client_bug")) == 0,
        "continuations_equal": ctx.continuations["mismatched"] == 0,
        "streams_back_to_idle": all(i.get("active_streams") == 0 and i.get("queue_depth") == 0 for i in (mid, idle_end)),
        "threads_back_to_idle": bool(end) and end["threads"] <= warm["threads"] and mid["threads"] <= warm["threads"],
        "memory_flat": second_half is not None and second_half <= args.max_rss_growth_mib,
        "same_worker_still_ready": same_worker and ready_end,
        "no_tracebacks_in_log": tracebacks == 0,
        "clients_finished": not stuck,
        "requests_done": stopped_by == "requests",
        "thread_pool_filled": set(saturation) == {200},
    }
    result = {
        "requests": len(outcomes), "warmup_requests": warm_outcomes, "soak_requests": soak_requests,
        "stopped_by": stopped_by, "seconds": round(elapsed, 1), "statuses": dict(sorted(statuses.items())),
        "statuses_by_role": {role: dict(sorted(c.items())) for role, c in sorted(by_role.items())},
        "problems": dict(problems), "problem_sources": {c: dict(n.most_common()) for c, n in sources.items()},
        "expected_503_in_outage": expected_503,
        "outage": None if outage is None else {
            "seconds": outage.seconds, "at_request": outage.at, "happened": outage.started_at is not None,
            "stop_took_s": None if outage.stopped_s is None else round(outage.stopped_s, 2),
            "down_s": None if outage.down_s is None else round(outage.down_s, 2),
            "gateway_ready_again_after_s": None if outage.recovered_s is None else round(outage.recovered_s, 2),
            "window_s": None if window is None else round(window[1] - window[0], 2),
            "503_started_s_after_the_stop": None if not expected_at else
            [round(min(expected_at), 2), round(statistics.median(expected_at), 2), round(max(expected_at), 2)]},
        "completed_replies_length_checked": length_checked,
        "streams_completed": sum(1 for o in completed if o.streamed),
        "hung_up": statuses["hung_up"],
        "malformed_statuses": dict(sorted(malformed.items())),
        "tampered_statuses": dict(sorted(tampered.items())), "signed_huge_states": dict(sorted(observed.items())),
        "statuses_by_entry": {name: dict(c) for name, c in sorted(by_entry.items())},
        "signed_tampering_tested": bool(ctx.forgery),
        "continuations_checked": ctx.continuations["checked"], "continuations_mismatched": ctx.continuations["mismatched"],
        "ttfc_ms_p50": None if not ttfc else round(percentile(ttfc, 50) * 1000, 1),
        "ttfc_ms_p99": None if not ttfc else round(percentile(ttfc, 99) * 1000, 1), "ttfc_streams": len(ttfc),
        "active_streams_after": idle_end.get("active_streams"), "queue_depth_after": idle_end.get("queue_depth"),
        "idle_after_s": idle_end.get("idle_after_s"),
        "threads_idle_after_warmup": warm["threads"], "threads_idle_at_middle": mid["threads"],
        "threads_idle_at_end": end.get("threads"),
        "thread_pool_fill": dict(saturation),
        "rss_mib_after_warmup": round(warm["rss_kib"] / 1024, 1), "rss_mib_at_middle": round(mid["rss_kib"] / 1024, 1),
        "anon_file_mib_after_warmup": [round(warm.get("anon_kib", 0) / 1024, 1), round(warm.get("file_kib", 0) / 1024, 1)],
        "anon_file_mib_at_end": [round(end.get("anon_kib", 0) / 1024, 1), round(end.get("file_kib", 0) / 1024, 1)],
        "rss_mib_at_end": round(end["rss_kib"] / 1024, 1) if end else None,
        "rss_growth_mib_per_1000_requests": None if per_1000 is None else round(per_1000, 2),
        "rss_growth_mib_per_1000_first_half": None if first_half is None else round(first_half, 2),
        "rss_growth_mib_per_1000_second_half": None if second_half is None else round(second_half, 2),
        "rss_slope_mib_per_1000_under_load": None if slope_per_1000(rss_samples) is None
        else round(slope_per_1000(rss_samples), 2),
        "rss_mib_peak_under_load": max((st["rss_kib"] for _, st in rss_samples), default=0) // 1024 or None,
        "server_responses": {f"{l.get('endpoint')} {l.get('status')}": int(v) for n, l, v in server_metrics
                             if n == "charlm_responses_total" and v and not str(l.get("status", "")).startswith("2")},
        "server_cancelled_streams": int(metric_sum(server_metrics, "charlm_cancelled_streams_total")),
        **gateway_figures(server_metrics, elapsed),
        "log_tracebacks": tracebacks, "log_error_lines": len(error_lines),
        "checks": checks, "failed_checks": [name for name, ok in checks.items() if not ok],
    }
    result["passed"] = not result["failed_checks"]
    result["_samples"] = samples
    result["_error_lines"] = error_lines[:10]
    result["_soak_outcomes"] = len(soak_part)
    return result


def report_failures(result: dict) -> None:
    for category, outcomes in result["_samples"].items():
        for o in outcomes:
            print(f"[{result['backend']}] FAIL {category}: role={o.role} kind={o.kind} note={o.note} status={o.status}"
                  f"\n    problem: {o.problem}\n    request: {o.request}\n    response: {o.response}",
                  file=sys.stderr)
    for line in result["_error_lines"]:
        print(f"[{result['backend']}] gunicorn log: {line}", file=sys.stderr)


# --- the record ------------------------------------------------------------------------------------------------------

def outage_times(outage: dict) -> str:
    times = outage.get("503_started_s_after_the_stop")
    return "—" if not times else f"{times[0]:g} … {times[2]:g} (median {times[1]:g})"


def counts(c: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in c.items()) or "none"


def record(results: list[dict], args, command: str, tf_version: str) -> None:
    cols = [r["backend"] for r in results]

    def row(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in results) + " |\n"

    def ms(value) -> str:
        return "—" if value is None else f"{value:.1f} ms"

    table = ("| | " + " | ".join(cols) + " |\n| --- |" + " --- |" * len(cols) + "\n"
             + row("requests (warm-up + soak), stopped by, wall time",
                   lambda r: f"{r['requests']:,} ({r['warmup_requests']:,} + {r['soak_requests']:,}), "
                             f"{r['stopped_by']}, {r['seconds']:.0f} s")
             + row("statuses", lambda r: counts(r["statuses"]))
             + row("5xx outside an outage; 503 while the stand-in was down",
                   lambda r: f"{r['problems'].get('5xx', 0) + r['problems'].get('stream_error', 0)}; "
                             f"{r['expected_503_in_outage']}"
                             + (" (the soak ended before the planned outage)" if r["outage"] and not r["outage"]["happened"]
                                else f" (stand-in down {r['outage']['down_s']} s; the gateway ready again "
                                f"{r['outage']['gateway_ready_again_after_s']} s after its restart; the failed requests "
                                f"started {outage_times(r['outage'])} s after the stop)" if r["outage"] else ""))
             + row("malformed and mutated bodies", lambda r: counts(r["malformed_statuses"]))
             + row("tampered states", lambda r: counts(r["tampered_statuses"])
                   + ("" if r["signed_tampering_tested"] else " (signed ones not tested: states could not be forged)"))
             + row("signed states with huge numbers (reported, not judged)", lambda r: counts(r["signed_huge_states"]))
             + row("replies and completed streams of the length asked for",
                   lambda r: f"{r['completed_replies_length_checked'] - r['problems'].get('length', 0):,} of "
                             f"{r['completed_replies_length_checked']:,} ({r['streams_completed']:,} streams)")
             + row("generate continuations equal to one request", lambda r:
                   f"{r['continuations_checked'] - r['continuations_mismatched']} of {r['continuations_checked']}")
             + row("hang-ups; streams the server cancelled",
                   lambda r: f"{r['hung_up']:,}; {r['server_cancelled_streams']:,}")
             + row("time to first character, streamed (p50 / p99)",
                   lambda r: f"{ms(r['ttfc_ms_p50'])} / {ms(r['ttfc_ms_p99'])} ({r['ttfc_streams']:,} streams)")
             + row("gateway `generate` calls: count, mean duration, mean streams per call, characters per call",
                   lambda r: f"{r['server_generate_calls']:,}, {r['server_generate_call_ms_mean']} ms, "
                             f"{r['server_batch_mean']}, {r['server_chars_per_call_mean']} "
                             f"({r['server_chars_per_s']:,} chars/s over the run)")
             + row("active streams, queue depth after", lambda r: f"{r['active_streams_after']:g}, "
                                                                   f"{r['queue_depth_after']:g}")
             + row("worker threads, idle: after warm-up (pool filled) → middle → end",
                   lambda r: f"{r['threads_idle_after_warmup']} → {r['threads_idle_at_middle']} → "
                             f"{r['threads_idle_at_end']}")
             + row("worker RSS, idle: after warm-up → middle → end",
                   lambda r: f"{r['rss_mib_after_warmup']} → {r['rss_mib_at_middle']} → {r['rss_mib_at_end']} MiB")
             + row("RSS growth per 1,000 requests: whole soak (first half, second half)",
                   lambda r: f"{r['rss_growth_mib_per_1000_requests']} MiB ({r['rss_growth_mib_per_1000_first_half']}, "
                             f"{r['rss_growth_mib_per_1000_second_half']})")
             + row("tracebacks in the gunicorn log", lambda r: str(r["log_tracebacks"]))
             + row("failed checks", lambda r: ", ".join(r["failed_checks"]) or "none"))
    problems = "".join(
        f"- {r['backend']}, {category} ({r['problems'][category]:,}): "
        + ", ".join(f"`{source}` {count:,}" for source, count in r["problem_sources"][category].items())
        + f"; e.g. `{excerpt(r['_samples'][category][0].problem.strip(), 160)}`\n"
        for r in results for category in r["problem_sources"])
    with open(RESULTS, "a") as f:
        f.write(f"\n### Soak (`make soak`), {time.strftime('%Y-%m-%d')}\n\n"
                f"`{command}`, {machine()}, TensorFlow {tf_version}, gunicorn (serving/gunicorn.conf.py, 1 gthread "
                f"worker, CHARLM_MAX_STREAMS={args.max_streams}) on 127.0.0.1, {args.layers}x{args.hidden} LSTM "
                f"(random weights, tiny-shakespeare's 65 characters), {args.clients} client threads sharing "
                f"{args.requests:,} requests per backend (seed {args.seed}; roles: 20% hang up mid-stream, 10% "
                f"malformed or mutated bodies, 5% tampered states, 10% slow readers, the rest a mix of plain and "
                f"streamed completions and chat, generate chains through their states, score, activations). "
                f"`tfserving` goes through serving/tfserving_standin.py (not TF Serving), stopped "
                f"{args.outage_seconds:g} s mid-run. Load average at the end: {os.getloadavg()[0]:.1f} on "
                f"{os.cpu_count()} cores.\n\n{table}"
                + (f"\nProblems found:\n\n{problems}" if problems else ""))


def export_model(args, workdir: Path) -> Path:
    from training.config import TrainConfig
    from training.export import export_untrained

    config = dataclasses.replace(TrainConfig(), hidden_size=args.hidden, num_layers=args.layers, embedding_size=64,
                                 dropout=0.0)
    return export_untrained(config, list(VOCAB), workdir, MODEL)  # -> <workdir>/charlm/1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 20,000 with 5,000 of warm-up: the worker's heap keeps growing for a while as glibc's allocator fills (every
    # quarter of a 20,000-request soak grew less than the one before: 5.89, 1.78, 1.15, 0.98 MiB per 1,000), and
    # at 10,000 (2,000 warm-up) the second half still caught that on an AMD EPYC (2.46 against the 2.0 bound,
    # 2026-12-02; 1.22 at 20,000): a leak grows at the same rate throughout, so a longer run tells them apart.
    parser.add_argument("--requests", type=int, default=20000, help="HTTP requests per backend (warm-up included)")
    parser.add_argument("--clients", type=int, default=120, help="concurrent client threads")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--backend", choices=("local", "tfserving", "both"), default="both")
    parser.add_argument("--seconds-limit", type=float, default=1800.0,
                        help="per backend: no request starts after this; the run is then reported as cut short")
    parser.add_argument("--warmup", type=int, default=5000, help="requests before the idle thread and RSS reading "
                                                                 "(at most a quarter of --requests)")
    parser.add_argument("--max-streams", type=int, default=128,
                        help="CHARLM_MAX_STREAMS (gunicorn threads = this + 16): room for every client at once")
    parser.add_argument("--outage-seconds", type=float, default=5.0,
                        help="tfserving: the stand-in is stopped this long after 60%% of the soak (0: never)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=2.0,
                        help="worker RSS growth per 1,000 requests in the soak's second half that still counts as "
                             "flat (the first half also holds the allocator's own warm-up)")
    parser.add_argument("--roles", default=ROLES, help="shares of the clients that hang up, send malformed bodies, "
                                                        "tampered states, read slowly (the rest: normal clients)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-trace", type=Path, metavar="CSV",
                        help="also write the worker's RSS under load (requests so far, MiB, every 2 s) to this file")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    args = parser.parse_args()
    if args.requests < 8 or args.clients < 1:
        parser.error("--requests must be at least 8 and --clients at least 1")
    try:
        role_shares(args.roles)
    except ValueError as e:
        parser.error(f"--roles: {e}")

    def stop(signum, frame):
        raise SystemExit(f"soak: stopped by signal {signum}")  # so `finally` stops gunicorn and the stand-in

    signal.signal(signal.SIGTERM, stop)
    import tensorflow as tf

    backends = ("local", "tfserving") if args.backend == "both" else (args.backend,)
    command = "python -m benchmarks.soak" + ("".join(f" {a}" for a in sys.argv[1:]))
    results = []
    with tempfile.TemporaryDirectory(prefix="charlm-soak-") as tmp:
        workdir = Path(tmp)
        version = export_model(args, workdir)
        for backend in backends:
            result = soak_backend(backend, version, args, workdir)
            report_failures(result)
            print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}), flush=True)
            results.append(result)
    if not args.no_record:
        record(results, args, command, tf.__version__)
    failed = [f"{r['backend']}: {', '.join(r['failed_checks'])}" for r in results if not r["passed"]]
    if failed:
        print("soak: checks failed -- " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
