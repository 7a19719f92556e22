"""/healthz (no backend call), /readyz (model loaded, backend answering), /metrics."""
from serving.app import create_app
from serving_helpers import assert_error, shared_app


def test_healthz_needs_no_backend(tmp_path):
    # TF Serving is not there at all: the process is still alive, so /healthz says so, and /readyz does not.
    client = create_app({"backend": "tfserving", "tfserving_address": "127.0.0.1:9",
                         "tfserving_timeout_s": 0.5}).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    error = assert_error(client.get("/readyz"), 503, code="backend_unavailable")
    assert "127.0.0.1:9" in error["message"]


def test_readyz_without_a_model_version(tmp_path):
    (tmp_path / "charlm" / "1").mkdir(parents=True)  # a version directory still being written: no graph yet
    client = create_app({"model_dir": tmp_path / "charlm"}).test_client()
    error = assert_error(client.get("/readyz"), 503)
    assert "charlm" in error["message"]


def test_readyz_with_a_model(exported_model):
    client = shared_app(exported_model[0]).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready", "backend": "local", "model": "charlm", "version": 1}


def test_metrics_is_prometheus_text(exported_model):
    response = shared_app(exported_model[0]).test_client().get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert "# TYPE charlm_time_to_first_char_seconds histogram" in response.get_data(as_text=True)
