"""POST /v1/completions and GET /v1/models through Flask's test client, on the session's tiny model."""
import threading

import pytest

from model_interface.errors import ModelUnavailable
from model_interface.signatures import SamplingSettings
from serving.app import create_app
from serving_helpers import assert_error, metric_value, sse_payloads, wait_until


def complete(client, **body):
    return client.post("/v1/completions", json={"model": "charlm", **body})


def test_completion_is_openai_shaped_and_seeded(client, model_client):
    reply = complete(client, prompt="ROMEO:\n", max_tokens=60, seed=7, temperature=0.8).get_json()
    assert reply["object"] == "text_completion" and reply["model"] == "charlm" and reply["id"].startswith("cmpl-")
    (choice,) = reply["choices"]
    assert len(choice["text"]) == 60 and choice["finish_reason"] == "length" and choice["index"] == 0
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 60, "total_tokens": 67}
    again = complete(client, prompt="ROMEO:\n", max_tokens=60, seed=7, temperature=0.8).get_json()
    assert again["choices"][0]["text"] == choice["text"]
    # The same text the exported signature gives in one call: the gateway's chunking changes nothing.
    direct = model_client.generate(["ROMEO:\n"], 60, SamplingSettings(temperature=0.8, seed=7))["text"][0]
    assert choice["text"] == direct


def test_streamed_text_equals_plain_text(client):
    plain = complete(client, prompt="KING:", max_tokens=120, seed=3).get_json()["choices"][0]["text"]
    response = complete(client, prompt="KING:", max_tokens=120, seed=3, stream=True,
                        stream_options={"include_usage": True})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    payloads = sse_payloads(response.get_data(as_text=True))
    assert payloads[-1] == "[DONE]"
    chunks = [p for p in payloads[:-1] if p["choices"]]
    assert len(chunks) > 2  # streamed in pieces, not one lump
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert payloads[-2]["usage"]["completion_tokens"] == 120


def test_n_choices_and_prompt_lists(client):
    reply = complete(client, prompt=["A", "B"], n=2, max_tokens=20, seed=11).get_json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in reply["choices"]]
    assert len(set(texts)) == 4 and all(len(t) == 20 for t in texts)
    # Choice i draws from seed + i.
    assert complete(client, prompt="B", max_tokens=20, seed=13).get_json()["choices"][0]["text"] == texts[2]


def test_stop_strings_end_a_choice(client):
    text = complete(client, prompt="ROMEO:\n", max_tokens=300, seed=5).get_json()["choices"][0]["text"]
    stop = text[100:102]
    cut = text.index(stop)
    for stream in (False, True):
        response = complete(client, prompt="ROMEO:\n", max_tokens=300, seed=5, stop=[stop, "\u00a7never"],
                            stream=stream)
        if stream:
            chunks = [p for p in sse_payloads(response.get_data(as_text=True)) if p != "[DONE]"]
            got = "".join(c["choices"][0]["text"] for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            got, finish = response.get_json()["choices"][0]["text"], response.get_json()["choices"][0]["finish_reason"]
        assert got == text[:cut] and finish == "stop"


def test_echo_and_zero_tokens(client):
    reply = complete(client, prompt="ROMEO:", max_tokens=0, echo=True).get_json()
    assert reply["choices"][0]["text"] == "ROMEO:"
    reply = complete(client, prompt="ROMEO:", max_tokens=5, echo=True, seed=1).get_json()
    assert reply["choices"][0]["text"].startswith("ROMEO:") and len(reply["choices"][0]["text"]) == 11


def test_null_means_default(client):
    reply = complete(client, prompt="A", max_tokens=None, temperature=None, seed=None, stop=None).get_json()
    assert len(reply["choices"][0]["text"]) == 16  # OpenAI's default max_tokens


def test_models_list_and_retrieve(client):
    listing = client.get("/v1/models").get_json()
    assert listing["object"] == "list"
    (card,) = listing["data"]
    assert card["id"] == "charlm" and card["object"] == "model" and card["version"] == 1 and card["versions"] == [1]
    assert card["created"] > 1_600_000_000
    assert client.get("/v1/models/charlm").get_json() == card
    assert_error(client.get("/v1/models/gpt-4"), 404, "model", "model_not_found")


@pytest.mark.parametrize("body, param", [
    ({"temperature": 101}, "temperature"),  # 0 is greedy (test_serving_sampling.py)
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 10 ** 9}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"seed": 2 ** 70}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x" * 20_001}, "prompt"),
    ({"logprobs": 21}, "logprobs"),  # 0 ... 20 are valid (test_serving_logprobs.py)
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"best_of": 3, "stream": True}, "best_of"),  # without stream it is valid (test_serving_sampling.py)
    ({"suffix": "end"}, "suffix"),
    ({"temperatur": 0.5}, "temperatur"),
])
def test_bad_values_are_400s_naming_the_field(client, body, param):
    error = assert_error(complete(client, **body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_missing_model_and_unknown_model(client):
    assert_error(client.post("/v1/completions", json={"prompt": "A"}), 400, "model", "missing_field")
    assert_error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "A"}), 404, "model", "model_not_found")


def test_characters_outside_the_vocabulary_are_named(client):
    error = assert_error(complete(client, prompt="Hello \u2603 world \u00e9"), 400, "prompt", "unknown_characters")
    assert "'\u00e9'" in error["message"] and "'\u2603'" in error["message"]
    assert_error(complete(client, prompt=["fine", "n\u00f6"]), 400, "prompt.1", "unknown_characters")


def test_not_json_and_not_an_object(client):
    assert_error(client.post("/v1/completions", data="{model: charlm", content_type="application/json"), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/completions", data=b"\xff\xfe", content_type="application/json"), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/completions", json=["charlm"]), 400, code="invalid_json")
    assert_error(client.post("/v1/completions", data="NaN", content_type="application/json"), 400)
    assert_error(client.post("/v1/completions", data='{"model": "charlm", "temperature": NaN}',
                             content_type="application/json"), 400, "temperature")


def test_oversized_body_is_413(client):
    assert_error(complete(client, prompt="a" * (2 << 20)), 413, code="request_too_large")


def test_backend_without_a_model_is_503(tmp_path):
    client = create_app({"model_dir": tmp_path / "charlm"}).test_client()
    assert_error(complete(client, prompt="A"), 503, code="backend_unavailable")
    assert_error(client.get("/v1/models"), 503)


@pytest.fixture(scope="module")
def slow_app(exported_model):
    """Chunks of 2 characters: a long stream lasts seconds, so the test can act while it runs."""
    return create_app({"model_dir": exported_model[0], "first_chunk": 2, "max_chunk": 2, "max_streams": 2})


def test_disconnected_client_stops_its_stream(slow_app):
    client = slow_app.test_client()
    batcher = slow_app.extensions["charlm.batcher"]
    metrics = slow_app.extensions["charlm.metrics"]
    response = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 8192,
                                                      "stream": True}, buffered=False)
    body = iter(response.response)
    first = b""
    while b"data: " not in first:
        first += next(body)
    assert batcher.count() == 1
    response.close()  # what the WSGI server does when the client's socket is gone
    assert wait_until(lambda: batcher.count() == 0)
    exposition = metrics.exposition().decode()
    assert metric_value(exposition, "charlm_active_streams") == 0
    assert metric_value(exposition, "charlm_cancelled_streams_total") == 1
    assert metric_value(exposition, "charlm_generated_chars_total") < 8192


def test_too_many_streams_is_429_with_retry_after(slow_app):
    client = slow_app.test_client()
    batcher = slow_app.extensions["charlm.batcher"]
    open_responses = []
    for _ in range(2):
        response = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 8192,
                                                          "stream": True}, buffered=False)
        assert response.status_code == 200
        open_responses.append(response)
    try:
        refused = complete(client, prompt="A", max_tokens=5)
        error = assert_error(refused, 429, code="too_many_streams")
        assert error["type"] == "rate_limit_error" and refused.headers["Retry-After"] == "1"
        assert_error(complete(client, prompt="A", n=3), 400, "n")  # more than the limit at all: not retryable
    finally:
        for response in open_responses:
            response.close()
    assert wait_until(lambda: batcher.count() == 0)
    assert complete(client, prompt="A", max_tokens=5).status_code == 200


def test_concurrent_requests_get_their_own_seeded_text(app):
    """Seeded requests sent at once (batched together) get the text each gets alone."""
    prompts = ["ROMEO:\n", "JULIET:\n", "A", "First Citizen:\nWe are"]
    alone = {p: complete(app.test_client(), prompt=p, max_tokens=150, seed=i).get_json()["choices"][0]["text"]
             for i, p in enumerate(prompts)}
    together, barrier = {}, threading.Barrier(len(prompts))

    def run(i, prompt):
        barrier.wait()
        together[prompt] = complete(app.test_client(), prompt=prompt, max_tokens=150,
                                    seed=i).get_json()["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


class FailAfterFirstCall:
    def __init__(self, backend):
        self.backend, self.calls = backend, 0

    def call(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise ModelUnavailable("TF Serving at tf-serving:8500: UNAVAILABLE (test)")
        return self.backend.call(*args, **kwargs)


def test_backend_failing_mid_stream_ends_it_with_an_error_event(slow_app):
    batcher = slow_app.extensions["charlm.batcher"]
    real = batcher.backend
    batcher.backend = FailAfterFirstCall(real)
    try:
        response = slow_app.test_client().post("/v1/completions", json={
            "model": "charlm", "prompt": "A", "max_tokens": 100, "stream": True})
        assert response.status_code == 200  # the first chunk was out before the backend failed
        payloads = sse_payloads(response.get_data(as_text=True))
    finally:
        batcher.backend = real
    assert payloads[0]["choices"][0]["text"]
    assert payloads[-1]["error"]["code"] == "backend_unavailable" and "[DONE]" not in payloads
    assert wait_until(lambda: batcher.count() == 0)
