"""POST /v1/chat/completions, OpenAI's chat completions for a character model.

A character model knows no roles: the conversation becomes one text, written by the chat template (Jinja2,
model_interface/chat.py) rendered with add_generation_prompt, and the reply is what the model writes next, up to
the template's stop strings or the request's. The `play` template (tiny-shakespeare) writes each message as a
speech, roles mapped to speaker names, and stops at the blank line before the next speaker.

The template is the version's own (ModelMetadata.chat_template and chat_stop, written at export) unless
CHARLM_CHAT_TEMPLATE / CHARLM_CHAT_STOP replace it (serving/settings.py); either way it is checked against the
version's vocabulary before a request is read with it: at start-up for the version loaded then (a setting that
cannot be written stops the gateway), and for any other version the first time it is used.

The streams, their events and their choices are completions' (RequestStreams, choices.choice_pieces): one loop,
folded into a reply or sent as `chat.completion.chunk` events.
"""
from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from typing import Iterator, Sequence

from flask import Blueprint, jsonify, request

from model_interface.chat import ChatTemplate, ChatTemplateError
from model_interface.errors import ModelInterfaceError
from serving import disconnect, unknown_chars
from serving.backend import Backend, ServedModel
from serving.backends import resolve_model
from serving.batcher import current_batcher
from serving.chat_schemas import (ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                                  ChatCompletionRequest, ChatDelta, ChatLogprobs, ChatMessageOut, ChatTokenLogprob,
                                  ChatTopLogprob, message_text)
from serving.choices import Choice, ChoicePiece, choice_pieces, fold
from serving.errors import APIError, bad_request
from serving.generation import RequestStreams, event_stream, random_seed, sse
from serving.logprobs import CharScores
from serving.metrics import current_metrics
from serving.request_body import body_bytes
from serving.schemas import TextChanges, Usage, parse
from serving.settings import Settings, current_settings

log = logging.getLogger(__name__)

bp = Blueprint("chat", __name__, url_prefix="/v1")
ENDPOINT = "/v1/chat/completions"
HOW_TO_GIVE_ONE = ("export the version with a chat template (`python -m training.export --chat-template "
                   "play|plain|FILE`), or set CHARLM_CHAT_TEMPLATE to a Jinja2 file on the gateway; /v1/completions "
                   "continues a prompt as it is")


# --- the template -------------------------------------------------------------------------------------------
def chat_template_of(model: ServedModel, settings: Settings) -> ChatTemplate | None:
    """The template chat requests to `model` are written with: CHARLM_CHAT_TEMPLATE's if set, else the version's
    own; CHARLM_CHAT_STOP's stop strings in place of the template's if set. None: no chat."""
    override = settings.chat_override
    if override is not None:
        return override
    source = model.metadata.chat_template
    if source is None:
        return None
    stop = settings.chat_stop if settings.chat_stop is not None else model.metadata.chat_stop
    return ChatTemplate(source, tuple(stop))


@lru_cache(maxsize=32)
def template_problem(template: ChatTemplate, vocab: tuple[str, ...]) -> str | None:
    """Why `template` cannot write chats for a model of `vocab` (characters it writes that the vocabulary lacks, or
    it fails to render), or None. Once per template and vocabulary."""
    try:
        template.check_vocabulary(vocab)
    except Exception as e:  # ChatTemplateError, or whatever the template's own code raised
        log.error("a chat template cannot be used with a model of this vocabulary: %s", e)
        return str(e)
    return None


def template_source(settings: Settings) -> str:
    """Where the template in use comes from, for messages."""
    source = "CHARLM_CHAT_TEMPLATE" if settings.chat_template is not None else "the version's chat template"
    return source + (" with CHARLM_CHAT_STOP" if settings.chat_stop is not None else "")


def check_at_start(backend: Backend, settings: Settings) -> None:
    """A chat setting the version loaded at start-up cannot write stops the gateway here (a ChatTemplateError
    naming the setting and the characters). With no version loaded yet (TF Serving not answering), the check
    happens at first use."""
    if settings.chat_template is None and settings.chat_stop is None:
        return
    try:
        model = backend.model()
    except ModelInterfaceError:
        return
    template = chat_template_of(model, settings)
    problem = template and template_problem(template, model.metadata.vocab)
    if problem:
        raise ChatTemplateError(f"{template_source(settings)}, for {model.name} version {model.version}: {problem}; "
                                "fix the setting or leave it out")


def usable_template(model: ServedModel, settings: Settings) -> ChatTemplate:
    template = chat_template_of(model, settings)
    if template is None:
        raise bad_request(f"{model.name} version {model.version} has no chat template, so it cannot read messages: "
                          f"{HOW_TO_GIVE_ONE}", "messages", code="no_chat_template")
    problem = template_problem(template, model.metadata.vocab)
    if problem:
        raise APIError(503, f"chat is unavailable for {model.name} version {model.version}: "
                            f"{template_source(settings)}: {problem}", code="chat_template_unusable")
    return template


def conversation(body: ChatCompletionRequest, model: ServedModel, template: ChatTemplate,
                 settings: Settings) -> tuple[str, TextChanges | None]:
    """The text the model reads (the messages as the template writes them, then the assistant's turn) and what was
    changed in the messages to read them (unknown_chars)."""
    texts, params = [], []
    for i, message in enumerate(body.messages):
        texts.append(message_text(message))
        params.append(f"messages.{i}.content")
        if message.name is not None:
            texts.append(message.name)
            params.append(f"messages.{i}.name")
    read, changes = unknown_chars.prepare(model, texts, params, unknown_chars.policy(body, settings))
    read = iter(read)
    messages = []
    for message in body.messages:
        written = {"role": "system" if message.role == "developer" else message.role, "content": next(read)}
        if message.name is not None:
            written["name"] = next(read)
        messages.append(written)
    try:
        prompt = template.render(messages, add_generation_prompt=True)
    except Exception as e:  # the template refused these messages (raise_exception, a type error in its code)
        message = str(e) if isinstance(e, ChatTemplateError) else f"the chat template failed: {e}"
        raise bad_request(f"{message}; the messages cannot be written as the model reads them", "messages",
                          code="chat_template_failed") from None
    unknown = model.unknown_chars(prompt)
    if unknown:
        raise bad_request(f"the chat template wrote characters outside the model's vocabulary for these messages: "
                          f"{unknown_chars.shown(unknown)}", "messages", code="unknown_characters")
    if len(prompt) > settings.max_prompt_chars:
        raise bad_request(f"the conversation, as the model reads it, is {len(prompt)} characters; at most "
                          f"{settings.max_prompt_chars}", "messages")
    return prompt, changes


# --- the route ----------------------------------------------------------------------------------------------
@bp.post("/chat/completions")
def chat_completions():
    config = current_settings()
    body = parse(ChatCompletionRequest, body_bytes(), config)
    model = resolve_model(body.model)
    template = usable_template(model, config)
    prompt, changes = conversation(body, model, template, config)
    if body.n > config.max_streams:
        raise bad_request(f"{body.n} choices exceed the limit of {config.max_streams}", "n")
    stops = list(dict.fromkeys([*template.stop, *body.stops]))
    top_n = body.top_logprobs or 0
    base_seed = body.seed if body.seed is not None else random_seed()
    sampling = body.sampling()
    generation = RequestStreams.submit(current_batcher(), model, [prompt] * body.n, body.max_chars(config.max_tokens),
                                       [sampling.with_seed(base_seed + i) for i in range(body.n)], ENDPOINT, config,
                                       current_metrics())
    fields = dict(id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=model.name,
                  system_fingerprint=f"{model.name}-v{model.version}", choices=[], text_changes=changes)
    logprobs = top_n if body.logprobs else None

    def pieces() -> Iterator[ChoicePiece]:
        # (events() awaits the first event, before the reply is chosen: a failure then gets its own status.)
        return choice_pieces(generation, generation.events(), choices=body.n, stops=stops,
                             vocab=model.metadata.vocab, want_top=body.logprobs and top_n > 0)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(chat_events(pieces(), ChatCompletionChunk(**fields), body.n, len(prompt), include_usage,
                                        logprobs), generation)
    try:
        with disconnect.watching(generation):
            choices = fold(pieces(), body.n)
        generated = sum(c.generated_chars for c in choices)
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=generated, total_tokens=len(prompt) + generated)
        return jsonify(chat_reply(choices, ChatCompletion(**fields, usage=usage), logprobs).model_dump())
    finally:
        generation.cancel()


def chat_logprobs(text: str, scores: CharScores, top_n: int) -> ChatLogprobs:
    """OpenAI's chat shape for `text`'s characters: each one's log-probability and bytes, and the `top_n` likeliest
    characters at its position (scores.top holds them first, likeliest first, then the character if it was not
    among them)."""
    entries = []
    for t, char in enumerate(text):
        top = scores.top[t] if scores.top is not None and scores.top[t] is not None else {}
        entries.append(ChatTokenLogprob(
            token=char, logprob=scores.logprobs[t], bytes=list(char.encode("utf-8")),
            top_logprobs=[ChatTopLogprob(token=c, logprob=lp, bytes=list(c.encode("utf-8")))
                          for c, lp in list(top.items())[:top_n]]))
    return ChatLogprobs(content=entries)


def chunk(head: ChatCompletionChunk, index: int, delta: ChatDelta, logprobs: ChatLogprobs | None = None,
          finish_reason: str | None = None) -> str:
    payload = head.model_copy(update={"choices": [ChatChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                                                  finish_reason=finish_reason)]})
    data = payload.model_dump(exclude={"usage"})
    data["choices"][0]["delta"] = delta.model_dump(exclude_none=True)  # {} in a choice's last chunk, as OpenAI's
    return sse(data)


def chat_events(pieces: Iterator[ChoicePiece], head: ChatCompletionChunk, choices: int, prompt_tokens: int,
                include_usage: bool, logprobs: int | None) -> Iterator[str]:
    """Server-sent events in OpenAI's shape: per choice a first chunk with the role, a chunk per piece of
    content (with its characters' log-probabilities if asked), a last chunk with the finish reason and an empty
    delta; then the usage if asked, then [DONE]."""
    for index in range(choices):
        yield chunk(head, index, ChatDelta(role="assistant", content=""))
    generated = 0
    for piece in pieces:
        generated += len(piece.text)
        if piece.text:
            yield chunk(head, piece.index, ChatDelta(content=piece.text),
                        chat_logprobs(piece.text, piece.scores, logprobs) if logprobs is not None else None)
        if piece.finish_reason:
            yield chunk(head, piece.index, ChatDelta(), finish_reason=piece.finish_reason)
    if include_usage:
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=generated, total_tokens=prompt_tokens + generated)
        yield sse(head.model_copy(update={"usage": usage}).model_dump())
    yield sse("[DONE]")


def chat_reply(choices: Sequence[Choice], head: ChatCompletion, logprobs: int | None) -> ChatCompletion:
    return head.model_copy(update={"choices": [
        ChatChoice(index=c.index, message=ChatMessageOut(content=c.text), finish_reason=c.finish_reason,
                   logprobs=chat_logprobs(c.text, c.scores, logprobs) if logprobs is not None else None)
        for c in choices]})
