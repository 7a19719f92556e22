"""API keys (CHARLM_API_KEYS): /v1/ routes need a valid bearer key; probes, metrics, docs and the page do not."""
import pytest

from serving.app import create_app
from serving_helpers import assert_error


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # No model: a request that gets past authentication is answered 503, one that does not, 401.
    return create_app({"model_dir": tmp_path_factory.mktemp("none") / "charlm",
                       "api_keys": "first-key,second-key"}).test_client()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-key"},
                                     {"Authorization": "Basic Zmlyc3Qta2V5"}, {"Authorization": "Bearer "},
                                     {"Authorization": "Bearer first-key2"}])
def test_missing_or_bad_key_is_401(client, headers):
    for path in ("/v1/models", "/v1/models/charlm"):
        response = client.get(path, headers=headers)
        error = assert_error(response, 401, code="invalid_api_key")
        assert error["type"] == "authentication_error" and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.post("/v1/completions", json={"model": "charlm"}, headers=headers), 401)


@pytest.mark.parametrize("key", ["first-key", "second-key"])
def test_each_configured_key_is_let_in(client, key):
    assert_error(client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}), 503)


def test_probes_metrics_docs_and_page_are_open(client):
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503)
    for path in ("/metrics", "/openapi.json", "/"):
        assert client.get(path).status_code == 200, path


def test_no_keys_means_no_authentication(tmp_path):
    client = create_app({"model_dir": tmp_path}).test_client()
    assert_error(client.get("/v1/models"), 503)
