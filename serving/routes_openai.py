"""OpenAI-compatible routes: POST /v1/completions (a token is a character) and GET /v1/models, so the
official `openai` client and tools built on it work unchanged."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Literal

from flask import Blueprint, jsonify, request

from serving.backend import Backend, ServedModel
from serving.backends import current_backend, resolve_model
from serving.batcher import Chunk, Done, current_batcher
from serving.errors import bad_request
from serving.generation import RequestStreams, StopScanner, check_vocabulary, event_stream, random_seed, sse
from serving.metrics import current_metrics
from serving.schemas import (Completion, CompletionChoice, CompletionRequest, ModelCard, ModelList, Usage,
                             parse)
from serving.settings import current_settings

bp = Blueprint("openai", __name__, url_prefix="/v1")


def model_card(backend: Backend, model: ServedModel) -> ModelCard:
    return ModelCard(id=model.name, created=model.created, owned_by="charlm", version=model.version,
                     versions=backend.versions(), backend=backend.kind)


@bp.get("/models")
def list_models():
    backend = current_backend()
    return jsonify(ModelList(data=[model_card(backend, backend.model())]).model_dump())


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    return jsonify(model_card(current_backend(), resolve_model(model_id)).model_dump())


@dataclass(frozen=True)
class ChoicePiece:
    """Characters of one choice; a choice's last piece carries its finish reason."""

    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None


@bp.post("/completions")
def completions():
    config = current_settings()
    body = parse(CompletionRequest, request.get_data(), config)
    model = resolve_model(body.model)
    for i, prompt in enumerate(body.prompts):
        check_vocabulary(model, prompt, "prompt" if isinstance(body.prompt, str) else f"prompt.{i}")
    prompt_of = [p for p in body.prompts for _ in range(body.n)]  # choice i continues prompt_of[i]
    if len(prompt_of) > config.max_streams:
        raise bad_request(f"{len(prompt_of)} choices (prompts x n) exceed the limit of {config.max_streams}", "n")
    base_seed = body.seed if body.seed is not None else random_seed()
    sampling = body.sampling()
    # Choice i of a seeded request draws from seed + i: reproducible, and distinct between choices.
    generation = RequestStreams.submit(current_batcher(), model, prompt_of, body.max_tokens,
                                       [sampling.with_seed(base_seed + i) for i in range(len(prompt_of))],
                                       "/v1/completions", config, current_metrics())
    pieces = completion_pieces(generation, generation.events(), body, prompt_of)
    head = Completion(id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=model.name,
                      system_fingerprint=f"{model.name}-v{model.version}", choices=[])
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(completion_events(pieces, head, include_usage), generation)
    try:
        return jsonify(completion_reply(pieces, head, len(prompt_of)).model_dump())
    finally:
        generation.cancel()


def completion_pieces(generation: RequestStreams, events: Iterator[Chunk | Done], body: CompletionRequest,
                      prompt_of: list[str]) -> Iterator[ChoicePiece | Usage]:
    """The route's one loop over the batcher's events, for the streamed and the plain reply alike: the echoed
    prompts, then each choice's characters up to its first stop string (a stopped choice's stream ends at
    once), its finish reason, and last the usage."""
    scanners = [StopScanner(body.stops) for _ in prompt_of]
    generated = [0] * len(prompt_of)
    if body.echo:
        for i, prompt in enumerate(prompt_of):
            yield ChoicePiece(i, prompt)
    for event in events:
        i = event.index
        if isinstance(event, Chunk):
            text, stopped = scanners[i].feed(event.text)
            finish = "stop" if stopped else None
            if stopped:
                generation.finish(i)
        else:
            text, finish = scanners[i].flush(), "length"
        generated[i] += len(text)
        if text or finish:
            yield ChoicePiece(i, text, finish)
    prompt_tokens = sum(len(p) for p in body.prompts)
    yield Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(generated),
                total_tokens=prompt_tokens + sum(generated))


def completion_events(pieces: Iterator[ChoicePiece | Usage], head: Completion, include_usage: bool) -> Iterator[str]:
    """Server-sent events in OpenAI's shape: one per piece (its choice's new characters), the usage if asked."""
    for piece in pieces:
        if isinstance(piece, Usage):
            if include_usage:
                yield sse(head.model_copy(update={"usage": piece}).model_dump())
            continue
        choice = CompletionChoice(text=piece.text, index=piece.index, finish_reason=piece.finish_reason)
        yield sse(head.model_copy(update={"choices": [choice]}).model_dump(exclude={"usage"}))
    yield sse("[DONE]")


def completion_reply(pieces: Iterator[ChoicePiece | Usage], head: Completion, choices: int) -> Completion:
    """The pieces folded into one reply."""
    texts, finish, usage = [""] * choices, [None] * choices, None
    for piece in pieces:
        if isinstance(piece, Usage):
            usage = piece
        else:
            texts[piece.index] += piece.text
            finish[piece.index] = piece.finish_reason or finish[piece.index]
    return head.model_copy(update={"usage": usage, "choices": [
        CompletionChoice(text=text, index=i, finish_reason=reason)
        for i, (text, reason) in enumerate(zip(texts, finish))]})
