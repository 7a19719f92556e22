"""OpenAI-compatible routes: POST /v1/completions (a token is a character) and GET /v1/models, so the
official `openai` client and tools built on it work unchanged."""
from __future__ import annotations

import itertools
import time
import uuid

from flask import Blueprint, jsonify, request

from serving.backends import Backend, ModelInfo, current_backend, resolve_model
from serving.batcher import Chunk, Done, Failed, current_batcher
from serving.errors import bad_request
from serving.generation import (INT64, RequestStreams, StopScanner, check_vocabulary, event_stream,
                                random_seed, sse)
from serving.metrics import current_metrics
from serving.settings import current_settings
from serving.schemas import Completion, CompletionRequest, ModelCard, ModelList, parse

bp = Blueprint("openai", __name__, url_prefix="/v1")


def model_card(backend: Backend, model: ModelInfo) -> ModelCard:
    return ModelCard(id=model.name, created=model.created, owned_by="charlm", version=model.version,
                     versions=backend.versions(), backend=backend.kind)


@bp.get("/models")
def list_models():
    backend = current_backend()
    return jsonify(ModelList(data=[model_card(backend, backend.model())]).model_dump())


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    return jsonify(model_card(current_backend(), resolve_model(model_id)).model_dump())


@bp.post("/completions")
def completions():
    config = current_settings()
    body = parse(CompletionRequest, request.get_data(), config)
    model = resolve_model(body.model)
    prompts = body.prompts
    for i, prompt in enumerate(prompts):
        check_vocabulary(model, prompt, "prompt" if isinstance(body.prompt, str) else f"prompt.{i}")
    choices = len(prompts) * body.n
    if choices > config.max_streams:
        raise bad_request(f"{choices} choices (prompts x n) exceed the limit of {config.max_streams}", "n")
    base_seed = body.seed if body.seed is not None else random_seed()
    # Choice i of a seeded request draws from seed + i: reproducible, and distinct between choices.
    rows = [dict(prompt=prompt, state=None, remaining=body.max_tokens, temperature=body.temperature, top_k=0,
                 top_p=body.top_p, seed=(base_seed + j + INT64) % (2 * INT64) - INT64)
            for j, prompt in enumerate(p for p in prompts for _ in range(body.n))]
    generation = RequestStreams.submit(current_batcher(), model, rows, "/v1/completions", config, current_metrics())
    first, events = generation.first()
    reply = dict(id=f"cmpl-{uuid.uuid4().hex[:24]}", object="text_completion", created=int(time.time()),
                 model=model.name, system_fingerprint=f"{model.name}-v{model.version}")
    prompt_of = [p for p in prompts for _ in range(body.n)]
    scanners = [StopScanner(body.stops) for _ in rows]
    events = itertools.chain([first], events) if first is not None else events
    if body.stream:
        return event_stream(stream_completion(generation, events, reply, body, prompt_of, scanners), generation)

    texts = [prompt if body.echo else "" for prompt in prompt_of]
    generated = [0] * len(rows)
    finish = [None] * len(rows)
    try:
        for event in events:
            i = event.index
            if isinstance(event, Failed):
                raise event.error.as_api_error()
            if isinstance(event, Chunk):
                text, stopped = scanners[i].feed(event.text)
                if stopped:
                    generation.finish(i)
                    finish[i] = "stop"
            else:
                text = scanners[i].flush()
                finish[i] = "length"
            texts[i] += text
            generated[i] += len(text)
    finally:
        generation.cancel()
    usage = usage_of(prompts, generated)
    return jsonify(Completion(**reply, usage=usage, choices=[
        dict(text=t, index=i, logprobs=None, finish_reason=f) for i, (t, f) in enumerate(zip(texts, finish))
    ]).model_dump())


def usage_of(prompts: list[str], generated: list[int]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    return dict(prompt_tokens=prompt_tokens, completion_tokens=sum(generated),
                total_tokens=prompt_tokens + sum(generated))


def stream_completion(generation: RequestStreams, events, reply: dict, body: CompletionRequest, prompt_of, scanners):
    def chunk(index, text, finish_reason=None):
        return sse({**reply, "choices": [{"text": text, "index": index, "logprobs": None,
                                          "finish_reason": finish_reason}]})

    generated = [0] * len(prompt_of)
    if body.echo:
        for i, prompt in enumerate(prompt_of):
            yield chunk(i, prompt)
    for event in events:
        i = event.index
        if isinstance(event, Failed):
            raise event.error.as_api_error()  # sent as an error event: the headers are out already
        if isinstance(event, Chunk):
            text, stopped = scanners[i].feed(event.text)
            generated[i] += len(text)
            if stopped:
                generation.finish(i)
                yield chunk(i, text, "stop")
            elif text:
                yield chunk(i, text)
        elif isinstance(event, Done):
            text = scanners[i].flush()
            generated[i] += len(text)
            yield chunk(i, text, "length")
    if body.stream_options and body.stream_options.include_usage:
        yield sse({**reply, "choices": [], "usage": usage_of(body.prompts, generated)})
    yield sse("[DONE]")
