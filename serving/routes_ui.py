"""The playground at /: type a prompt, pick temperature and length, watch the text stream in. A static
page (serving/static/) that calls /v1/completions with `stream: true`, like any other client."""
from __future__ import annotations

from flask import Blueprint, current_app

bp = Blueprint("ui", __name__)


@bp.get("/")
def playground():
    response = current_app.send_static_file("index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
