"""/openapi.json describes every route, with schemas that the real responses satisfy."""
import re

import pytest

from serving import chat_schemas, schemas
from serving_helpers import sse_payloads


def normalise(path: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_every_route_is_described(app):
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    routes = {normalise(rule.rule) for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes == {normalise(path) for path in document["paths"]}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"], (path, method)
    components = document["components"]["schemas"]
    assert {"CompletionRequest", "GenerateRequest", "ScoreRequest", "ActivationsRequest", "Completion",
            "Generation", "Error"} <= set(components)
    assert "model" in components["CompletionRequest"]["required"]
    assert components["CompletionRequest"]["additionalProperties"] is False


def test_real_responses_match_the_described_schemas(app):
    client = app.test_client()
    checks = [
        (schemas.Completion, client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5})),
        (schemas.Completion, client.post("/v1/completions", json={
            "model": "charlm", "prompt": "AB\u00e9", "max_tokens": 5, "echo": True, "logprobs": 2,
            "unknown_chars": "drop"})),
        (schemas.Tokenized, client.post("/tokenize", json={"prompt": "AB", "return_token_strs": True})),
        (schemas.Detokenized, client.post("/detokenize", json={"tokens": [1, 2]})),
        (schemas.ModelList, client.get("/v1/models")),
        (schemas.ModelCard, client.get("/v1/models/charlm")),
        (schemas.Generation, client.post("/v1/generate", json={"max_chars": 5})),
        (schemas.Score, client.post("/v1/score", json={"text": "ab", "per_char": True})),
        (schemas.Activations, client.post("/v1/activations", json={"text": "ab"})),
        (schemas.Health, client.get("/healthz")),
        (schemas.Ready, client.get("/readyz")),
        (schemas.Error, client.post("/v1/score", json={})),
        (chat_schemas.ChatCompletion, client.post("/v1/chat/completions", json={
            "model": "charlm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "logprobs": True,
            "top_logprobs": 2})),
        (schemas.Error, client.post("/v1/chat/completions", json={"model": "charlm", "messages": []})),
    ]
    for model, response in checks:
        model.model_validate(response.get_json(), strict=False)
        assert set(response.get_json()) <= set(model.model_fields), model.__name__


def test_the_new_fields_and_endpoints_are_described(app):
    """Issue 12's request fields, reply fields and routes are in the description, generated from the schemas."""
    document = app.test_client().get("/openapi.json").get_json()
    components = document["components"]["schemas"]
    completion_fields = set(components["CompletionRequest"]["properties"])
    assert {"temperature", "top_k", "min_p", "best_of", "logprobs", "echo", "unknown_chars", "replacement_char",
            "repetition_penalty"} <= completion_fields
    assert "greedy" in components["CompletionRequest"]["properties"]["temperature"]["description"]
    assert {"min_p", "unknown_chars", "replacement_char"} <= set(components["GenerateRequest"]["properties"])
    for name in ("ScoreRequest", "ActivationsRequest", "TokenizeRequest"):
        assert {"unknown_chars", "replacement_char"} <= set(components[name]["properties"]), name
    assert set(components["CompletionLogprobs"]["properties"]) == {"tokens", "token_logprobs", "top_logprobs",
                                                                   "text_offset"}
    assert {"vocab", "state_size", "max_model_len", "limits", "chat_template"} <= set(
        components["ModelCard"]["properties"])
    assert {"count", "max_model_len", "tokens", "token_strs"} <= set(components["Tokenized"]["properties"])
    assert components["Detokenized"]["required"] == ["prompt"]
    for path in ("/tokenize", "/detokenize"):
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("Request")
    for name in ("Completion", "Generation", "Score", "Activations", "Tokenized"):
        assert "text_changes" in components[name]["properties"], name


def test_chat_is_described(app):
    """/v1/chat/completions: its request, its reply and its streamed chunks, generated from serving/chat_schemas.py;
    every streamed chunk satisfies the chunk schema."""
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    components = document["components"]["schemas"]
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert "ChatCompletionChunk" in ok["text/event-stream"]["schema"]["description"]
    assert {"400", "401", "404", "429", "503"} <= set(operation["responses"])
    request = components["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"]) and request["additionalProperties"] is False
    assert {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream",
            "stream_options", "stop", "seed", "logprobs", "top_logprobs", "user", "unknown_chars", "replacement_char",
            "tools", "response_format"} <= set(request["properties"])
    assert {"role", "content", "name"} <= set(components["ChatMessage"]["properties"])
    assert {"ChatCompletion", "ChatCompletionChunk", "ChatLogprobs", "ChatTokenLogprob"} <= set(components)
    assert "chat_stop" in components["ModelCard"]["properties"]
    response = client.post("/v1/chat/completions", json={
        "model": "charlm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True,
        "logprobs": True, "stream_options": {"include_usage": True}})
    events = [e for e in sse_payloads(response.get_data(as_text=True)) if e != "[DONE]"]
    assert len(events) >= 3
    for event in events:
        chat_schemas.ChatCompletionChunk.model_validate(event, strict=False)
        assert set(event) <= set(chat_schemas.ChatCompletionChunk.model_fields)
