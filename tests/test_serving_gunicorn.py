"""End to end: gunicorn (serving/gunicorn.conf.py, gthread) serving the session's tiny model on 127.0.0.1,
driven by the official `openai` client, by langchain-openai (`OpenAI`, `ChatOpenAI`), both as installed from the
registry, and by a raw socket that hangs up mid-stream. Spawned once."""
import os
import runpy
import signal
import json
import socket
from pathlib import Path

import pytest
import requests

from model_interface.chat import ChatTemplate
from serving.launch import GunicornGateway
from serving_helpers import metric_value, wait_until

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key"
CHAT = [{"role": "system", "content": "A street in Verona."}, {"role": "user", "content": "Good morrow, fair maid."}]
CHAT_PROMPT = ChatTemplate.layout("play").render(CHAT)  # the session's version has the play template


def test_configuration(monkeypatch, tmp_path):
    """Read as gunicorn reads it: threads for every stream, no preloading (TensorFlow and gRPC after the fork)."""
    from gunicorn.config import Config

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("CHARLM_MAX_STREAMS", "10")
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setenv("CHARLM_STATE_SECRETS", "")  # as unset; monkeypatch restores the real value after the test
    config = Config()
    for name, value in runpy.run_path(str(ROOT / "serving/gunicorn.conf.py")).items():
        if name in config.settings:
            config.set(name, value)
    assert config.worker_class_str == "gthread" and config.workers == 1 and config.threads == 26
    assert not config.preload_app and config.graceful_timeout >= 10 and config.control_socket_disable
    # One state secret for all workers when none is set, made in the master, so they accept each other's states.
    assert len(os.environ["CHARLM_STATE_SECRETS"]) >= 32
    (tmp_path / "counter_1.db").write_bytes(b"")
    config.on_starting(None)
    assert not list(tmp_path.iterdir())  # a previous run's values are wiped at start


ARENA_COUNT = """
import ctypes, runpy, sys, threading
if sys.argv[1] == "config":
    runpy.run_path(sys.argv[2])  # as gunicorn's master reads it, before it forks
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(16)
def allocate():  # each thread's first malloc takes an arena of its own while there may be more
    barrier.wait()
    libc.free(ctypes.c_void_p(libc.malloc(4096)))
threads = [threading.Thread(target=allocate) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()  # one "Arena n:" block per arena, on stderr
"""


def test_the_master_limits_malloc_arenas_for_its_workers(tmp_path):
    """With the local backend the configuration caps glibc's arenas (the soak's memory growth); MALLOC_ARENA_MAX in
    the environment wins."""
    import subprocess
    import sys

    def arenas(*argv, **env):
        run = subprocess.run([sys.executable, "-c", ARENA_COUNT, *argv],
                             env={k: v for k, v in {**os.environ, **env}.items() if k != "MALLOC_ARENA_MAX" or v},
                             capture_output=True, text=True, timeout=60, check=True)
        return run.stderr.count("Arena ")

    config = str(ROOT / "serving/gunicorn.conf.py")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "MALLOC_ARENA_MAX": "", "CHARLM_BACKEND": "local"}
    assert arenas("bare", **env) > 2  # glibc's default: an arena per thread, up to 8 per core
    assert arenas("config", config, **env) == 2
    assert arenas("config", config, **{**env, "MALLOC_ARENA_MAX": "3"}) == 3
    assert arenas("config", config, **{**env, "CHARLM_BACKEND": "tfserving"}) > 2  # no model in the worker


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
def test_openai_client_reads_greedy_text_and_logprobs(client):
    """The official client parses the legacy logprobs shape, a log-likelihood request (echo, max_tokens 0) included,
    and vLLM's extra sampling fields pass through its extra_body."""
    greedy = client.completions.create(model="charlm", prompt="ROMEO:\n", max_tokens=40, temperature=0, logprobs=2)
    choice = greedy.choices[0]
    assert choice.logprobs.tokens == list(choice.text) and len(choice.logprobs.top_logprobs) == 40
    assert all(lp == max(top.values()) for lp, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs))
    assert client.completions.create(model="charlm", prompt="ROMEO:\n", max_tokens=40, temperature=1,
                                     extra_body={"top_k": 1}).choices[0].text == choice.text
    scored = client.completions.create(model="charlm", prompt="ROMEO:\n", max_tokens=0, echo=True, logprobs=0)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == "ROMEO:\n" and logprobs.token_logprobs[0] is None
    assert all(lp < 0 for lp in logprobs.token_logprobs[1:]) and logprobs.text_offset == list(range(7))


@pytest.mark.slow
def test_openai_client_sees_errors(client, gateway):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="charlm", prompt="A", temperature=-1)  # (0 is greedy)
    assert raised.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="A")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.slow
def test_openai_client_chat_plain_and_streaming(client):
    """The official client's chat.completions, plain and streamed: the reply is the model continuing the
    conversation as the version's chat template writes it, up to the template's stop string."""
    completion = client.chat.completions.create(model="charlm", messages=CHAT, max_completion_tokens=200, seed=12,
                                                temperature=0.8)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    content = choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    same = client.completions.create(model="charlm", prompt=CHAT_PROMPT, max_tokens=200, seed=12, temperature=0.8,
                                     stop=["\n\n"]).choices[0]
    assert (content, choice.finish_reason) == (same.text, same.finish_reason)
    assert completion.usage.prompt_tokens == len(CHAT_PROMPT) and completion.usage.completion_tokens == len(content)
    chunks = list(client.chat.completions.create(model="charlm", messages=CHAT, max_completion_tokens=200, seed=12,
                                                 temperature=0.8, stream=True,
                                                 stream_options={"include_usage": True}))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == content
    assert with_choices[-1].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(content)


@pytest.mark.slow
def test_openai_client_chat_greedy_with_logprobs(client):
    greedy = client.chat.completions.create(model="charlm", messages=CHAT, max_tokens=40, temperature=0,
                                            logprobs=True, top_logprobs=2)
    choice = greedy.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert all(bytes(e.bytes).decode("utf-8") == e.token and len(e.top_logprobs) == 2 for e in entries)
    assert all(e.top_logprobs[0].token == e.token and e.logprob == e.top_logprobs[0].logprob for e in entries)
    legacy = client.completions.create(model="charlm", prompt=CHAT_PROMPT, max_tokens=40, temperature=0,
                                       stop=["\n\n"]).choices[0]
    assert choice.message.content == legacy.text


@pytest.mark.slow
def test_openai_client_sees_chat_refusals(client):
    import openai

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="charlm", messages=CHAT, tools=[tool])
    assert raised.value.body["param"] == "tools" and raised.value.body["code"] == "unsupported_parameter"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/a.png"}}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="charlm", messages=image)
    assert raised.value.body["code"] == "unsupported_content"


@pytest.fixture
def langchain_offline(monkeypatch):
    """No tracing to LangSmith and no OpenAI settings from the environment: only the gateway is called."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING", "LANGSMITH_API_KEY",
                 "LANGCHAIN_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORG_ID",
                 "OPENAI_ORGANIZATION", "OPENAI_PROXY"):
        monkeypatch.delenv(name, raising=False)


def gateway_post(gateway, path: str, body: dict) -> dict:
    response = requests.post(gateway.url + path, json={"model": "charlm", **body}, timeout=60,
                             headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_langchain_chat_openai_invoke_and_stream(gateway, langchain_offline):
    """langchain-openai's ChatOpenAI, unmodified: invoke() returns the greedy reply the gateway gives for the same
    request, stream() the same text in pieces (with the usage, when asked)."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    expected = gateway_post(gateway, "/v1/chat/completions", {"messages": CHAT, "temperature": 0,
                                                              "max_completion_tokens": 40})["choices"][0]
    llm = ChatOpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, model="charlm", temperature=0, max_tokens=40,
                     max_retries=0, timeout=60)
    messages = [SystemMessage(CHAT[0]["content"]), HumanMessage(CHAT[1]["content"])]
    reply = llm.invoke(messages)
    assert reply.content == expected["message"]["content"]
    assert reply.response_metadata["finish_reason"] == expected["finish_reason"]
    assert reply.usage_metadata["input_tokens"] == len(CHAT_PROMPT)
    assert reply.usage_metadata["output_tokens"] == len(reply.content)
    chunks = list(llm.stream(messages, stream_usage=True))
    pieces = [c.content for c in chunks if c.content]
    assert "".join(pieces) == reply.content and len(pieces) >= (2 if len(reply.content) > 8 else 1)
    total = sum(chunks[1:], chunks[0])
    assert total.usage_metadata["output_tokens"] == len(reply.content)
    assert total.response_metadata["finish_reason"] == expected["finish_reason"]


@pytest.mark.slow
def test_langchain_openai_completions_invoke_and_stream(gateway, langchain_offline):
    """langchain-openai's OpenAI (legacy completions), unmodified: it sends a list of prompts and neutral
    penalties, and reads the greedy text back."""
    from langchain_openai import OpenAI

    expected = gateway_post(gateway, "/v1/completions", {"prompt": "ROMEO:\n", "temperature": 0,
                                                         "max_tokens": 40})["choices"][0]["text"]
    llm = OpenAI(base_url=gateway.url + "/v1", api_key=API_KEY, model="charlm", temperature=0, max_tokens=40,
                 max_retries=0, timeout=60)
    assert llm.invoke("ROMEO:\n") == expected and len(expected) == 40
    pieces = list(llm.stream("ROMEO:\n"))
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1
    assert llm.batch(["ROMEO:\n", "JULIET:\n"])[0] == expected


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
def test_hanging_up_a_plain_request_stops_the_generation(gateway):
    """A non-streaming request writes nothing until its end: the gateway watches the client's socket
    (gunicorn.socket) instead, so the rows of a client gone leave the batch at the next chunk (serving/disconnect.py)."""
    url = gateway.url
    before = metric_value(metrics(url), "charlm_cancelled_streams_total") or 0
    chars_before = metric_value(metrics(url), "charlm_generated_chars_total") or 0
    body = b'{"model": "charlm", "prompt": "A", "max_tokens": 8192}'
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(lambda: metric_value(metrics(url), "charlm_active_streams") == 1, timeout=30)
    assert wait_until(lambda: metric_value(metrics(url), "charlm_active_streams") == 0, timeout=30)
    scraped = metrics(url)
    assert metric_value(scraped, "charlm_cancelled_streams_total") == before + 1
    assert metric_value(scraped, "charlm_generated_chars_total") - chars_before < 8192


def raw_reply(port: int, request: bytes) -> bytes:
    """Everything the server sends back for one raw request, until it closes or stays quiet for 10 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and b'"error"' in reply:
                    break
        except TimeoutError:
            pass
    return reply


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [
    b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hexadecimal
    b"2\r\n{\"model\": \"charlm\"}\r\n0\r\n\r\n",  # a chunk longer than its size: no CRLF where it ends
])
def test_a_chunked_body_with_broken_framing_is_a_400_envelope(gateway, chunks):
    """gunicorn's reader raises inside request.get_data(); the gateway answers for it (serving/request_body.py)."""
    reply = raw_reply(gateway.port, b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split()[1] == b"400", reply[:500]
    error = json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])["error"]
    assert error["code"] == "invalid_body" and "chunked framing is broken" in error["message"]
    assert requests.get(gateway.url + "/healthz", timeout=10).status_code == 200  # the worker is still there


@pytest.mark.slow
@pytest.mark.parametrize("request_bytes, status, said", [
    (b"GARBAGE\r\n\r\n", b"400", "Invalid Request Line"),  # no method, path and version
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n", b"400", "Invalid HTTP Header"),
    (b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
     b"431", "Request Header Fields Too Large"),  # past gunicorn's limit_request_fields (100)
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", b"414", "URI Too Long"),
])
def test_a_request_gunicorn_cannot_parse_gets_the_error_envelope(gateway, request_bytes, status, said):
    """gunicorn answers these before the app sees them (gunicorn.conf.py's _write_json_error): JSON, not HTML."""
    reply = raw_reply(gateway.port, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split()[1] == status, reply[:500]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert said in error["message"] and error["type"] == "invalid_request_error"
    assert requests.get(gateway.url + "/healthz", timeout=10).status_code == 200


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
