"""Native routes: POST /v1/generate (with a continuation state), /v1/score and /v1/activations."""
from __future__ import annotations

import itertools
import math
import uuid

import numpy as np
from flask import Blueprint, jsonify, request

from serving import state_token
from serving.backends import ModelInfo, current_backend, resolve_model
from serving.batcher import Chunk, Failed, current_batcher
from serving.errors import bad_request
from serving.generation import RequestStreams, check_vocabulary, event_stream, random_seed, sse
from serving.metrics import current_metrics
from serving.settings import current_settings
from serving.schemas import Activations, ActivationsRequest, Generation, GenerateRequest, Score, ScoreRequest, parse

bp = Blueprint("native", __name__, url_prefix="/v1")


def read_state(token: str | None, model: ModelInfo) -> tuple[int | None, np.ndarray | None]:
    if token is None:
        return None, None
    try:
        return state_token.decode(token, model.name, model.version, model.state_size)
    except state_token.StateError as e:
        raise bad_request(str(e), "state", code="invalid_state") from None


def state_input(state: np.ndarray | None, model: ModelInfo) -> np.ndarray:
    """Full width always (zeros for a fresh start), so TF Serving's batching can stack it with any other call."""
    return state[None, :] if state is not None else np.zeros([1, model.state_size], np.float32)


@bp.post("/generate")
def generate():
    config = current_settings()
    body = parse(GenerateRequest, request.get_data(), config)
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    check_vocabulary(model, body.prompt, "prompt")
    seed = body.seed if body.seed is not None else kept_seed if kept_seed is not None else random_seed()
    row = dict(prompt=body.prompt, state=state, remaining=body.max_chars, temperature=body.temperature,
               top_k=body.top_k, top_p=body.top_p, seed=seed)
    generation = RequestStreams.submit(current_batcher(), model, [row], "/v1/generate", config, current_metrics())
    first, events = generation.first()
    events = itertools.chain([first], events)
    reply = dict(id=f"gen-{uuid.uuid4().hex[:24]}", model=model.name, version=model.version, seed=seed)

    def final_state(event) -> str:
        return state_token.encode(model.name, model.version, seed, event.state)

    if body.stream:
        def stream():
            for event in events:
                if isinstance(event, Failed):
                    raise event.error.as_api_error()  # sent as an error event: the headers are out already
                if isinstance(event, Chunk):
                    yield sse(Generation(**reply, object="generation.chunk", text=event.text,
                                         finish_reason=None, state=None).model_dump())
                else:
                    yield sse(Generation(**reply, object="generation.chunk", text="", finish_reason="length",
                                         state=final_state(event)).model_dump())
            yield sse("[DONE]")

        return event_stream(stream(), generation)

    text = []
    try:
        for event in events:
            if isinstance(event, Failed):
                raise event.error.as_api_error()
            if isinstance(event, Chunk):
                text.append(event.text)
            else:
                done = event
    finally:
        generation.cancel()
    return jsonify(Generation(**reply, object="generation", text="".join(text), finish_reason="length",
                              state=final_state(done)).model_dump())


@bp.post("/score")
def score():
    body = parse(ScoreRequest, request.get_data(), current_settings())
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    check_vocabulary(model, body.text, "text")
    out = current_backend().call("score", model.version, {"text": np.array([body.text], object),
                                                          "state": state_input(state, model)},
                                 ("log_probs", "lengths", "bits_per_char", "state", "unknown_chars"))
    length = int(out["lengths"][0])
    log2 = (out["log_probs"][0, :length] / math.log(2)).round(5).tolist() if body.per_char else None
    return jsonify(Score(model=model.name, version=model.version, characters=length,
                         bits_per_char=float(out["bits_per_char"][0]), log2_probs=log2,
                         state=state_token.encode(model.name, model.version, kept_seed or 0,
                                                  out["state"][0])).model_dump())


@bp.post("/activations")
def activations():
    body = parse(ActivationsRequest, request.get_data(), current_settings())
    model = resolve_model(body.model)
    kept_seed, state = read_state(body.state, model)
    check_vocabulary(model, body.text, "text")
    layer = model.num_layers - 1 if body.layer is None else body.layer
    if layer >= model.num_layers:
        raise bad_request(f"layer must be below {model.num_layers}: the model has {model.num_layers} layer(s)",
                          "layer")
    source = "cell" if body.kind == "tanh_cell" else body.kind
    if model.cell != "lstm" and source != "hidden":
        raise bad_request(f"a {model.cell} model has only 'hidden' activations", "kind")
    out = current_backend().call("activations", model.version, {"text": np.array([body.text], object),
                                                                "state": state_input(state, model)},
                                 (source, "lengths", "state", "unknown_chars"))
    length = int(out["lengths"][0])
    values = out[source][0, :length, layer, :]
    if body.kind == "tanh_cell":
        values = np.tanh(values)
    return jsonify(Activations(model=model.name, version=model.version, layer=layer, kind=body.kind,
                               chars=list(body.text), values=values.round(4).tolist(),
                               state=state_token.encode(model.name, model.version, kept_seed or 0,
                                                        out["state"][0])).model_dump())
