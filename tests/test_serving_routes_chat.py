"""POST /v1/chat/completions through Flask's test client, on the session's tiny model (its version has the `play`
chat template: roles as speakers, a reply ends at the blank line before the next speaker), and the chat template
settings (CHARLM_CHAT_TEMPLATE, CHARLM_CHAT_STOP)."""
import dataclasses
import socket

import pytest
from pydantic import ValidationError

from model_interface.chat import ChatTemplate, ChatTemplateError
from serving.app import create_app
from serving.routes_chat import chat_template_of, check_at_start
from serving.settings import Settings
from serving_helpers import assert_error, metric_value, sse_payloads, wait_until

MESSAGES = [{"role": "system", "content": "A street in Verona."},
            {"role": "user", "content": "Good morrow, fair maid."}]
PLAY = ChatTemplate.layout("play")
PROMPT = PLAY.render(MESSAGES)  # what the model reads: "Chorus:\n...\n\nROMEO:\n...\n\nJULIET:\n"


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"model": "charlm", "messages": MESSAGES, **body})


def complete(client, **body):
    return client.post("/v1/completions", json={"model": "charlm", **body})


def content_of(reply) -> str:
    return reply["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def long_seed(app):
    """A seed whose reply (at most 300 characters) has more than 40: the tiny model ends some speeches at once."""
    client = app.test_client()
    return next(seed for seed in range(20) if len(content_of(chat(client, max_tokens=300, seed=seed).get_json())) > 40)


def streamed(response) -> tuple[list, dict]:
    """The chunks of a streamed reply (checked for OpenAI's chunk shape and [DONE] last) and per choice its content."""
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    payloads = sse_payloads(response.get_data(as_text=True))
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    contents = {}
    for c in chunks:
        for choice in c["choices"]:
            contents[choice["index"]] = contents.get(choice["index"], "") + (choice["delta"].get("content") or "")
    return chunks, contents


# --- the reply -------------------------------------------------------------------------------------------------
def test_the_reply_is_the_model_continuing_the_template_up_to_its_stop(client):
    """The prompt is the version's template rendered with the assistant's turn to speak, and the reply ends at the
    template's stop string ("\\n\\n", the next speaker's): what /v1/completions gives for that text and stop."""
    assert PROMPT.endswith("\n\nJULIET:\n")
    stopped = 0
    for seed in range(6):
        reply = chat(client, max_tokens=300, seed=seed).get_json()
        assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
        assert reply["model"] == "charlm" and reply["system_fingerprint"] == "charlm-v1" and reply["created"] > 0
        (choice,) = reply["choices"]
        assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["logprobs"] is None
        same = complete(client, prompt=PROMPT, max_tokens=300, seed=seed, stop=["\n\n"]).get_json()["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (same["text"], same["finish_reason"])
        content = choice["message"]["content"]
        assert reply["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": len(content),
                                  "total_tokens": len(PROMPT) + len(content)}
        if choice["finish_reason"] == "stop":
            stopped += 1
            unstopped = complete(client, prompt=PROMPT, max_tokens=300, seed=seed).get_json()["choices"][0]["text"]
            assert unstopped.startswith(content + "\n\n") and "\n\n" not in content
    assert stopped  # (the tiny model ends most speeches within 300 characters)


def test_greedy_at_temperature_zero(client):
    greedy = content_of(chat(client, max_tokens=60, temperature=0, seed=1).get_json())
    assert content_of(chat(client, max_tokens=60, temperature=0, seed=2).get_json()) == greedy  # no draw: no seed
    same = complete(client, prompt=PROMPT, max_tokens=60, temperature=0, stop=["\n\n"]).get_json()
    assert greedy == same["choices"][0]["text"]


def test_the_request_stop_adds_to_the_templates(client, long_seed):
    content = content_of(chat(client, max_tokens=300, seed=long_seed).get_json())
    stop = content[15:18]
    cut = content.index(stop)
    reply = chat(client, max_tokens=300, seed=long_seed, stop=[stop, "\u00a7never"]).get_json()
    assert content_of(reply) == content[:cut] and reply["choices"][0]["finish_reason"] == "stop"
    assert content_of(chat(client, max_tokens=300, seed=long_seed, stop=stop).get_json()) == content[:cut]


def test_max_completion_tokens_and_max_tokens(client):
    greedy = content_of(chat(client, max_completion_tokens=300, temperature=0).get_json())
    assert len(greedy) <= 300
    for field in ("max_tokens", "max_completion_tokens"):
        reply = chat(client, temperature=0, **{field: 7}).get_json()
        assert content_of(reply) == greedy[:7] and reply["usage"]["completion_tokens"] == len(greedy[:7])
        if len(greedy) > 7:
            assert reply["choices"][0]["finish_reason"] == "length"
    assert content_of(chat(client, temperature=0, max_tokens=7, max_completion_tokens=7).get_json()) == greedy[:7]


def test_n_choices_draw_from_seed_plus_i(client):
    reply = chat(client, n=3, max_tokens=30, seed=40).get_json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    contents = [c["message"]["content"] for c in reply["choices"]]
    assert len(set(contents)) == 3
    assert content_of(chat(client, max_tokens=30, seed=42).get_json()) == contents[2]
    assert reply["usage"]["prompt_tokens"] == len(PROMPT)  # the conversation is counted once
    assert reply["usage"]["completion_tokens"] == sum(len(c) for c in contents)


def test_streamed_deltas_add_up_to_the_plain_reply(client, long_seed):
    plain = chat(client, max_tokens=300, seed=long_seed).get_json()
    chunks, contents = streamed(chat(client, max_tokens=300, seed=long_seed, stream=True,
                                     stream_options={"include_usage": True}))
    first, *middle, last_choice, usage = chunks
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]
    assert len(middle) > 2 and all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert last_choice["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": plain["choices"][0]["finish_reason"]}]
    assert contents == {0: content_of(plain)}
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    assert all("usage" not in c for c in chunks[:-1])
    _, without_usage = streamed(chat(client, max_tokens=300, seed=long_seed, stream=True))
    assert without_usage == contents


def test_streamed_choices_each_start_and_end(client):
    plain = chat(client, n=2, max_tokens=40, seed=9).get_json()
    chunks, contents = streamed(chat(client, n=2, max_tokens=40, seed=9, stream=True))
    assert contents == {c["index"]: c["message"]["content"] for c in plain["choices"]}
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == plain["choices"][index]["finish_reason"]
        assert all(m["finish_reason"] is None for m in mine[:-1])


def test_logprobs_in_openais_chat_shape(client):
    reply = chat(client, max_tokens=30, temperature=0, logprobs=True, top_logprobs=3).get_json()
    content = content_of(reply)
    entries = reply["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == list(content)
    for e in entries:
        assert e["bytes"] == list(e["token"].encode("utf-8")) and e["logprob"] <= 0
        top = e["top_logprobs"]
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode("utf-8")) for t in top)
        assert top[0]["token"] == e["token"] and top[0]["logprob"] == pytest.approx(e["logprob"])  # greedy
    # The model's own numbers: the same as completions' for the same text.
    legacy = complete(client, prompt=PROMPT, max_tokens=30, temperature=0, stop=["\n\n"], logprobs=3).get_json()
    assert [e["logprob"] for e in entries] == pytest.approx(legacy["choices"][0]["logprobs"]["token_logprobs"])
    # Streamed: the chunks' entries add up to the plain reply's.
    chunks, _ = streamed(chat(client, max_tokens=30, temperature=0, logprobs=True, top_logprobs=3, stream=True))
    streamed_entries = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                        for e in c["choices"][0]["logprobs"]["content"]]
    assert [(e["token"], e["top_logprobs"][0]["token"]) for e in streamed_entries] == \
           [(e["token"], e["top_logprobs"][0]["token"]) for e in entries]
    assert [e["logprob"] for e in streamed_entries] == pytest.approx([e["logprob"] for e in entries])
    # logprobs without top_logprobs: each character's own, no alternatives.
    bare = chat(client, max_tokens=10, temperature=0, logprobs=True).get_json()["choices"][0]["logprobs"]["content"]
    assert [e["top_logprobs"] for e in bare] == [[]] * len(bare)
    assert bare[0]["logprob"] == pytest.approx(entries[0]["logprob"])


def test_text_parts_names_and_the_developer_role(client):
    """Text parts are joined with newlines, `name` is the speaker (the play template writes it), and developer is
    read as system."""
    messages = [{"role": "developer", "content": [{"type": "text", "text": "A street"},
                                                  {"type": "text", "text": "in Verona."}]},
                {"role": "user", "name": "MERCUTIO", "content": "Hark"},
                {"role": "assistant", "content": None}, {"role": "user", "content": [{"type": "text", "text": "Ay"}]}]
    prompt = "Chorus:\nA street\nin Verona.\n\nMERCUTIO:\nHark\n\nJULIET:\n\n\nROMEO:\nAy\n\nJULIET:\n"
    reply = chat(client, messages=messages, max_tokens=40, seed=3).get_json()
    assert reply["usage"]["prompt_tokens"] == len(prompt)
    assert content_of(reply) == complete(client, prompt=prompt, max_tokens=40, seed=3,
                                         stop=["\n\n"]).get_json()["choices"][0]["text"]


def test_what_openai_clients_send_at_neutral_values_is_accepted(client):
    reply = chat(client, max_tokens=5, presence_penalty=0, frequency_penalty=0.0, logit_bias={}, tools=[],
                 tool_choice="none", functions=None, function_call=None, parallel_tool_calls=False,
                 response_format={"type": "text"}, user="someone", top_logprobs=None, n=None, stop=None, seed=None,
                 temperature=None, top_k=-1, min_p=0.0, repetition_penalty=1.0)
    assert reply.status_code == 200, reply.get_json()
    assert len(content_of(reply.get_json())) <= 5


def test_top_k_1_is_greedy(client):
    greedy = content_of(chat(client, max_tokens=40, temperature=0).get_json())
    assert content_of(chat(client, max_tokens=40, temperature=1, top_k=1, seed=5).get_json()) == greedy


# --- what cannot be done, or is malformed: a 4xx in OpenAI's envelope each --------------------------------------
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("body, param, code", [
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": "hello"}, "messages", "invalid_value"),
    ({"messages": ["hello"]}, "messages.0", "invalid_value"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "sunny", "tool_call_id": "c1"}]}, "messages.0.role",
     "unsupported_role"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages.0.role", "unsupported_role"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role", "missing_field"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "missing_field"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content", "missing_field"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid_value"),
    ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages.0.colour", "unknown_field"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages.0.content.0.type", "unsupported_content"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "messages.0.content.1.type", "unsupported_content"),
    ({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "messages.0.content.0.type", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text",
     "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]}, "messages.0.content.0.x",
     "unknown_field"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages.1.tool_calls",
     "unsupported_parameter"),
    ({"tools": [TOOL]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice",
     "unsupported_parameter"),
    ({"functions": [TOOL["function"]]}, "functions", "unsupported_parameter"),
    ({"function_call": {"name": "get_weather"}}, "function_call", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format",
     "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"frequency_penalty": 1}, "frequency_penalty", "unsupported_parameter"),
    ({"repetition_penalty": 1.2}, "repetition_penalty", "unsupported_parameter"),
    ({"logit_bias": {"65": 5}}, "logit_bias", "unsupported_parameter"),
    ({"temperature": -1}, "temperature", "invalid_value"),
    ({"temperature": 101}, "temperature", "invalid_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),
    ({"top_k": -2}, "top_k", "invalid_value"),
    ({"min_p": 2}, "min_p", "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_tokens": 10 ** 9}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": 10 ** 9}, "max_completion_tokens", "invalid_value"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", "invalid_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"n": 1000}, "n", "invalid_value"),
    ({"seed": 2 ** 70}, "seed", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_value"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": [""]}, "stop", "invalid_value"),
    ({"best_of": 2}, "best_of", "unknown_field"),
    ({"prompt": "hi"}, "prompt", "unknown_field"),
    ({"unknown_chars": "ignore"}, "unknown_chars", "invalid_value"),
    ({"replacement_char": "ab", "unknown_chars": "replace"}, "replacement_char", "invalid_value"),
])
def test_bad_requests_are_400s_naming_the_field(client, body, param, code):
    error = assert_error(chat(client, **body), 400, param, code)
    assert error["type"] == "invalid_request_error"


def test_refusals_say_why(client):
    assert "cannot call tools" in assert_error(chat(client, tools=[TOOL]), 400)["message"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    assert "'image_url'" in assert_error(chat(client, messages=image), 400)["message"]
    assert "'json_object'" in assert_error(chat(client, response_format={"type": "json_object"}), 400)["message"]
    # A penalty is refused with completions' own reason.
    assert assert_error(chat(client, presence_penalty=0.5), 400)["message"] == \
           assert_error(complete(client, prompt="A", presence_penalty=0.5), 400)["message"]


def test_model_missing_unknown_and_the_body_not_json(client):
    assert_error(client.post("/v1/chat/completions", json={"messages": MESSAGES}), 400, "model", "missing_field")
    assert_error(chat(client, model="gpt-4o"), 404, "model", "model_not_found")
    assert_error(client.post("/v1/chat/completions", data="{messages", content_type="application/json"), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/chat/completions", json=[MESSAGES]), 400, code="invalid_json")
    assert_error(client.get("/v1/chat/completions"), 405, code="method_not_allowed")
    assert_error(chat(client, messages=[{"role": "user", "content": "a" * (2 << 20)}]), 413, code="request_too_large")


def test_characters_outside_the_vocabulary(client):
    error = assert_error(chat(client, messages=[{"role": "user", "content": "Hello \u2603"}]), 400,
                         "messages.0.content", "unknown_characters")
    assert "'\u2603'" in error["message"]
    assert_error(chat(client, messages=[{"role": "user", "name": "Ren\u00e9", "content": "Hi"}]), 400,
                 "messages.0.name", "unknown_characters")
    reply = chat(client, messages=[{"role": "user", "content": "Good \u2603morrow"}], max_tokens=5, seed=1,
                 unknown_chars="drop").get_json()
    assert reply["text_changes"] == {"action": "drop", "chars": ["\u2603"], "count": 1, "replacement_char": None,
                                     "crlf": 0}
    assert reply["usage"]["prompt_tokens"] == len(PLAY.render([{"role": "user", "content": "Good morrow"}]))


def test_a_conversation_longer_than_the_prompt_limit(client):
    assert_error(chat(client, messages=[{"role": "user", "content": "a" * 20_000}]), 400, "messages")


def test_metrics_label_the_route(app, client):
    assert chat(client, max_tokens=5, seed=1).status_code == 200
    exposition = app.extensions["charlm.metrics"].exposition().decode()
    assert metric_value(exposition, "charlm_time_to_first_char_seconds_count",
                        'endpoint="/v1/chat/completions"') >= 1


def test_the_model_card_shows_the_versions_template(client):
    card = client.get("/v1/models/charlm").get_json()
    assert card["chat_template"] == PLAY.source and card["chat_stop"] == ["\n\n"]


# --- the template: the version's, or a setting's ------------------------------------------------------------------
@pytest.fixture(scope="module")
def stop_app(exported_model):
    """CHARLM_CHAT_STOP alone: the version's template, these stop strings in place of its own."""
    return create_app({"model_dir": exported_model[0], "chat_stop": ["\n"]})


@pytest.fixture
def swapped(stop_app):
    """Serve the same version with its metadata changed (restored afterwards)."""
    backend = stop_app.extensions["charlm.backend"]
    served = backend._model

    def swap(**metadata):
        backend._model = dataclasses.replace(served, metadata=served.metadata.model_copy(update=metadata))

    yield swap
    backend._model = served


def test_chat_stop_replaces_the_versions_stop_strings(stop_app):
    client = stop_app.test_client()
    assert client.get("/v1/models/charlm").get_json()["chat_stop"] == ["\n"]
    for seed in range(3):
        reply = chat(client, max_tokens=200, seed=seed).get_json()
        same = complete(client, prompt=PROMPT, max_tokens=200, seed=seed, stop=["\n"]).get_json()["choices"][0]
        assert content_of(reply) == same["text"] and "\n" not in content_of(reply)


def test_a_version_without_a_template_says_how_to_give_one(stop_app, swapped):
    swapped(chat_template=None, chat_stop=())
    client = stop_app.test_client()
    error = assert_error(chat(client), 400, "messages", "no_chat_template")
    assert "CHARLM_CHAT_TEMPLATE" in error["message"] and "--chat-template" in error["message"]
    assert client.get("/v1/models/charlm").get_json()["chat_template"] is None
    assert complete(client, prompt="A", max_tokens=3).status_code == 200


@pytest.mark.parametrize("metadata", [
    {"chat_template": "{% for m in messages %}\u00a7{{ m.content }}{% endfor %}"},  # a character it lacks
    {"chat_template": "{% for m in messages %}{{ m.content }"},  # does not parse
])
def test_a_template_the_version_cannot_write_is_a_503_never_a_500(stop_app, swapped, metadata):
    swapped(**metadata)
    client = stop_app.test_client()
    error = assert_error(chat(client), 503, code="chat_template_unusable")
    assert "the chat template" in error["message"]
    assert complete(client, prompt="A", max_tokens=3).status_code == 200  # the rest is served


TEMPLATE = """\
{%- for m in messages %}{{ m.role }}: {{ m.content }}
{% endfor -%}
{%- if messages[-1].content == "boom" %}{{ no_such_function() }}{% endif -%}
{%- if add_generation_prompt %}assistant: {% endif -%}
"""


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jinja"
    path.write_text(TEMPLATE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def template_app(exported_model, template_file):
    """CHARLM_CHAT_TEMPLATE in place of the version's (no stop strings), and chunks of 2 characters: a long reply
    lasts seconds, so a test can hang up while it runs."""
    return create_app({"model_dir": exported_model[0], "chat_template": template_file, "first_chunk": 2,
                       "max_chunk": 2, "disconnect_check_s": 0.05})


def test_the_chat_template_setting_replaces_the_versions(template_app):
    client = template_app.test_client()
    card = client.get("/v1/models/charlm").get_json()
    assert card["chat_template"] == TEMPLATE and card["chat_stop"] == []
    prompt = "system: A street in Verona.\nuser: Good morrow, fair maid.\nassistant: "
    assert ChatTemplate(TEMPLATE).render(MESSAGES) == prompt
    unstopped_somewhere = False
    for seed in range(6):
        reply = chat(client, max_tokens=300, seed=seed).get_json()
        same = complete(client, prompt=prompt, max_tokens=300, seed=seed).get_json()["choices"][0]["text"]
        assert content_of(reply) == same and reply["usage"]["prompt_tokens"] == len(prompt)
        assert reply["choices"][0]["finish_reason"] == "length"
        unstopped_somewhere |= "\n\n" in same  # the version's stop string no longer ends a reply
    assert unstopped_somewhere


def test_a_template_that_refuses_the_messages_is_a_400(template_app):
    error = assert_error(chat(template_app.test_client(), messages=[{"role": "user", "content": "boom"}]), 400,
                         "messages", "chat_template_failed")
    assert "no_such_function" in error["message"]


def test_a_streamed_chat_whose_client_goes_stops(template_app):
    client = template_app.test_client()
    batcher = template_app.extensions["charlm.batcher"]
    response = client.post("/v1/chat/completions", json={"model": "charlm", "messages": MESSAGES,
                                                           "max_tokens": 8192, "stream": True}, buffered=False)
    body = iter(response.response)
    first = b""
    while b"content" not in first:
        first += next(body)
    assert batcher.count() == 1
    response.close()  # what the WSGI server does when the client's socket is gone
    assert wait_until(lambda: batcher.count() == 0)


def test_a_plain_chat_whose_client_goes_stops(template_app):
    """The client's socket (werkzeug.socket) is watched while a plain reply is made (serving/disconnect.py)."""
    batcher, metrics = template_app.extensions["charlm.batcher"], template_app.extensions["charlm.metrics"]
    chars_before = metrics.registry.get_sample_value("charlm_generated_chars_total") or 0
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()  # the client has gone
        response = template_app.test_client().post(
            "/v1/chat/completions", json={"model": "charlm", "messages": MESSAGES, "max_tokens": 8192},
            environ_overrides={"werkzeug.socket": ours})
    assert_error(response, 499, code="client_closed_request")
    assert wait_until(lambda: batcher.count() == 0)
    assert metrics.registry.get_sample_value("charlm_generated_chars_total") - chars_before < 8192


def test_a_chat_template_setting_the_model_cannot_write_stops_the_gateway_at_start(exported_model, tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text("{% for m in messages %}\u00a7 {{ m.content }}{% endfor %}", encoding="utf-8")
    with pytest.raises(ChatTemplateError, match="CHARLM_CHAT_TEMPLATE.*outside the vocabulary: '\u00a7'"):
        create_app({"model_dir": exported_model[0], "chat_template": path})


def test_chat_stop_the_model_cannot_write_is_refused_at_start(app):
    backend = app.extensions["charlm.backend"]
    with pytest.raises(ChatTemplateError, match="CHARLM_CHAT_STOP.*'\u00a7'"):
        check_at_start(backend, Settings(model_dir="unused", chat_stop=["\u00a7"]))
    check_at_start(backend, Settings(model_dir="unused", chat_stop=["\n", "ROMEO:"]))
    assert chat_template_of(backend.model(), Settings(model_dir="unused", chat_stop=["e"])) == \
           ChatTemplate(PLAY.source, ("e",))
    assert chat_template_of(backend.model(), Settings(model_dir="unused")) == PLAY


@pytest.mark.parametrize("content, match", [
    (None, "cannot be read"),
    (b"\xff\xfe", "not UTF-8"),
    ("{% for m in messages %}{{ m.content }", "unexpected '}'"),
])
def test_a_chat_template_file_that_cannot_be_used_stops_the_gateway(tmp_path, content, match):
    path = tmp_path / "chat.jinja"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ValidationError, match=f"CHARLM_CHAT_TEMPLATE.*{match}"):
        create_app({"model_dir": tmp_path, "chat_template": path})


def test_chat_settings_from_the_environment(monkeypatch, template_file):
    monkeypatch.setenv("CHARLM_CHAT_TEMPLATE", str(template_file))
    monkeypatch.setenv("CHARLM_CHAT_STOP", '["\\n\\n", "a,b"]')
    settings = Settings(model_dir="unused")
    assert settings.chat_override == ChatTemplate(TEMPLATE, ("\n\n", "a,b"))
    monkeypatch.setenv("CHARLM_CHAT_STOP", "[]")
    assert Settings(model_dir="unused").chat_override.stop == ()
    monkeypatch.setenv("CHARLM_CHAT_TEMPLATE", "")
    monkeypatch.delenv("CHARLM_CHAT_STOP")
    assert Settings(model_dir="unused").chat_override is None
    for bad in ("\\n\\n,ROMEO:", '[""]', '"x"', "[1]"):
        monkeypatch.setenv("CHARLM_CHAT_STOP", bad)
        with pytest.raises(ValidationError, match="chat_stop"):
            Settings(model_dir="unused")
