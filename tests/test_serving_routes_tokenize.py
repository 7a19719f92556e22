"""Discovery: GET /v1/models carries the vocabulary, sizes, limits and chat template; POST /tokenize and
/detokenize in vLLM's shape, with the ids the graph itself uses."""
import dataclasses

import pytest

from model_interface import signatures as sig
from serving_helpers import post_ok, assert_error

PROMPT = "ROMEO:\nWhat light"


post = post_ok


def test_the_model_card_describes_the_model_and_the_limits(client, model_client, app):
    card = client.get("/v1/models/charlm").get_json()
    metadata, settings = model_client.metadata, app.config["CHARLM"]
    # The vocabulary in the graph's own id order (its `metadata` signature's answer).
    graph_vocab = [c.decode() for c in model_client.call(sig.METADATA, sig.metadata_inputs())["vocab"][0]]
    assert card["vocab"] == graph_vocab == list(metadata.vocab) and card["vocab_size"] == len(graph_vocab)
    assert card["state_size"] == 65 and (card["cell"], card["num_layers"], card["hidden_size"]) == ("lstm", 1, 32)
    assert card["precision"] == "fp32"
    assert card["limits"] == {"max_tokens": settings.max_tokens, "max_prompt_chars": settings.max_prompt_chars,
                              "max_score_chars": settings.max_score_chars,
                              "max_activation_chars": settings.max_activation_chars, "max_n": settings.max_n,
                              "max_logprobs": 20, "max_stop": 4, "max_streams": settings.max_streams}
    assert card["max_model_len"] == settings.max_prompt_chars + settings.max_tokens
    assert card["chat_template"] == metadata.chat_template  # what the version's metadata says (perhaps None)
    assert client.get("/v1/models").get_json()["data"] == [card]


@pytest.mark.parametrize("template", ["{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", None])
def test_the_chat_template_is_the_metadatas(client, app, monkeypatch, template):
    backend = app.extensions["charlm.backend"]
    served = backend.model()
    changed = dataclasses.replace(served, metadata=served.metadata.model_copy(update={"chat_template": template}))
    monkeypatch.setattr(backend, "_model", changed)
    assert client.get("/v1/models/charlm").get_json()["chat_template"] == template
    assert client.get("/v1/models").get_json()["data"][0]["chat_template"] == template


def test_tokenize_gives_vocabulary_indices_and_detokenize_inverts_it(client, model_client):
    vocab = model_client.metadata.vocab
    reply = post(client, "/tokenize", model="charlm", prompt=PROMPT)
    assert reply["tokens"] == [vocab.index(c) for c in PROMPT] and reply["count"] == len(PROMPT)
    assert reply["max_model_len"] == client.get("/v1/models/charlm").get_json()["max_model_len"]
    assert reply["token_strs"] is None
    assert post(client, "/tokenize", prompt=PROMPT, return_token_strs=True, add_special_tokens=False)[
        "token_strs"] == list(PROMPT)
    assert post(client, "/detokenize", model="charlm", tokens=reply["tokens"]) == {"prompt": PROMPT}
    assert post(client, "/detokenize", tokens=[]) == {"prompt": ""}
    assert post(client, "/tokenize", prompt="")["tokens"] == []
    # The ids are the graph's: the id score calls the likeliest first character is the one tokenize gives it.
    out = model_client.score(["ROMEO"])
    likeliest_next = vocab[int(out["top_ids"][0, 1, 0])]
    assert post(client, "/tokenize", prompt=likeliest_next)["tokens"] == [int(out["top_ids"][0, 1, 0])]


def test_tokenize_reads_text_as_the_model_does(client):
    dropped = post(client, "/tokenize", prompt="caf\u00e9\r\nbar", unknown_chars="drop")
    assert dropped["tokens"] == post(client, "/tokenize", prompt="caf\nbar")["tokens"]
    assert dropped["text_changes"] == {"action": "drop", "chars": ["\u00e9"], "count": 1, "replacement_char": None,
                                       "crlf": 1}


@pytest.mark.parametrize("body, status, param, code", [
    ({}, 400, "prompt", "missing_field"),
    ({"prompt": 5}, 400, "prompt", None),
    ({"prompt": "caf\u00e9"}, 400, "prompt", "unknown_characters"),
    ({"prompt": "x" * 20_001}, 400, "prompt", None),
    ({"prompt": "a", "return_token_strs": "yes"}, 400, "return_token_strs", None),
    ({"prompt": "a", "messages": []}, 400, "messages", "unknown_field"),
    ({"prompt": "a", "model": "gpt-4"}, 404, "model", "model_not_found"),
])
def test_tokenize_bad_input(client, body, status, param, code):
    error = assert_error(client.post("/tokenize", json=body), status, param, code)
    if code == "unknown_characters":
        assert "'\u00e9'" in error["message"]


def test_detokenize_names_ids_outside_the_vocabulary(client, model_client):
    size = model_client.metadata.vocab_size
    error = assert_error(client.post("/detokenize", json={"tokens": [0, size, 3, -1]}), 400, "tokens",
                         "unknown_token_ids")
    assert f"{size} (at 1)" in error["message"] and "-1 (at 3)" in error["message"]
    assert f"0 ... {size - 1}" in error["message"]
    assert post(client, "/detokenize", tokens=[size - 1])["prompt"] == model_client.metadata.vocab[-1]


@pytest.mark.parametrize("body, status, param", [
    ({}, 400, "tokens"), ({"tokens": "abc"}, 400, "tokens"), ({"tokens": [1, "a"]}, 400, "tokens.1"),
    ({"tokens": [1.5]}, 400, "tokens.0"), ({"tokens": [True]}, 400, "tokens.0"),
    ({"tokens": [1], "model": "gpt-4"}, 404, "model"),
])
def test_detokenize_bad_input(client, body, status, param):
    assert_error(client.post("/detokenize", json=body), status, param)


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_not_json_is_400(client, path):
    assert_error(client.post(path, data="prompt=a", content_type="application/x-www-form-urlencoded"), 400,
                 code="invalid_json")
