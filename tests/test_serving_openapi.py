"""/openapi.json describes every route, with schemas that the real responses satisfy."""
import re

import pytest

from serving import schemas
from serving_helpers import shared_app


@pytest.fixture(scope="module")
def app(exported_model):
    return shared_app(exported_model[0])


def normalise(path: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_every_route_is_described(app):
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    routes = {normalise(rule.rule) for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes == {normalise(path) for path in document["paths"]}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"], (path, method)
    components = document["components"]["schemas"]
    assert {"CompletionRequest", "GenerateRequest", "ScoreRequest", "ActivationsRequest", "Completion",
            "Generation", "Error"} <= set(components)
    assert "model" in components["CompletionRequest"]["required"]
    assert components["CompletionRequest"]["additionalProperties"] is False


def test_real_responses_match_the_described_schemas(app):
    client = app.test_client()
    checks = [
        (schemas.Completion, client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 5})),
        (schemas.ModelList, client.get("/v1/models")),
        (schemas.ModelCard, client.get("/v1/models/charlm")),
        (schemas.Generation, client.post("/v1/generate", json={"max_chars": 5})),
        (schemas.Score, client.post("/v1/score", json={"text": "ab", "per_char": True})),
        (schemas.Activations, client.post("/v1/activations", json={"text": "ab"})),
        (schemas.Health, client.get("/healthz")),
        (schemas.Ready, client.get("/readyz")),
        (schemas.Error, client.post("/v1/score", json={})),
    ]
    for model, response in checks:
        model.model_validate(response.get_json(), strict=False)
        assert set(response.get_json()) <= set(model.model_fields), model.__name__
