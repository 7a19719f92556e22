"""POST /tokenize and POST /detokenize, in vLLM's shape and at vLLM's paths (outside /v1/): a token is a
character, and its id is its index in the served version's vocabulary (GET /v1/models lists it), the same ids
the graph uses inside."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from serving import unknown_chars
from serving.backends import resolve_model
from serving.errors import bad_request
from serving.request_body import body_bytes
from serving.routes_openai import max_model_len
from serving.schemas import Detokenized, DetokenizeRequest, Tokenized, TokenizeRequest, parse
from serving.settings import current_settings

bp = Blueprint("tokenize", __name__)

SHOWN = 20  # ids named in a message


@bp.post("/tokenize")
def tokenize():
    config = current_settings()
    body = parse(TokenizeRequest, body_bytes(), config)
    model = resolve_model(body.model)
    text, changes = unknown_chars.prepare_one(model, body.prompt, "prompt", unknown_chars.policy(body, config))
    ids = {char: i for i, char in enumerate(model.metadata.vocab)}
    tokens = [ids[c] for c in text]
    return jsonify(Tokenized(count=len(tokens), max_model_len=max_model_len(config), tokens=tokens,
                             token_strs=list(text) if body.return_token_strs else None,
                             text_changes=changes).model_dump())


@bp.post("/detokenize")
def detokenize():
    body = parse(DetokenizeRequest, body_bytes(), current_settings())
    model = resolve_model(body.model)
    vocab = model.metadata.vocab
    bad = [(i, t) for i, t in enumerate(body.tokens) if not 0 <= t < len(vocab)]
    if bad:
        named = ", ".join(f"{t} (at {i})" for i, t in bad[:SHOWN]) + (", ..." if len(bad) > SHOWN else "")
        raise bad_request(f"tokens has ids outside the vocabulary (0 ... {len(vocab) - 1}): {named}", "tokens",
                          code="unknown_token_ids")
    return jsonify(Detokenized(prompt="".join(vocab[t] for t in body.tokens)).model_dump())
