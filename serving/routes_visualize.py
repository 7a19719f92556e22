"""The live page at /visualize: paste a text, pick a layer and a cell (or a feature, to jump to the cell that
tracks it best on that text), and see each character's background coloured by the cell's value, red (-1) to
blue (+1), as in Figure 2 of "Visualizing and Understanding Recurrent Networks".

The page (serving/static/visualize.html) reads activations from POST /v1/activations like any other client.
The one thing it asks this blueprint for is the feature tracks of its text (POST /visualize/features),
computed by analysis/features.py, so the page and `make report` mean the same thing by "bracket depth".

With CHARLM_API_KEYS set, the page stays open but both of its calls need a key, as every route that computes does
(serving/auth.py): the page sends the one its API key field holds (serving/static/apikey.js).
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, jsonify, send_file

from serving.request_body import body_json

bp = Blueprint("visualize", __name__)

PAGE = Path(__file__).resolve().parent / "static" / "visualize.html"
MAX_FEATURE_CHARS = 20_000  # far above what /v1/activations accepts per request (1,000 by default)


def invalid(message: str, param: str | None = "text"):
    """OpenAI's error envelope, as every other route of the gateway answers."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}}
    return jsonify(body), 400


@bp.get("/visualize")
def page():
    response = send_file(PAGE, mimetype="text/html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.post("/visualize/features")
def feature_tracks():
    """{"text": str} -> {"features": [{"name", "description", "values": [one number per character]}, …]}, a list
    so the order holds whatever the app's JSON key sorting."""
    from analysis.features import FEATURES, feature_tracks as compute

    body = body_json()
    if not isinstance(body, dict):
        return invalid("the body must be a JSON object {\"text\": ...}", None)
    unknown = sorted(set(body) - {"text"})
    if unknown:
        return invalid(f"unknown field(s): {', '.join(unknown)}", unknown[0])
    text = body.get("text")
    if not isinstance(text, str) or not text:
        return invalid("text must be a non-empty string")
    if len(text) > MAX_FEATURE_CHARS:
        return invalid(f"text must be at most {MAX_FEATURE_CHARS:,} characters, got {len(text):,}")
    tracks = compute(text)
    return jsonify({"features": [{"name": name, "description": FEATURES[name][1], "values": values.tolist()}
                                 for name, values in tracks.items()]})
