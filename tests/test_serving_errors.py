"""Whatever goes wrong, the client gets OpenAI's error envelope: never an HTML page, a traceback or a bare 500."""
import pytest

from model_interface.errors import DeadlineExceeded, InputRejected, MetadataError, ModelUnavailable, VersionNotFound
from serving.app import create_app
from serving.errors import GenerationStalled, TooManyStreams, UnknownModel
from serving_helpers import assert_error

# What each typed failure is told as: status, `code`, `type`.
TYPED = {
    "unavailable": (ModelUnavailable("TF Serving at x:8500: UNAVAILABLE"), 503, "backend_unavailable", "server_error"),
    "version": (VersionNotFound("charlm version 3 is no longer loaded"), 503, "version_unloaded", "server_error"),
    "deadline": (DeadlineExceeded("no answer within 1 s"), 504, "backend_timeout", "server_error"),
    "rejected": (InputRejected("temperature must be > 0"), 400, "invalid_value", "invalid_request_error"),
    "metadata": (MetadataError("charlm.json: cell: missing"), 503, "backend_unavailable", "server_error"),
    "model": (UnknownModel("the model 'gpt-4' does not exist"), 404, "model_not_found", "invalid_request_error"),
    "streams": (TooManyStreams("64 streams are running", 7), 429, "too_many_streams", "rate_limit_error"),
    "stalled": (GenerationStalled("no output for 120 s"), 504, "generation_stalled", "server_error"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # No model needed: these failures happen before any backend call.
    app = create_app({"model_dir": tmp_path_factory.mktemp("empty") / "charlm", "max_body_bytes": 4096})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    @app.get("/typed/<name>")
    def typed(name):
        raise TYPED[name][0]

    return app


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_failures_get_their_status_and_code(app, name):
    failure, status, code, kind = TYPED[name]
    response = app.test_client().get(f"/typed/{name}")
    error = assert_error(response, status, code=code)
    assert error["type"] == kind and str(failure) in error["message"]
    if name == "model":
        assert error["param"] == "model"
    if name == "streams":
        assert response.headers["Retry-After"] == "7"


def test_unknown_route_is_404(app):
    assert_error(app.test_client().get("/v2/nothing"), 404, code="not_found")


def test_wrong_method_is_405_with_allow(app):
    response = app.test_client().get("/v1/completions")
    assert_error(response, 405, code="method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_413(app):
    response = app.test_client().post("/v1/completions", data="x" * 5000, content_type="application/json")
    assert_error(response, 413, code="request_too_large")


def test_unexpected_exception_is_a_logged_500_envelope(app, caplog):
    response = app.test_client().get("/boom")
    error = assert_error(response, 500, code="internal_error")
    assert error["type"] == "server_error" and "secret" not in response.get_data(as_text=True)
    assert "secret internals" in caplog.text  # in the log, for the operator


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/generate", "/v1/score", "/v1/activations"])
def test_not_json_on_every_post_route(app, path):
    assert_error(app.test_client().post(path, data="prompt=hello", content_type="application/x-www-form-urlencoded"),
                 400, code="invalid_json")
    assert_error(app.test_client().post(path), 400, code="invalid_json")  # no body at all


DEEP_BODIES = {  # Python's json recurses once per level: these pass its recursion limit (1,000) before any end
    "arrays": b"[" * 3000,
    "objects": b'{"":' * 1000,
    "in_a_field": b'{"model": "charlm", "prompt": ' + b"[" * 3000,
}


@pytest.mark.parametrize("kind", DEEP_BODIES)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/generate", "/v1/score",
                                  "/v1/activations", "/tokenize", "/detokenize", "/visualize/features"])
def test_json_nested_past_the_recursion_limit_is_a_400(app, path, kind):
    response = app.test_client().post(path, data=DEEP_BODIES[kind], content_type="application/json")
    error = assert_error(response, 400, code="invalid_json")
    assert "nested too deeply" in error["message"]
