"""Native routes: POST /v1/generate (with a continuation state), /v1/score and /v1/activations."""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from flask import Blueprint, jsonify, request

from model_interface import signatures as sig
from serving import disconnect, state_token, unknown_chars
from serving.backend import ServedModel
from serving.backends import current_backend, resolve_model
from serving.batcher import Chunk, Done, current_batcher
from serving.errors import bad_request
from serving.generation import RequestStreams, event_stream, random_seed, sse
from serving.metrics import current_metrics
from serving.request_body import body_bytes
from serving.schemas import Activations, ActivationsRequest, Generation, GenerateRequest, Score, ScoreRequest, parse
from serving.settings import current_settings

bp = Blueprint("native", __name__, url_prefix="/v1")
# The state signer (CHARLM_STATE_SECRETS, or a random secret with a warning) is made when the app registers these
# routes, at start-up: serving/state_token.py.
bp.record_once(lambda setup: state_token.init_app(setup.app, setup.app.config["CHARLM"]))


def read_state(token: str | None, model: ServedModel) -> tuple[int | None, np.ndarray | None]:
    """A state this deployment signed, for this model version; anything else is a 400 `invalid_state` saying why."""
    if token is None:
        return None, None
    try:
        return state_token.current_signer().decode(token, model.name, model.version, model.state_size)
    except state_token.StateError as e:
        raise bad_request(str(e), "state", code="invalid_state") from None


def state_rows(state: np.ndarray | None, model: ServedModel) -> np.ndarray:
    """Full width always (zeros for a fresh start), so TF Serving's batching can stack it with any other call."""
    return state[None, :] if state is not None else sig.fresh_states(1, model.state_size)


@dataclass(frozen=True)
class GenerationPiece:
    """Generated characters; the last piece carries the finish reason and the continuation state."""

    text: str
    finish_reason: str | None = None
    state: str | None = None


@bp.post("/generate")
def generate():
    config = current_settings()
    body = parse(GenerateRequest, body_bytes(), config)
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    prompt, changes = unknown_chars.prepare_one(model, body.prompt, "prompt", unknown_chars.policy(body, config))
    seed = body.seed if body.seed is not None else kept_seed if kept_seed is not None else random_seed()
    sampling = body.sampling().with_seed(seed)
    signer = state_token.current_signer()  # for the last piece: a stream's generator runs without the app context
    generation = RequestStreams.submit(current_batcher(), model, [prompt], body.max_chars, [sampling],
                                       "/v1/generate", config, current_metrics(), states=[state])
    head = Generation(id=f"gen-{uuid.uuid4().hex[:24]}", object="generation.chunk", model=model.name,
                      version=model.version, text="", finish_reason=None, seed=seed, state=None,
                      text_changes=changes)
    if body.stream:
        return event_stream(generation_events(generation_pieces(generation.events(), model, seed, signer), head),
                            generation)
    try:
        with disconnect.watching(generation):
            reply = generation_reply(generation_pieces(generation.events(), model, seed, signer), head)
        return jsonify(reply.model_dump())
    finally:
        generation.cancel()


def generation_pieces(events: Iterator[Chunk | Done], model: ServedModel, seed: int,
                      signer: state_token.StateSigner) -> Iterator[GenerationPiece]:
    """The route's one loop over the batcher's events, for the streamed and the plain reply alike."""
    for event in events:
        if isinstance(event, Chunk):
            yield GenerationPiece(event.text)
        else:
            yield GenerationPiece("", "length", signer.encode(model.name, model.version, seed, event.state))


def generation_events(pieces: Iterator[GenerationPiece], head: Generation) -> Iterator[str]:
    for piece in pieces:
        yield sse(head.model_copy(update={"text": piece.text, "finish_reason": piece.finish_reason,
                                          "state": piece.state}).model_dump())
    yield sse("[DONE]")


def generation_reply(pieces: Iterator[GenerationPiece], head: Generation) -> Generation:
    """The pieces folded into one reply: all the text, the last piece's finish reason and state."""
    text, last = [], None
    for piece in pieces:
        text.append(piece.text)
        last = piece
    return head.model_copy(update={"object": "generation", "text": "".join(text),
                                   "finish_reason": last.finish_reason, "state": last.state})


@bp.post("/score")
def score():
    config = current_settings()
    body = parse(ScoreRequest, body_bytes(), config)
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    text, changes = unknown_chars.prepare_one(model, body.text, "text", unknown_chars.policy(body, config),
                                              nonempty=True)
    out = current_backend().call(sig.SCORE, model.version, sig.text_inputs([text], state_rows(state, model)),
                                 ("log_probs", "lengths", "bits_per_char", "state", "unknown_chars"))
    length = int(out["lengths"][0])
    log2 = (out["log_probs"][0, :length] / math.log(2)).round(5).tolist() if body.per_char else None
    return jsonify(Score(model=model.name, version=model.version, characters=length,
                         bits_per_char=float(out["bits_per_char"][0]), log2_probs=log2,
                         state=state_token.current_signer().encode(model.name, model.version, kept_seed or 0,
                                                                   out["state"][0]),
                         text_changes=changes).model_dump())


@bp.post("/activations")
def activations():
    config = current_settings()
    body = parse(ActivationsRequest, body_bytes(), config)
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    text, changes = unknown_chars.prepare_one(model, body.text, "text", unknown_chars.policy(body, config),
                                              nonempty=True)
    layers, cell = model.metadata.num_layers, model.metadata.cell
    layer = layers - 1 if body.layer is None else body.layer
    if layer >= layers:
        raise bad_request(f"layer must be below {layers}: the model has {layers} layer(s)", "layer")
    source = "cell" if body.kind == "tanh_cell" else body.kind
    if cell != "lstm" and source != "hidden":
        raise bad_request(f"a {cell} model has only 'hidden' activations", "kind")
    out = current_backend().call(sig.ACTIVATIONS, model.version,
                                 sig.text_inputs([text], state_rows(state, model)),
                                 (source, "lengths", "state", "unknown_chars"))
    length = int(out["lengths"][0])
    values = out[source][0, :length, layer, :]
    if body.kind == "tanh_cell":
        values = np.tanh(values)
    return jsonify(Activations(model=model.name, version=model.version, layer=layer, kind=body.kind,
                               chars=list(text), values=values.round(4).tolist(),
                               state=state_token.current_signer().encode(model.name, model.version, kept_seed or 0,
                                                                         out["state"][0]),
                               text_changes=changes).model_dump())
