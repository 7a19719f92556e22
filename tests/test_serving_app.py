"""The application factory: configuration, blueprints, and nothing started before it is needed."""
from serving.app import create_app


def test_factory_applies_config_and_registers_blueprints(tmp_path):
    app = create_app({"model_dir": tmp_path / "m", "max_body_bytes": 5000})
    settings = app.config["CHARLM"]
    assert settings.model_dir == tmp_path / "m" and app.config["MAX_CONTENT_LENGTH"] == 5000
    assert {"openai", "native", "health", "openapi", "ui"} <= set(app.blueprints)
    assert {"charlm.backend", "charlm.batcher", "charlm.metrics"} <= set(app.extensions)


def test_apps_are_independent_and_start_no_thread_until_a_stream(tmp_path):
    first, second = create_app({"model_dir": tmp_path}), create_app({"model_dir": tmp_path})
    assert first.extensions["charlm.batcher"] is not second.extensions["charlm.batcher"]
    assert first.extensions["charlm.metrics"].registry is not second.extensions["charlm.metrics"].registry
    # The batching thread starts with the first stream, i.e. in the gunicorn worker, never in a master.
    assert first.extensions["charlm.batcher"]._thread is None
