"""/metrics reports what the gateway did: characters, latencies, batch sizes, streams, responses by status."""
from serving_helpers import metric_value, shared_app

MODEL = 'model_name="charlm"'  # the served model's name, on every series that tests elsewhere do not read unlabelled


def scrape(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def test_a_generation_shows_up_in_every_metric(exported_model):
    client = shared_app(exported_model[0]).test_client()
    before = scrape(client)

    def delta(after, name, labels=""):
        return (metric_value(after, name, labels) or 0) - (metric_value(before, name, labels) or 0)

    client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 75, "stream": True}).get_data()
    client.post("/v1/completions", json={"model": "charlm", "max_tokens": -1})  # a 400
    after = scrape(client)
    assert delta(after, "charlm_generated_chars_total") == 75
    assert delta(after, "charlm_time_to_first_char_seconds_count", 'endpoint="/v1/completions"') == 1
    assert delta(after, "charlm_inter_char_seconds_count", f'endpoint="/v1/completions",{MODEL}') >= 3  # 4+8+16+32+15
    assert delta(after, "charlm_batch_size_count", MODEL) >= 5
    assert delta(after, "charlm_backend_call_seconds_count", f'{MODEL},signature="generate"') >= 5
    assert delta(after, "charlm_responses_total", f'endpoint="/v1/completions",{MODEL},status="200"') == 1
    assert delta(after, "charlm_responses_total", f'endpoint="/v1/completions",{MODEL},status="400"') == 1
    assert metric_value(after, "charlm_active_streams") == 0 and metric_value(after, "charlm_queue_depth", MODEL) == 0
