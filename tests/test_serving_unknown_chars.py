"""Characters outside the vocabulary: a 400 naming them by default; dropped or replaced when the request (or the
server's setting) asks, the reply saying what was changed; `\\r\\n` read as `\\n`. In every route that takes text."""
import pytest
from pydantic import ValidationError

from serving.app import create_app
from serving.settings import Settings
from serving_helpers import post_ok, assert_error

DIRTY, DROPPED, REPLACED = "caf\u00e9 \u2603ROMEO:\n", "caf ROMEO:\n", "cafe eROMEO:\n"
DROP_CHANGES = {"action": "drop", "chars": ["\u00e9", "\u2603"], "count": 2, "replacement_char": None, "crlf": 0}


post = post_ok


# Each route that takes text: its text field, a body for it, and what of its reply depends on the text.
ROUTES = {
    "/v1/completions": ("prompt", {"model": "charlm", "max_tokens": 20, "seed": 3, "echo": True},
                        lambda r: r["choices"][0]["text"]),
    "/v1/generate": ("prompt", {"max_chars": 20, "seed": 3}, lambda r: (r["text"], r["state"])),
    "/v1/score": ("text", {"per_char": True}, lambda r: (r["log2_probs"], r["characters"])),
    "/v1/activations": ("text", {}, lambda r: (r["chars"], r["values"])),
    "/tokenize": ("prompt", {}, lambda r: r["tokens"]),
}


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_the_default_is_a_400_naming_them(client, path):
    field, body, _ = ROUTES[path]
    error = assert_error(client.post(path, json={**body, field: DIRTY}), 400, field, "unknown_characters")
    assert "'\u00e9'" in error["message"] and "'\u2603'" in error["message"] and "drop" in error["message"]


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_drop_and_replace_read_the_cleaned_text_and_say_so(client, path):
    field, body, result = ROUTES[path]
    dropped = post(client, path, **body, **{field: DIRTY}, unknown_chars="drop")
    assert result(dropped) == result(post(client, path, **body, **{field: DROPPED}))
    assert dropped["text_changes"] == DROP_CHANGES
    replaced = post(client, path, **body, **{field: DIRTY}, unknown_chars="replace", replacement_char="e")
    assert result(replaced) == result(post(client, path, **body, **{field: REPLACED}))
    assert replaced["text_changes"] == {**DROP_CHANGES, "action": "replace", "replacement_char": "e"}
    assert post(client, path, **body, **{field: DROPPED}, unknown_chars="drop")["text_changes"] is None


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_windows_line_ends_are_read_as_newlines(client, path):
    field, body, result = ROUTES[path]
    reply = post(client, path, **body, **{field: "ROMEO:\r\nO, she\r\n"})
    assert result(reply) == result(post(client, path, **body, **{field: "ROMEO:\nO, she\n"}))
    assert reply["text_changes"] == {"action": None, "chars": [], "count": 0, "replacement_char": None, "crlf": 2}
    # A lone \r is not a line end: outside the vocabulary like any other character.
    assert_error(client.post(path, json={**body, field: "a\rb"}), 400, field, "unknown_characters")


def test_a_list_of_prompts_is_cleaned_prompt_by_prompt(client):
    reply = post(client, "/v1/completions", model="charlm", prompt=["\u00e9A", "B\u00e9\u00e9"], max_tokens=0,
                 echo=True, unknown_chars="drop")
    assert [c["text"] for c in reply["choices"]] == ["A", "B"]
    assert reply["text_changes"]["count"] == 3 and reply["text_changes"]["chars"] == ["\u00e9"]
    assert reply["usage"]["prompt_tokens"] == 2
    assert_error(client.post("/v1/completions", json={"model": "charlm", "prompt": ["A", "\u00e9"]}), 400,
                 "prompt.1", "unknown_characters")


def test_a_text_with_nothing_left_to_score_is_a_400(client):
    for path in ("/v1/score", "/v1/activations"):
        assert_error(client.post(path, json={"text": "\u00e9\u00e9", "unknown_chars": "drop"}), 400, "text",
                     "unknown_characters")


@pytest.mark.parametrize("body, param", [
    ({"unknown_chars": "ignore"}, "unknown_chars"),
    ({"unknown_chars": 1}, "unknown_chars"),
    ({"unknown_chars": "replace", "replacement_char": "ab"}, "replacement_char"),
    ({"unknown_chars": "replace", "replacement_char": ""}, "replacement_char"),
    ({"unknown_chars": "replace", "replacement_char": "\u2603"}, "replacement_char"),  # not in the vocabulary
    ({"unknown_chars": "drop", "replacement_char": "e"}, "replacement_char"),  # only with replace
    ({"replacement_char": "e"}, "replacement_char"),  # the default action is error
])
@pytest.mark.parametrize("path", sorted(ROUTES))
def test_bad_choices_are_400s(client, path, body, param):
    field, route_body, _ = ROUTES[path]
    assert_error(client.post(path, json={**route_body, field: "A", **body}), 400, param)


def test_the_servers_settings_are_the_default(exported_model):
    app = create_app({"model_dir": exported_model[0], "unknown_chars": "replace", "replacement_char": "\u2603"})
    client = app.test_client()
    # The configured replacement is not in this model's vocabulary: said when it is needed, naming the setting.
    error = assert_error(client.post("/v1/score", json={"text": DIRTY}), 400, "replacement_char")
    assert "CHARLM_REPLACEMENT_CHAR" in error["message"]
    assert post(client, "/v1/score", text=DROPPED)["text_changes"] is None  # not needed: no error
    assert post(client, "/v1/score", text=DIRTY, replacement_char="e")["text_changes"]["action"] == "replace"
    assert post(client, "/v1/score", text=DIRTY, unknown_chars="drop")["text_changes"] == DROP_CHANGES
    app.config["CHARLM"] = app.config["CHARLM"].model_copy(update={"replacement_char": "e"})
    assert post(client, "/v1/score", text=DIRTY)["text_changes"]["replacement_char"] == "e"
    assert_error(client.post("/v1/score", json={"text": DIRTY, "unknown_chars": "error"}), 400, "text",
                 "unknown_characters")


@pytest.mark.parametrize("name, value", [("CHARLM_UNKNOWN_CHARS", "ignore"), ("CHARLM_REPLACEMENT_CHAR", "ab"),
                                         ("CHARLM_REPLACEMENT_CHAR", "")])
def test_bad_settings_refuse_to_start(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("CHARLM_").lower()):
        Settings()
