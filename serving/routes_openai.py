"""OpenAI-compatible routes: POST /v1/completions (a token is a character) and GET /v1/models, so the
official `openai` client and tools built on it (lm-eval-harness's log-likelihoods included) work unchanged."""
from __future__ import annotations

import time
import uuid
from typing import Iterator

from flask import Blueprint, jsonify, request

from model_interface.signatures import MAX_LOGPROBS
from serving import disconnect, unknown_chars
from serving.backend import Backend, ServedModel
from serving.backends import current_backend, resolve_model
from serving.batcher import current_batcher
from serving.choices import Choice, ChoicePiece, Echo, best_of, choice_pieces, fold
from serving.errors import bad_request
from serving.generation import RequestStreams, event_stream, random_seed, sse
from serving.logprobs import legacy, score_texts
from serving.metrics import current_metrics
from serving.request_body import body_bytes
from serving.routes_chat import chat_template_of
from serving.schemas import (MAX_STOP, Completion, CompletionChoice, CompletionRequest, ModelCard, ModelLimits,
                             ModelList, Usage, parse)
from serving.settings import Settings, current_settings

bp = Blueprint("openai", __name__, url_prefix="/v1")


def max_model_len(settings: Settings) -> int:
    """vLLM's max_model_len: the characters a prompt and its generated text may hold together. The recurrent
    model has no context limit; the gateway's limits are the only bound."""
    return settings.max_prompt_chars + settings.max_tokens


def model_card(backend: Backend, model: ServedModel, settings: Settings) -> ModelCard:
    metadata = model.metadata
    chat = chat_template_of(model, settings)  # the one /v1/chat/completions uses: a setting's, else the version's
    limits = ModelLimits(max_tokens=settings.max_tokens, max_prompt_chars=settings.max_prompt_chars,
                         max_score_chars=settings.max_score_chars, max_activation_chars=settings.max_activation_chars,
                         max_n=settings.max_n, max_logprobs=MAX_LOGPROBS, max_stop=MAX_STOP,
                         max_streams=settings.max_streams)
    return ModelCard(id=model.name, created=model.created, owned_by="charlm", version=model.version,
                     versions=backend.versions(), backend=backend.kind, max_model_len=max_model_len(settings),
                     vocab=list(metadata.vocab), vocab_size=metadata.vocab_size, state_size=metadata.state_size,
                     precision=metadata.precision,
                     cell=metadata.cell, num_layers=metadata.num_layers, hidden_size=metadata.hidden_size,
                     limits=limits, chat_template=chat.source if chat else None,
                     chat_stop=list(chat.stop) if chat else [])


@bp.get("/models")
def list_models():
    backend = current_backend()
    return jsonify(ModelList(data=[model_card(backend, backend.model(), current_settings())]).model_dump())


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    return jsonify(model_card(current_backend(), resolve_model(model_id), current_settings()).model_dump())


@bp.post("/completions")
def completions():
    config = current_settings()
    body = parse(CompletionRequest, body_bytes(), config)
    model = resolve_model(body.model)
    prompts, changes = unknown_chars.prepare(model, body.prompts, body.prompt_params,
                                             unknown_chars.policy(body, config))
    per_prompt = body.candidates  # best_of candidates, or n
    prompt_of = [p for p in prompts for _ in range(per_prompt)]  # choice (candidate) i continues prompt_of[i]
    if len(prompt_of) > config.max_streams:
        param = "best_of" if per_prompt > body.n else "n"
        raise bad_request(f"{len(prompt_of)} choices (prompts x {param}) exceed the limit of {config.max_streams}",
                          param)
    want_logprobs = body.logprobs is not None
    echo = None
    if body.echo:
        scored = (score_texts(current_backend(), model, prompts, body.logprobs, config.max_score_chars)
                  if want_logprobs else [None] * len(prompts))
        echo = [Echo(prompt, scores) for prompt, scores in zip(prompts, scored) for _ in range(per_prompt)]
    base_seed = body.seed if body.seed is not None else random_seed()
    sampling = body.sampling()
    # Choice i of a seeded request draws from seed + i: reproducible, and distinct between choices. With
    # max_tokens 0 nothing is generated: the streams need not read their prompts either.
    generation = RequestStreams.submit(current_batcher(), model, prompt_of if body.max_tokens else [""] * len(prompt_of),
                                       body.max_tokens, [sampling.with_seed(base_seed + i) for i in range(len(prompt_of))],
                                       "/v1/completions", config, current_metrics())
    head = Completion(id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=model.name,
                      system_fingerprint=f"{model.name}-v{model.version}", choices=[], text_changes=changes)
    prompt_tokens = sum(len(p) for p in prompts)

    def pieces() -> Iterator[ChoicePiece]:
        return choice_pieces(generation, generation.events(), choices=len(prompt_of), stops=body.stops,
                             vocab=model.metadata.vocab, want_top=want_logprobs, echo=echo)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(completion_events(pieces(), head, prompt_tokens, include_usage, want_logprobs),
                            generation)
    try:
        with disconnect.watching(generation):
            choices = fold(pieces(), len(prompt_of))
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(c.generated_chars for c in choices),
                      total_tokens=prompt_tokens + sum(c.generated_chars for c in choices))
        if per_prompt > body.n:
            choices = best_of(choices, per_prompt, body.n)
        return jsonify(completion_reply(choices, head, usage, want_logprobs).model_dump())
    finally:
        generation.cancel()


def completion_events(pieces: Iterator[ChoicePiece], head: Completion, prompt_tokens: int, include_usage: bool,
                      want_logprobs: bool) -> Iterator[str]:
    """Server-sent events in OpenAI's shape: one per piece (its choice's new characters, and their
    log-probabilities with offsets continuing the choice's text), the usage if asked."""
    offsets: dict[int, int] = {}
    generated = 0
    for piece in pieces:
        offset = offsets.get(piece.index, 0)
        offsets[piece.index] = offset + len(piece.text)
        generated += len(piece.text) if piece.generated else 0
        choice = CompletionChoice(text=piece.text, index=piece.index, finish_reason=piece.finish_reason,
                                  logprobs=legacy(piece.text, piece.scores, offset) if want_logprobs else None)
        yield sse(head.model_copy(update={"choices": [choice]}).model_dump(exclude={"usage"}))
    if include_usage:
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=generated, total_tokens=prompt_tokens + generated)
        yield sse(head.model_copy(update={"usage": usage}).model_dump())
    yield sse("[DONE]")


def completion_reply(choices: list[Choice], head: Completion, usage: Usage, want_logprobs: bool) -> Completion:
    return head.model_copy(update={"usage": usage, "choices": [
        CompletionChoice(text=c.text, index=c.index, finish_reason=c.finish_reason,
                         logprobs=legacy(c.text, c.scores, 0) if want_logprobs else None) for c in choices]})
