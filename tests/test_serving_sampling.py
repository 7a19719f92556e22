"""Sampling through the gateway with OpenAI's and vLLM's names: temperature 0 is greedy in every route, top_k and
min_p reach the graph, best_of keeps the likeliest candidates, and penalties are refused saying why."""
import threading

import numpy as np
import pytest

from model_interface.signatures import SamplingSettings
from serving_helpers import post_ok, assert_error

PROMPT = "ROMEO:\n"


def complete(client, **body):
    return post_ok(client, "/v1/completions", model="charlm", **body)


def text_of(client, **body):
    return complete(client, **body)["choices"][0]["text"]


def generate(client, **body):
    return post_ok(client, "/v1/generate", **body)


def assert_each_char_is_the_likeliest(model_client, prompt, text):
    """Recomputed from the text: before each generated character, no character was likelier (float noise aside)."""
    out = model_client.score([prompt + text])
    at = slice(len(prompt), len(prompt) + len(text))
    chosen, best = out["log_probs"][0, at], out["top_log_probs"][0, at, 0]
    assert np.all(chosen >= best - 1e-4), np.nonzero(chosen < best - 1e-4)


def test_temperature_zero_is_greedy_on_completions(client, model_client):
    text = text_of(client, prompt=PROMPT, max_tokens=80, temperature=0, seed=1)
    assert len(text) == 80
    assert_each_char_is_the_likeliest(model_client, PROMPT, text)
    # No draw: the seed changes nothing, and neither do the filters.
    assert text_of(client, prompt=PROMPT, max_tokens=80, temperature=0, seed=2, top_p=0.5, top_k=3) == text
    # Temperature 1 with the same seed does draw (a tiny model is not that sure of itself).
    assert text_of(client, prompt=PROMPT, max_tokens=80, temperature=1, seed=1) != text


def test_temperature_zero_is_greedy_on_generate_and_continues(client, model_client):
    whole = text_of(client, prompt=PROMPT, max_tokens=120, temperature=0)
    first = generate(client, prompt=PROMPT, max_chars=50, temperature=0.0, seed=9)
    assert first["text"] == whole[:50]
    rest = generate(client, state=first["state"], max_chars=70, temperature=0)
    assert first["text"] + rest["text"] == whole


def test_greedy_text_is_the_same_batched_with_others(app):
    prompts = ["ROMEO:\n", "JULIET:\n", "A", "First Citizen:\nWe are"]
    alone = {p: text_of(app.test_client(), prompt=p, max_tokens=100, temperature=0) for p in prompts}
    together, barrier = {}, threading.Barrier(len(prompts) + 2)

    def run(prompt, **sampling):
        barrier.wait()
        together[prompt, tuple(sampling.items())] = text_of(app.test_client(), prompt=prompt, max_tokens=100,
                                                            **sampling)

    threads = [threading.Thread(target=run, args=(p,), kwargs={"temperature": 0}) for p in prompts]
    threads += [threading.Thread(target=run, args=(p,), kwargs={"temperature": 1.2, "top_k": 5, "seed": 3})
                for p in prompts[:2]]  # sampled rows in the same calls
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {p: together[p, (("temperature", 0),)] for p in prompts} == alone


def test_top_k_and_min_p_reach_the_graph(client, model_client):
    greedy = text_of(client, prompt=PROMPT, max_tokens=60, temperature=0)
    # Keeping only the likeliest character, by either filter, is greedy whatever the seed and temperature.
    assert text_of(client, prompt=PROMPT, max_tokens=60, top_k=1, seed=4, temperature=1.5) == greedy
    assert text_of(client, prompt=PROMPT, max_tokens=60, min_p=1.0, seed=4, temperature=1.5) == greedy
    assert generate(client, prompt=PROMPT, max_chars=60, top_k=1, seed=4)["text"] == greedy
    assert generate(client, prompt=PROMPT, max_chars=60, min_p=1.0, seed=4)["text"] == greedy
    # The same text as the signature gives for those settings; vLLM's top_k -1 is "off", as 0 is.
    settings = SamplingSettings(temperature=0.9, top_k=7, min_p=0.05, seed=11)
    direct = model_client.generate([PROMPT], 60, settings)["text"][0]
    assert text_of(client, prompt=PROMPT, max_tokens=60, temperature=0.9, top_k=7, min_p=0.05, seed=11) == direct
    assert generate(client, prompt=PROMPT, max_chars=60, temperature=0.9, top_k=7, min_p=0.05, seed=11)["text"] == direct
    assert text_of(client, prompt=PROMPT, max_tokens=60, top_k=-1, seed=11) == text_of(
        client, prompt=PROMPT, max_tokens=60, top_k=0, seed=11)


def ranked_candidates(client, model_client, prompt, seed, count, chars):
    """The texts `count` choices from `seed` get (candidate i draws from seed + i), likeliest first (recomputed)."""
    candidates = [c["text"] for c in complete(client, prompt=prompt, max_tokens=chars, n=count, seed=seed)["choices"]]
    scores = model_client.score([prompt + c for c in candidates])["log_probs"][:, len(prompt):len(prompt) + chars]
    return [candidates[i] for i in np.argsort(-scores.sum(axis=1), kind="stable")]


def test_best_of_returns_the_likeliest_candidates(client, model_client):
    reply = complete(client, prompt=PROMPT, max_tokens=30, n=2, best_of=5, seed=21)
    ranked = ranked_candidates(client, model_client, PROMPT, 21, 5, 30)
    assert [c["text"] for c in reply["choices"]] == ranked[:2]
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert reply["usage"]["completion_tokens"] == 5 * 30  # every candidate's characters were generated
    # Per prompt: prompt p's candidates draw from seed + 5p ...; each prompt keeps its own best two.
    both = complete(client, prompt=["A", PROMPT], max_tokens=30, n=2, best_of=5, seed=21)
    assert [c["text"] for c in both["choices"]] == (ranked_candidates(client, model_client, "A", 21, 5, 30)[:2]
                                                    + ranked_candidates(client, model_client, PROMPT, 26, 5, 30)[:2])
    assert [c["index"] for c in both["choices"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("body, param, code", [
    ({"n": 3, "best_of": 2}, "best_of", "invalid_value"),
    ({"best_of": 9}, "best_of", None),  # over CHARLM_MAX_N
    ({"best_of": 0}, "best_of", None),
    ({"best_of": "2"}, "best_of", None),
    ({"best_of": 2, "stream": True}, "best_of", "unsupported_parameter"),
    ({"prompt": ["A"] * 9, "best_of": 8}, "best_of", None),  # 72 candidates over CHARLM_MAX_STREAMS
    ({"top_k": -2}, "top_k", None),
    ({"top_k": 2 ** 21}, "top_k", None),
    ({"top_k": 1.5}, "top_k", None),
    ({"min_p": 1.5}, "min_p", None),
    ({"min_p": -0.1}, "min_p", None),
    ({"min_p": "0.1"}, "min_p", None),
    ({"temperature": 100.5}, "temperature", None),
])
def test_bad_sampling_values_are_400s(client, body, param, code):
    response = client.post("/v1/completions", json={"model": "charlm", "prompt": "A", **body})
    assert_error(response, 400, param, code)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/generate"])
@pytest.mark.parametrize("param, value", [("presence_penalty", 0.5), ("frequency_penalty", -1.0),
                                          ("repetition_penalty", 1.2), ("logit_bias", {"5": 10})])
def test_penalties_are_refused_saying_why(client, route, param, value):
    body = {"model": "charlm", "prompt": "A", param: value}
    error = assert_error(client.post(route, json=body), 400, param, "unsupported_parameter")
    assert "function of its recurrent state alone" in error["message"] and param in error["message"]


def test_neutral_penalties_are_accepted(client):
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "logit_bias": {}}
    assert len(text_of(client, prompt="A", max_tokens=5, **neutral)) == 5
    assert len(generate(client, prompt="A", max_chars=5, **neutral)["text"]) == 5
