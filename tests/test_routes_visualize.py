"""The /visualize page: its routes, and the page itself in headless Chromium (tests/browser.py) against the real
gateway."""
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from flask import Flask

import browser as chromium
from analysis.features import feature_tracks
from serving import errors
from serving.routes_visualize import MAX_FEATURE_CHARS, bp


@pytest.fixture(scope="module")
def client():
    app = Flask(__name__)
    app.register_blueprint(bp)
    errors.init_app(app)  # the gateway's error envelope, as create_app attaches it
    return app.test_client()


def test_the_page_is_served_and_reads_the_activations_endpoint(client):
    response = client.get("/visualize")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "/v1/activations" in page and "/visualize/features" in page
    # Both calls go through post(), which sends the API key field's key (/static/apikey.js; with CHARLM_API_KEYS
    # tests/test_serving_routes_ui.py uses the page for real): no bare fetch without it.
    assert '<script src="/static/apikey.js"></script>' in page and page.count("fetch(") == 1


def test_features_are_the_analysis_tracks(client):
    text = 'say "hi" (x[1])\n  ok'
    response = client.post("/visualize/features", json={"text": text})
    assert response.status_code == 200
    features = response.get_json()["features"]
    expected = feature_tracks(text)
    assert [f["name"] for f in features] == list(expected)  # in the analysis' order, for the page's list
    for feature in features:
        assert feature["values"] == expected[feature["name"]].tolist()
        assert feature["description"]


@pytest.mark.parametrize("body, param", [
    (None, None), ([1, 2], None), ({}, "text"), ({"text": ""}, "text"), ({"text": 3}, "text"),
    ({"text": "a", "extra": 1}, "extra"), ({"text": "a" * (MAX_FEATURE_CHARS + 1)}, "text")])
def test_bad_feature_requests_get_a_400_in_openai_envelope(client, body, param):
    response = client.post("/visualize/features", data="not json" if body is None else json.dumps(body),
                           content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


# --- in the browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def headless_chromium():
    chromium.require_browser()  # fails, never skips; before the gateway fixture loads a model for nothing
    return chromium.CHROMIUM


@pytest.fixture(scope="module")
def gateway(exported_model):
    """The real gateway (serving.app.create_app registers this blueprint; local backend on the session's
    model), on a free port."""
    from werkzeug.serving import make_server

    from serving.app import create_app

    app = create_app({"model_dir": str(exported_model[0])})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    for _ in range(240):  # the model loads in the background
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("the gateway never became ready")
    yield url
    server.shutdown()


def browse(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    # Virtual time runs the page's fetches to completion before the screenshot or the DOM dump.
    command = [str(chromium.CHROMIUM), *chromium.flags(tmp_path / "profile", "1000,1000"), "--hide-scrollbars",
               "--virtual-time-budget=60000", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_page_colours_the_text_by_a_cell_and_jumps_to_a_features_best_cell(headless_chromium, gateway, loaded_model,
                                                                           corpus_slice, tmp_path):
    from PIL import Image

    text = corpus_slice.read_text(encoding="utf-8")[:400]
    # The cell whose tanh(c) swings furthest both ways on this text: its colours must show both red and blue.
    out = loaded_model.signatures["activations"](text=np.array([text], object), state=np.zeros([1, 0], np.float32))
    cells = np.tanh(out["cell"].numpy()[0, :, -1, :])  # (time, hidden), top layer
    cell = int(np.argmax(np.minimum((cells < -0.5).sum(axis=0), (cells > 0.5).sum(axis=0))))
    assert (cells[:, cell] < -0.5).sum() >= 20 and (cells[:, cell] > 0.5).sum() >= 20

    query = urllib.parse.urlencode({"text": text, "cell": cell})
    shot = tmp_path / "visualize.png"
    result = browse(f"{gateway}/visualize?{query}", tmp_path, f"--screenshot={shot}")
    assert shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    reddish = ((red - blue > 60) & (red > 150) & (green < 200)).sum()
    bluish = ((blue - red > 60) & (blue > 150)).sum()
    # A character's background is ~9x21 pixels: 20+ strongly coloured characters each way is >1,500 pixels,
    # far above the two 13-pixel legend chips.
    assert reddish > 1500 and bluish > 1500, (reddish, bluish)

    # Picking a feature jumps to the cell the page finds best on this text: the same one Python's ranking finds.
    dom = browse(f"{gateway}/visualize?" + urllib.parse.urlencode({"text": text, "feature": "word_position"}),
                 tmp_path, "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[-3000:]
    track = feature_tracks(text)["word_position"]
    r = np.array([np.corrcoef(cells[:, c], track)[0, 1] for c in range(cells.shape[1])])
    assert f'data-best="word_position:0:{int(np.nanargmax(np.abs(r)))}"' in dom
