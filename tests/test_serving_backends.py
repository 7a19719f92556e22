"""The backend interface: what a version says about itself, error wording, and the background version check."""
import threading

import pytest

from model_interface.client import rejection_message
from model_interface.errors import ModelUnavailable
from serving.backend import Backend
from serving.backends import make_backend
from serving.local_backend import LocalBackend
from serving.settings import Settings
from serving.tfserving_backend import TFServingBackend
from serving_helpers import shared_app, wait_until


def test_a_version_describes_itself(exported_model):
    model = shared_app(exported_model[0]).extensions["charlm.backend"].model()
    meta = model.metadata  # what the version answers through its own `metadata` signature
    assert (model.name, model.version, meta.num_layers, meta.hidden_size, meta.cell) == ("charlm", 1, 1, 32, "lstm")
    assert model.state_size == 2 * 32 + 1 and len(meta.vocab) == len(set(meta.vocab)) > 30
    assert model.created > 1_600_000_000
    assert model.unknown_chars("ROMEO: \u00e9\u00e9 \u2603") == ["\u00e9", "\u2603"]


def test_rejection_message_keeps_the_models_words():
    graph_error = ("Graph execution error:\n\nDetected at node assert/Assert defined at (most recent call last):\n"
                   "<stack>\nassertion failed: [temperature must be > 0] [Condition x > 0 did not hold element-wise:]")
    assert rejection_message(graph_error) == "temperature must be > 0"
    assert rejection_message("Graph execution error:\n\nExpected inputs a, b") == "Expected inputs a, b"
    assert rejection_message("") == "rejected by the model"


def test_make_backend_by_setting(tmp_path):
    assert isinstance(make_backend(Settings(model_dir=tmp_path)), LocalBackend)
    assert isinstance(make_backend(Settings(backend="tfserving")), TFServingBackend)
    with pytest.raises(ModelUnavailable, match="no model version"):
        make_backend(Settings(model_dir=tmp_path)).model()


class SlowRefresh(Backend):
    def __init__(self, poll_s):
        super().__init__(Settings(model_dir="x", model_poll_s=poll_s))
        self.refreshes, self.release = 0, threading.Event()

    def refresh(self):
        self.refreshes += 1
        self.release.wait(10)


def test_version_checks_run_in_the_background_one_at_a_time():
    backend = SlowRefresh(poll_s=0)
    backend.maybe_refresh()  # returns at once: the look happens in a thread
    backend.maybe_refresh()
    backend.maybe_refresh()
    assert wait_until(lambda: backend.refreshes == 1)
    backend.release.set()
    assert wait_until(lambda: not backend._refresh_lock.locked())
    backend.maybe_refresh()
    assert wait_until(lambda: backend.refreshes == 2)


def test_version_checks_are_throttled():
    backend = SlowRefresh(poll_s=3600)
    backend.release.set()
    backend.maybe_refresh()
    assert wait_until(lambda: backend.refreshes == 1 and not backend._refresh_lock.locked())
    backend.maybe_refresh()
    assert backend.refreshes == 1
