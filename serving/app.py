"""The application factory. gunicorn calls `serving.app:create_app()` in each worker (no preload), so the
model, the gRPC channel and the batching thread all come into being after the fork."""
from __future__ import annotations

import logging

from flask import Flask, request

from serving import auth, backends, batcher, cors, errors, metrics
from serving.settings import Settings


def create_app(config: dict | None = None) -> Flask:
    """`config` overrides CHARLM_* settings by field name (tests pass e.g. {"model_dir": ...})."""
    settings = Settings(**(config or {}))
    app = Flask(__name__)
    app.config.update(CHARLM=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    app.json.sort_keys = False  # fields in the order OpenAI's API documents them
    app.json.ensure_ascii = False
    logging.basicConfig(level=logging.INFO)  # does nothing if logging is configured already

    errors.init_app(app)
    metrics.init_app(app)
    cors.init_app(app, settings)  # before auth: a CORS preflight carries no API key
    auth.init_app(app, settings)
    backends.init_app(app, settings)
    from serving import routes_chat

    routes_chat.check_at_start(app.extensions["charlm.backend"], settings)  # a chat setting the model cannot write
    batcher.init_app(app, settings)

    @app.before_request
    def look_for_new_version():
        # Traffic drives the (background, throttled) look for a newer version; probes of liveness and
        # metrics scrapes do not, so they never touch the backend.
        if request.path.startswith("/v1/") or request.path == "/readyz":
            app.extensions["charlm.backend"].maybe_refresh()

    from serving import (openapi, routes_health, routes_native, routes_openai, routes_tokenize, routes_ui,
                         routes_visualize)

    for blueprint in (routes_openai.bp, routes_chat.bp, routes_native.bp, routes_tokenize.bp, routes_health.bp,
                      openapi.bp, routes_ui.bp, routes_visualize.bp):
        app.register_blueprint(blueprint)
    return app
