"""GET /openapi.json: an OpenAPI 3.1 description of every route, its schemas generated from serving/schemas.py
(the same models that validate requests), so the description cannot drift from what the code accepts."""
from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, jsonify
from pydantic.json_schema import models_json_schema

from serving import chat_schemas, schemas

bp = Blueprint("openapi", __name__)

REQUESTS = (schemas.CompletionRequest, chat_schemas.ChatCompletionRequest, schemas.GenerateRequest,
            schemas.ScoreRequest, schemas.ActivationsRequest, schemas.TokenizeRequest, schemas.DetokenizeRequest)
RESPONSES = (schemas.Completion, chat_schemas.ChatCompletion, chat_schemas.ChatCompletionChunk, schemas.ModelCard,
             schemas.ModelList, schemas.Generation, schemas.Score, schemas.Activations, schemas.Tokenized,
             schemas.Detokenized, schemas.Health, schemas.Ready, schemas.Error)
ERRORS = {400: "Malformed or out-of-range request", 401: "Missing or invalid API key (when keys are configured)",
          404: "Unknown model", 413: "Request body too large", 429: "Too many concurrent streams: the admission queue is full (code queue_full) or no slot freed "
               "within CHARLM_MAX_QUEUE_WAIT_S (too_many_streams); see Retry-After",
          503: "Backend unavailable, no model loaded, the gateway shutting down (server_shutting_down), or (chat) a "
               "chat template the version cannot write; see Retry-After",
          504: "Backend deadline exceeded"}


def ref(model) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_content(model) -> dict:
    return {"application/json": {"schema": ref(model)}}


def errors(*codes: int) -> dict:
    return {str(code): {"description": ERRORS[code], "content": json_content(schemas.Error)} for code in codes}


def post(summary: str, request, reply, streams: bool, *codes: int, secured: bool = True, event=None) -> dict:
    """`event`: the model of each server-sent event, when it is not `reply`'s."""
    ok = {"description": "OK", "content": json_content(reply)}
    if streams:
        ok["content"]["text/event-stream"] = {
            "schema": {"type": "string", "description": f"with `stream: true`: `data: <{(event or reply).__name__} "
                                                        "JSON>` events, then `data: [DONE]`"}}
    operation = {"summary": summary, "requestBody": {"required": True, "content": json_content(request)},
                 "responses": {"200": ok, **errors(400, *((401,) if secured else ()), *codes)}}
    if secured:
        operation["security"] = [{"bearerAuth": []}]
    return {"post": operation}


def get(summary: str, reply, *codes: int, content_type: str = "application/json", secured: bool = False) -> dict:
    if reply is not None:
        content = json_content(reply)
    else:
        content = {content_type: {"schema": {"type": "object" if content_type == "application/json" else "string"}}}
    operation = {"summary": summary, "responses": {"200": {"description": "OK", "content": content}, **errors(*codes)}}
    if secured:
        operation["security"] = [{"bearerAuth": []}]
    return {"get": operation}


@lru_cache(maxsize=1)
def document() -> dict:
    _, definitions = models_json_schema([(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES],
                                        ref_template="#/components/schemas/{model}")
    model_path = get("One model", schemas.ModelCard, 401, 404, secured=True)
    model_path["get"]["parameters"] = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "charlm gateway", "version": "1",
                 "description": "Character-level LSTM text generation. A token is a character. Errors use "
                                "OpenAI's envelope. With CHARLM_API_KEYS set, every route that computes needs a bearer key "
                                "(/v1/*, /tokenize, /detokenize, /visualize/features); probes, /metrics, /openapi.json "
                                "and the pages stay open."},
        "paths": {
            "/v1/completions": post("OpenAI-compatible completion", schemas.CompletionRequest, schemas.Completion,
                                    True, 404, 413, 429, 503, 504),
            "/v1/chat/completions": post(
                "OpenAI-compatible chat: the messages written by the chat template (GET /v1/models/{model}: "
                "chat_template), the reply up to its stop strings", chat_schemas.ChatCompletionRequest,
                chat_schemas.ChatCompletion, True, 404, 413, 429, 503, 504, event=chat_schemas.ChatCompletionChunk),
            "/v1/generate": post("Generate, returning a continuation state", schemas.GenerateRequest,
                                 schemas.Generation, True, 404, 413, 429, 503, 504),
            "/v1/score": post("Bits per character of a text", schemas.ScoreRequest, schemas.Score, False,
                              404, 413, 503, 504),
            "/v1/activations": post("Per-character values of one layer", schemas.ActivationsRequest,
                                    schemas.Activations, False, 404, 413, 503, 504),
            "/v1/models": get("OpenAI-compatible model list: each model's vocabulary, state size, limits and chat "
                              "template", schemas.ModelList, 401, 503, secured=True),
            "/tokenize": post("vLLM's: a text's token ids (a token is a character; its id, its vocabulary index)",
                              schemas.TokenizeRequest, schemas.Tokenized, False, 404, 413, 503, secured=True),
            "/detokenize": post("vLLM's: token ids (vocabulary indices) back to text", schemas.DetokenizeRequest,
                                schemas.Detokenized, False, 404, 413, 503, secured=True),
            "/v1/models/{model}": model_path,
            "/healthz": get("Liveness: the process answers (no backend call)", schemas.Health),
            "/readyz": get("Readiness: a model is loaded and the backend answers", schemas.Ready, 503, 504),
            "/metrics": get("Prometheus metrics", None, content_type="text/plain"),
            "/openapi.json": get("This description", None),
            "/": get("The playground page", None, content_type="text/html"),
            "/visualize": get("The live page: text coloured by one cell's activations", None,
                              content_type="text/html"),
            "/visualize/features": {"post": {
                "summary": "Feature tracks of a text (quotes, line position, brackets, ...), one value per character",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"], "additionalProperties": False,
                    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 20000}}}}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"features": {"type": "array", "items": {"type": "object"}}}}}}},
                              **errors(400, 401)},
                "security": [{"bearerAuth": []}]}},
        },
        "components": {"schemas": definitions["$defs"],
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
