"""API keys (CHARLM_API_KEYS): every route that computes needs a valid bearer key — the /v1/ API, /tokenize and
/detokenize, /visualize/features, and any route not on the open list; the probes, /metrics, the API description,
the two pages and their static files, and CORS preflights do not."""
import pytest

from serving.app import create_app
from serving.auth import is_open
from serving_helpers import assert_error, wait_until

KEYS = ("first-key", "second-key")
GOOD = {"Authorization": f"Bearer {KEYS[0]}"}

# Every route that computes, with a body it answers 200 to.
PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/charlm", None),
    ("POST", "/v1/completions", {"model": "charlm", "prompt": "ROMEO:", "max_tokens": 3}),
    ("POST", "/v1/chat/completions", {"model": "charlm", "max_completion_tokens": 3,
                                      "messages": [{"role": "user", "content": "Good morrow."}]}),
    ("POST", "/v1/generate", {"prompt": "A", "max_chars": 3}),
    ("POST", "/v1/score", {"text": "ROMEO"}),
    ("POST", "/v1/activations", {"text": "ROMEO"}),
    ("POST", "/tokenize", {"prompt": "ROMEO"}),
    ("POST", "/detokenize", {"tokens": [1, 2, 3]}),
    ("POST", "/visualize/features", {"text": "say (hi)"}),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/visualize", "/static/playground.js",
        "/static/apikey.js"]


@pytest.fixture(scope="module")
def client(exported_model):
    """The session's model behind a gateway with two keys."""
    app = create_app({"model_dir": exported_model[0], "api_keys": ",".join(KEYS)})
    client = app.test_client()
    assert wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
    return client


def call(client, method, path, body, headers=None):
    return client.open(path, method=method, json=body, headers=headers or {})


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_each_route_that_computes_is_401_without_a_key_and_200_with_one(client, method, path, body):
    response = call(client, method, path, body)
    error = assert_error(response, 401, code="invalid_api_key")
    assert error["type"] == "authentication_error" and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in error["message"]
    answered = call(client, method, path, body, GOOD)
    assert answered.status_code == 200, answered.get_data(as_text=True)


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {"Authorization": "first-key"},
                                     {"Authorization": "Basic Zmlyc3Qta2V5"}, {"Authorization": "Bearer "},
                                     {"Authorization": "Bearer first-key2"}, {"Authorization": "Bearer first-ke"},
                                     {"X-API-Key": "first-key"}])
def test_a_wrong_or_badly_sent_key_is_401(client, headers):
    for method, path, body in PROTECTED:
        assert_error(call(client, method, path, body, headers), 401, code="invalid_api_key")


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_is_let_in(client, key):
    assert client.get("/v1/models", headers={"Authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_probes_metrics_docs_pages_and_their_files_are_open(client, path):
    assert client.get(path).status_code == 200, path


def test_every_route_of_the_app_is_open_or_needs_the_key(client):
    """The open routes are a list; every other route — one added later too — needs the key."""
    app = client.application
    fill = {"model_id": "charlm", "filename": "playground.js"}
    routes = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for name, value in fill.items():
            path = path.replace(f"<path:{name}>", value)
        assert "<" not in path, f"a route this test cannot fill in: {rule.rule}"
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"}):
            response = client.open(path, method=method)
            if is_open(path):
                assert response.status_code != 401, path
            else:
                assert_error(response, 401, code="invalid_api_key")
            routes.add((method, rule.rule))
    assert {(m, p.replace("charlm", "<path:model_id>")) for m, p, _ in PROTECTED} <= routes
    open_rules = {p for m, p in routes if is_open(p.replace("<path:filename>", "x"))}
    assert open_rules == {"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/visualize",
                          "/static/<path:filename>"}


def test_an_unknown_path_needs_the_key_before_it_is_a_404(client):
    assert_error(client.post("/v2/nowhere"), 401, code="invalid_api_key")
    assert_error(client.post("/v2/nowhere", headers=GOOD), 404, code="not_found")
    assert_error(client.get("/healthz/extra"), 401)  # only the exact open paths


def test_cors_preflights_stay_open_for_every_protected_route(tmp_path):
    page = "https://notebook.example"
    client = create_app({"model_dir": tmp_path / "charlm", "api_keys": "sesame", "cors_origins": page}).test_client()
    for method, path, _ in PROTECTED:
        answer = client.options(path, headers={"Origin": page, "Access-Control-Request-Method": method,
                                               "Access-Control-Request-Headers": "authorization, content-type"})
        assert answer.status_code == 204 and "Authorization" in answer.headers["Access-Control-Allow-Headers"], path


def test_no_keys_means_no_authentication(tmp_path):
    client = create_app({"model_dir": tmp_path}).test_client()
    assert_error(client.get("/v1/models"), 503)
    assert client.post("/visualize/features", json={"text": "a"}).status_code == 200
