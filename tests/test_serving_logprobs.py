"""Log-probabilities on /v1/completions in OpenAI's legacy shape, checked against recomputations: the prompt's
against /v1/score, the generated characters' against the model's distribution before each of them."""
import math

import numpy as np
import pytest

from serving.app import create_app
from serving_helpers import post_ok, assert_error, sse_payloads

PROMPT = "ROMEO:\nWhat light"


def complete(client, **body):
    return post_ok(client, "/v1/completions", model="charlm", **body)


def streamed(client, **body) -> dict:
    """A streamed reply's chunks folded as a client folds them: text and logprobs lists concatenated per choice."""
    response = client.post("/v1/completions", json={"model": "charlm", "stream": True, **body})
    assert response.status_code == 200, response.get_data(as_text=True)
    payloads = sse_payloads(response.get_data(as_text=True))
    assert payloads[-1] == "[DONE]"
    text, logprobs, finish = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}, None
    for payload in payloads[:-1]:
        (choice,) = payload["choices"]
        text += choice["text"]
        for key in logprobs:
            logprobs[key] += choice["logprobs"][key]
        finish = choice["finish_reason"] or finish
    return {"text": text, "logprobs": logprobs, "finish_reason": finish}


def test_generated_characters_logprobs_are_the_models_distribution(client, model_client):
    choice = complete(client, prompt=PROMPT, max_tokens=40, logprobs=5, seed=3, temperature=0.7,
                      top_k=10)["choices"][0]
    text, logprobs = choice["text"], choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert logprobs["tokens"] == list(text) and logprobs["text_offset"] == list(range(40))
    # Recomputed from the text: the distribution before each generated character is the one after the prompt
    # and the characters before it (score reads prompt + text). The model's own, before temperature and top_k.
    out = model_client.score([PROMPT + text])
    vocab = model_client.metadata.vocab
    for t, char in enumerate(text):
        position = len(PROMPT) + t
        assert logprobs["token_logprobs"][t] == pytest.approx(float(out["log_probs"][0, position]), abs=2e-4)
        top = logprobs["top_logprobs"][t]
        # score's 20 likeliest there hold our 5 (and the chosen one, which a top_k=10 draw keeps), with their values.
        known = {vocab[i]: float(v) for i, v in zip(out["top_ids"][0, position], out["top_log_probs"][0, position])}
        assert all(c in known and v == pytest.approx(known[c], abs=2e-4) for c, v in top.items()), (t, top)
        assert list(top.values())[:5] == pytest.approx(sorted(known.values(), reverse=True)[:5], abs=2e-4)
        assert top[char] == logprobs["token_logprobs"][t]  # the chosen character is always there
        assert len(top) in (5, 6)


def test_logprobs_zero_gives_the_chosen_characters_only(client):
    logprobs = complete(client, prompt=PROMPT, max_tokens=20, logprobs=0, seed=3)["choices"][0]["logprobs"]
    assert [list(top) for top in logprobs["top_logprobs"]] == [[c] for c in logprobs["tokens"]]
    assert [top[c] for top, c in zip(logprobs["top_logprobs"], logprobs["tokens"])] == logprobs["token_logprobs"]
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert complete(client, prompt=PROMPT, max_tokens=5)["choices"][0]["logprobs"] is None  # not asked: none


def test_echo_with_zero_tokens_scores_the_prompt(client, model_client):
    """What evaluation harnesses send for a log-likelihood: echo, max_tokens 0, logprobs."""
    reply = complete(client, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)
    (choice,) = reply["choices"]
    logprobs = choice["logprobs"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert logprobs["tokens"] == list(PROMPT) and logprobs["text_offset"] == list(range(len(PROMPT)))
    # The first character of a fresh text has nothing before it: null, as OpenAI answers.
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    per_char = client.post("/v1/score", json={"text": PROMPT, "per_char": True}).get_json()["log2_probs"]
    assert logprobs["token_logprobs"][1:] == pytest.approx([lp * math.log(2) for lp in per_char[1:]], abs=1e-4)
    out = model_client.score([PROMPT])
    vocab = model_client.metadata.vocab
    for t in range(1, len(PROMPT)):
        top = logprobs["top_logprobs"][t]
        expected = {vocab[i]: float(v) for i, v in zip(out["top_ids"][0, t, :3], out["top_log_probs"][0, t, :3])}
        assert {c: top[c] for c in expected} == pytest.approx(expected, abs=1e-5)
        assert PROMPT[t] in top and len(top) in (3, 4)
    assert reply["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 0, "total_tokens": len(PROMPT)}


def test_echo_then_generation_continues_the_offsets(client):
    plain = complete(client, prompt=PROMPT, max_tokens=25, logprobs=2, seed=5)["choices"][0]
    echoed = complete(client, prompt=PROMPT, max_tokens=25, logprobs=2, seed=5, echo=True)["choices"][0]
    assert echoed["text"] == PROMPT + plain["text"]
    assert echoed["logprobs"]["text_offset"] == list(range(len(PROMPT) + 25))
    assert echoed["logprobs"]["token_logprobs"][len(PROMPT):] == plain["logprobs"]["token_logprobs"]
    assert echoed["logprobs"]["top_logprobs"][len(PROMPT):] == plain["logprobs"]["top_logprobs"]
    # The prompt's part is the score of the prompt alone.
    scored = complete(client, prompt=PROMPT, max_tokens=0, logprobs=2, echo=True)["choices"][0]["logprobs"]
    assert echoed["logprobs"]["token_logprobs"][:len(PROMPT)] == scored["token_logprobs"]


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_logprobs_equal_the_plain_ones(client, echo):
    body = dict(prompt=PROMPT, max_tokens=60, logprobs=4, seed=8, echo=echo)
    plain = complete(client, **body)["choices"][0]
    stream = streamed(client, **body)
    assert stream["text"] == plain["text"] and stream["finish_reason"] == plain["finish_reason"]
    assert stream["logprobs"] == plain["logprobs"]  # offsets continue across chunks


def test_characters_cut_by_a_stop_string_have_no_logprobs(client):
    text = complete(client, prompt=PROMPT, max_tokens=200, seed=5)["choices"][0]["text"]
    stop = text[60:62]
    cut = text.index(stop)
    for reply in (complete(client, prompt=PROMPT, max_tokens=200, seed=5, stop=stop, logprobs=1)["choices"][0],
                  streamed(client, prompt=PROMPT, max_tokens=200, seed=5, stop=stop, logprobs=1)):
        assert reply["text"] == text[:cut] and reply["finish_reason"] == "stop"
        logprobs = reply["logprobs"]
        assert logprobs["tokens"] == list(text[:cut]) and logprobs["text_offset"] == list(range(cut))
        assert len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == cut


def test_n_choices_each_get_their_own_logprobs(client):
    reply = complete(client, prompt=["A", "B"], n=2, max_tokens=15, logprobs=1, seed=2)
    for choice in reply["choices"]:
        assert choice["logprobs"]["tokens"] == list(choice["text"])
    alone = complete(client, prompt="B", max_tokens=15, logprobs=1, seed=5)["choices"][0]["logprobs"]  # seed + 3
    batched = reply["choices"][3]["logprobs"]
    assert batched["tokens"] == alone["tokens"] and batched["text_offset"] == alone["text_offset"]
    # A batch of 4 runs other kernels than a batch of 1: the same text, log-probabilities equal to float noise.
    assert batched["token_logprobs"] == pytest.approx(alone["token_logprobs"], abs=1e-5)
    assert [list(top) for top in batched["top_logprobs"]] == [list(top) for top in alone["top_logprobs"]]


def test_a_long_prompt_is_scored_in_pieces(exported_model, client):
    """With CHARLM_MAX_SCORE_CHARS below the prompt's length the prompt is read in pieces, the state carried."""
    small = create_app({"model_dir": exported_model[0], "max_score_chars": 16}).test_client()
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    body = dict(prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    pieces = complete(small, **body)["choices"][0]["logprobs"]
    whole = complete(client, **body)["choices"][0]["logprobs"]
    assert pieces["tokens"] == whole["tokens"]
    assert np.allclose(pieces["token_logprobs"][1:], whole["token_logprobs"][1:], atol=1e-4)


@pytest.mark.parametrize("value", [-1, 21, "5", 2.5, True, [1]])
def test_bad_logprobs_are_400s(client, value):
    response = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "logprobs": value})
    assert_error(response, 400, "logprobs")
