"""POST /v1/generate (continuation state), /v1/score and /v1/activations, on the session's tiny model."""
import math

import numpy as np
import pytest

from serving import state_token
from serving_helpers import post_ok, assert_error, sse_payloads


def generate(client, **body):
    return post_ok(client, "/v1/generate", **body)


def test_generate_and_continue_exactly(client):
    whole = generate(client, prompt="ROMEO:\n", max_chars=200, seed=42, temperature=0.9, top_p=0.95)
    assert whole["object"] == "generation" and len(whole["text"]) == 200 and whole["seed"] == 42
    first = generate(client, prompt="ROMEO:\n", max_chars=80, seed=42, temperature=0.9, top_p=0.95)
    # Empty prompt + state: the seed comes from the state, and the text goes on where it stopped.
    rest = generate(client, prompt="", state=first["state"], max_chars=120, temperature=0.9, top_p=0.95)
    assert first["text"] + rest["text"] == whole["text"]
    assert rest["seed"] == 42


def test_streamed_generate_ends_with_the_state(client):
    plain = generate(client, prompt="KING:", max_chars=90, seed=1, top_k=5)
    payloads = sse_payloads(client.post("/v1/generate", json={"prompt": "KING:", "max_chars": 90, "seed": 1,
                                                               "top_k": 5, "stream": True}).get_data(as_text=True))
    assert payloads[-1] == "[DONE]"
    events = payloads[:-1]
    assert "".join(e["text"] for e in events) == plain["text"]
    assert all(e["state"] is None for e in events[:-1]) and events[-1]["finish_reason"] == "length"
    assert events[-1]["state"] == plain["state"]


def test_state_problems_are_400s(client):
    good = generate(client, prompt="A", max_chars=5, seed=1)["state"]
    header, numbers, signature = good.split(".")
    for bad in ("", "nonsense", header + ".AAAA." + signature, "e30." + numbers + "." + signature, good + "x",
                numbers + "." + header + "." + signature, header + "." + numbers):
        assert_error(client.post("/v1/generate", json={"state": bad}), 400, "state", "invalid_state")
    with client.application.app_context():  # states are signed: these are signed as the gateway signs its own
        signer = state_token.current_signer()
    seed, row = signer.decode(good, "charlm", 1, 2 * 32 + 1)
    nan_row = np.full_like(row, np.nan)
    assert_error(client.post("/v1/generate", json={"state": signer.encode("charlm", 1, seed, nan_row)}),
                 400, "state", "invalid_state")
    # A state from another version of the model is refused, not silently misread.
    other = signer.encode("charlm", 7, seed, row)
    error = assert_error(client.post("/v1/generate", json={"state": other}), 400, "state")
    assert "version 7" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"max_chars": -5}, "max_chars"), ({"max_chars": 10 ** 7}, "max_chars"), ({"temperature": -0.5}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"top_p": 0}, "top_p"), ({"seed": "x"}, "seed"), ({"prompt": None, "x": 1}, "x"),
    ({"prompt": ["A"]}, "prompt"), ({"model": "other"}, "model"),
])
def test_generate_bad_input(client, body, param):
    response = client.post("/v1/generate", json=body)
    assert_error(response, 404 if param == "model" else 400, param)


def test_generate_prompt_outside_vocabulary(client):
    error = assert_error(client.post("/v1/generate", json={"prompt": "caf\u00e9"}), 400, "prompt", "unknown_characters")
    assert "'\u00e9'" in error["message"]


def test_score_matches_the_signature(client, model_client, corpus_slice):
    text = corpus_slice.read_text()[1000:1300]
    reply = client.post("/v1/score", json={"text": text, "per_char": True}).get_json()
    direct = model_client.score([text])
    assert reply["characters"] == 300
    assert reply["bits_per_char"] == pytest.approx(float(direct["bits_per_char"][0]), rel=1e-5)
    assert len(reply["log2_probs"]) == 300
    assert -sum(reply["log2_probs"]) / 300 == pytest.approx(reply["bits_per_char"], rel=1e-3)
    assert reply["bits_per_char"] < math.log2(65)  # a trained model beats uniform guessing over its vocabulary
    # Scoring from a state continues the text: the halves' bits add up to the whole's.
    first = client.post("/v1/score", json={"text": text[:100]}).get_json()
    second = client.post("/v1/score", json={"text": text[100:], "state": first["state"]}).get_json()
    total = first["bits_per_char"] * 100 + second["bits_per_char"] * 200
    assert total / 300 == pytest.approx(reply["bits_per_char"], rel=1e-4)


def test_score_bad_input(client):
    assert_error(client.post("/v1/score", json={}), 400, "text", "missing_field")
    assert_error(client.post("/v1/score", json={"text": ""}), 400, "text")
    assert_error(client.post("/v1/score", json={"text": "x" * 5001}), 400, "text")
    assert_error(client.post("/v1/score", json={"text": "\u2603"}), 400, "text", "unknown_characters")
    assert_error(client.post("/v1/score", json={"text": "ab", "per_char": "yes"}), 400, "per_char")


def test_activations_of_one_layer(client, model_client):
    text = "To be, or not to be"
    reply = client.post("/v1/activations", json={"text": text}).get_json()
    assert reply["chars"] == list(text) and reply["layer"] == 0 and reply["kind"] == "tanh_cell"
    values = np.array(reply["values"])
    assert values.shape == (len(text), 32)
    direct = model_client.activations([text])
    assert np.allclose(values, np.tanh(direct["cell"][0, :, 0]), atol=1e-4)
    gate = np.array(client.post("/v1/activations", json={"text": text, "kind": "forget_gate"}).get_json()["values"])
    assert np.allclose(gate, direct["forget_gate"][0, :, 0], atol=1e-4) and (gate >= 0).all() and (gate <= 1).all()


def test_activations_bad_input(client):
    assert_error(client.post("/v1/activations", json={"text": "ab", "layer": 1}), 400, "layer")
    assert_error(client.post("/v1/activations", json={"text": "ab", "layer": -1}), 400, "layer")
    assert_error(client.post("/v1/activations", json={"text": "ab", "kind": "gates"}), 400, "kind")
    assert_error(client.post("/v1/activations", json={"text": "x" * 1001}), 400, "text")
