"""The playground at /: served as a page, and used for real in headless Chromium (Debian's `chromium` and
`chromium-driver`, which `make test` installs; tests/browser.py): type a prompt, pick temperature and length,
generate, and see the streamed text on screen; with API keys, the key typed into the page is sent, and remembered
for the visualisation page."""
import io
import threading
import urllib.parse

import pytest
from werkzeug.serving import make_server

import browser as chromium
from serving_helpers import shared_app


def test_page_has_the_controls(exported_model):
    page = shared_app(exported_model[0]).test_client().get("/").get_data(as_text=True)
    for control in ('id="prompt"', 'id="temperature"', 'id="length"', 'id="generate"', 'id="output"',
                    "/static/playground.js"):
        assert control in page
    script = shared_app(exported_model[0]).test_client().get("/static/playground.js")
    assert script.status_code == 200 and b"/v1/completions" in script.data


@pytest.fixture(scope="module")
def server(exported_model):
    """The app on a real socket (werkzeug's threaded server): the browser needs HTTP, not a test client."""
    httpd = make_server("127.0.0.1", 0, shared_app(exported_model[0]), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium.require_browser()  # fails, never skips
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium.CHROMIUM)
    for flag in chromium.flags(tmp_path_factory.mktemp("chromium"), "1100,1000"):
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium must use these binaries, never fetch its own
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(chromium.CHROMEDRIVER)))
    yield driver
    driver.quit()


def dark_pixels(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    return sum(1 for value in image.getdata() if value < 110)


@pytest.mark.slow
def test_typing_a_prompt_streams_text_onto_the_page(server, browser, exported_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "version 1" in d.find_element(By.ID, "model").text)
    output = browser.find_element(By.ID, "output")
    empty = dark_pixels(output.screenshot_as_png)

    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("ROMEO:\n")
    for field, value in (("temperature", "0.7"), ("length", "400"), ("seed", "21")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "error")))
    assert browser.find_element(By.ID, "status").text.startswith("done: 400 characters")

    shown = browser.find_element(By.ID, "generated").get_attribute("textContent")
    expected = shared_app(exported_model[0]).test_client().post("/v1/completions", json={
        "model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 400, "temperature": 0.7, "seed": 21,
    }).get_json()["choices"][0]["text"]
    assert shown == expected
    screenshot = output.screenshot_as_png
    (tmp_path / "playground.png").write_bytes(browser.get_screenshot_as_png())
    # The text is on screen, not just in the DOM: the output box went from blank to full of glyphs.
    assert empty < 50 and dark_pixels(screenshot) > 2000, (empty, dark_pixels(screenshot))


# --- with CHARLM_API_KEYS: the pages are open, their calls need the key the API key field holds ---------------------
KEY = "playground-key-1"


@pytest.fixture(scope="module")
def keyed_server(exported_model):
    from serving.app import create_app

    httpd = make_server("127.0.0.1", 0, create_app({"model_dir": exported_model[0], "api_keys": KEY}), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.mark.slow
def test_with_keys_both_pages_send_the_key_typed_once(keyed_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    browser.get(keyed_server + "/")  # a new origin (its own port): nothing stored yet
    wait.until(lambda d: "API key" in text("model"))  # the page loads; its model list was a 401, and it says why
    browser.find_element(By.ID, "apikey").send_keys(KEY, Keys.TAB)  # typed, then left: the list is asked again
    wait.until(lambda d: "version 1" in text("model"))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("ROMEO:\n")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("40")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: text("status").startswith(("done", "error")))
    assert text("status").startswith("done: 40 characters")
    assert browser.execute_script("return localStorage.getItem('charlm.apiKey')") == KEY

    # The visualisation page on the same origin has the key already: its activations and feature calls go through.
    query = urllib.parse.urlencode({"text": "First Citizen:\nBefore we proceed any further",
                                    "feature": "word_position"})
    browser.get(f"{keyed_server}/visualize?{query}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait.until(lambda d: body.get_attribute("data-state") in ("done", "error"))
    assert body.get_attribute("data-state") == "done", text("status")
    assert body.get_attribute("data-best").startswith("word_position:")
    assert browser.find_element(By.ID, "apikey").get_attribute("value") == KEY

    # A wrong key stored: the page says the key was refused instead of colouring anything.
    browser.execute_script("localStorage.setItem('charlm.apiKey', 'wrong-key')")
    browser.get(f"{keyed_server}/visualize?{query}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait.until(lambda d: body.get_attribute("data-state") in ("done", "error"))
    assert body.get_attribute("data-state") == "error" and "API key was refused" in text("status")
    browser.execute_script("localStorage.removeItem('charlm.apiKey')")
