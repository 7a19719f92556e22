"""CORS allow-list (CHARLM_CORS_ORIGINS): off by default; an allowed origin gets Access-Control-Allow-Origin and
its preflights answered (without the API key), any other origin gets no CORS headers."""
import pytest
from pydantic import ValidationError

from serving.app import create_app
from serving.settings import Settings

PAGE = "https://notebook.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def cors_headers(response) -> dict:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def preflight(client, path="/v1/completions", origin=PAGE, method="POST"):
    return client.options(path, headers={**PREFLIGHT, "Origin": origin, "Access-Control-Request-Method": method})


@pytest.fixture(scope="module")
def no_model(tmp_path_factory):
    """No model version at all: the CORS layer answers before any backend call (a /v1/ call is a 503)."""
    return tmp_path_factory.mktemp("cors") / "charlm"


def test_off_by_default(no_model):
    client = create_app({"model_dir": no_model}).test_client()
    assert Settings().cors_origins == ()
    for response in (preflight(client), client.get("/healthz", headers={"Origin": PAGE}),
                     client.get("/v1/models", headers={"Origin": PAGE})):
        assert cors_headers(response) == {} and "Origin" not in response.headers.get("Vary", "")


def test_an_allowed_origin_gets_its_preflight_and_its_header(no_model):
    client = create_app({"model_dir": no_model, "cors_origins": f"{PAGE}, http://localhost:3000"}).test_client()
    answer = preflight(client)
    assert answer.status_code == 204 and answer.get_data() == b""
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE and "Origin" in answer.headers["Vary"]
    assert set(answer.headers["Access-Control-Allow-Methods"].split(", ")) == {"OPTIONS", "POST"}
    assert answer.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert int(answer.headers["Access-Control-Max-Age"]) > 0
    assert set(preflight(client, "/v1/models", method="GET").headers["Access-Control-Allow-Methods"]
               .split(", ")) == {"GET", "OPTIONS"}
    # Real requests, an error included: the page can read the body.
    for response in (client.get("/healthz", headers={"Origin": "http://localhost:3000"}),
                     client.get("/v1/models", headers={"Origin": PAGE})):
        assert response.headers["Access-Control-Allow-Origin"] == response.request.headers["Origin"]
        assert "Origin" in response.headers["Vary"]
    assert client.get("/v1/models", headers={"Origin": PAGE}).status_code == 503


def test_other_origins_and_methods_get_no_cors_headers(no_model):
    client = create_app({"model_dir": no_model, "cors_origins": PAGE}).test_client()
    for origin in ("https://evil.example", "http://notebook.example", PAGE + ":8443"):
        assert cors_headers(preflight(client, origin=origin)) == {}
        assert cors_headers(client.get("/healthz", headers={"Origin": origin})) == {}
    # A preflight for a method the route does not take, or for no route, is not granted (no Allow-Methods: the
    # browser sends nothing); the origin itself is allowed, so that answer still says so.
    for refused in (preflight(client, method="DELETE"), preflight(client, "/v1/nowhere")):
        assert refused.status_code != 204 and "Access-Control-Allow-Methods" not in refused.headers
    assert cors_headers(client.get("/healthz")) == {}  # no Origin: not a cross-origin request
    # Still the shared cache's business: whether the header is there depends on the Origin.
    assert "Origin" in client.get("/healthz", headers={"Origin": "https://evil.example"}).headers["Vary"]


def test_preflight_needs_no_api_key_but_the_request_does(no_model):
    client = create_app({"model_dir": no_model, "cors_origins": PAGE, "api_keys": "sesame"}).test_client()
    answer = preflight(client)  # browsers send no Authorization on a preflight
    assert answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == PAGE
    refused = client.post("/v1/completions", json={"model": "charlm", "prompt": "A"}, headers={"Origin": PAGE})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == PAGE
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    # A disallowed origin's preflight is not answered as CORS: it meets the key check like any /v1/ request.
    assert preflight(client, origin="https://evil.example").status_code == 401


def test_a_star_allows_any_origin(no_model):
    client = create_app({"model_dir": no_model, "cors_origins": "*"}).test_client()
    answer = preflight(client, origin="https://anywhere.example")
    assert answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == "https://anywhere.example"


def test_a_streamed_reply_carries_the_header(exported_model):
    client = create_app({"model_dir": exported_model[0], "cors_origins": PAGE}).test_client()
    response = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5,
                                                      "stream": True}, headers={"Origin": PAGE})
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == PAGE
    assert response.get_data(as_text=True).endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("value", ["notebook.example", "https://notebook.example/path", "ftp://x.example"])
def test_a_bad_origin_refuses_to_start(monkeypatch, no_model, value):
    monkeypatch.setenv("CHARLM_CORS_ORIGINS", value)
    with pytest.raises(ValidationError, match="cors_origins"):
        create_app({"model_dir": no_model})


def test_origins_are_normalised(monkeypatch):
    monkeypatch.setenv("CHARLM_CORS_ORIGINS", " https://Notebook.example/ ,, http://localhost:3000 ")
    assert Settings().cors_origins == ("https://notebook.example", "http://localhost:3000")
