"""The local backend: which directories are versions, and a newer version taken up while serving."""
import os
import shutil
import threading

import pytest

from model_interface.errors import VersionNotFound
from model_interface.signatures import metadata_inputs
from serving.app import create_app
from serving.local_backend import LocalBackend
from serving.settings import Settings
from serving_helpers import assert_error, sse_payloads, wait_until


def test_complete_versions(tmp_path):
    for name, complete in [("1", True), ("2", False), ("10", True), (".build-123-456", True), ("latest", True)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert LocalBackend(Settings(model_dir=tmp_path)).versions() == [1, 10]
    assert LocalBackend(Settings(model_dir=tmp_path / "missing")).versions() == []


def add_version(model_dir, source, version):
    """As export does: build beside the versions, then rename into place whole."""
    build = model_dir / f".build-{os.getpid()}-{version}"
    shutil.copytree(source, build)
    os.rename(build, model_dir / str(version))


@pytest.fixture
def model_dir(exported_model, tmp_path):
    model_dir = tmp_path / "charlm"
    model_dir.mkdir()
    add_version(model_dir, exported_model[1], 1)
    return model_dir


class Gate:
    """Holds the batcher's calls while closed, so a test can act between two chunks of a stream."""

    def __init__(self, backend):
        self.backend, self.is_open = backend, threading.Event()
        self.is_open.set()

    def call(self, *args, **kwargs):
        self.is_open.wait()
        return self.backend.call(*args, **kwargs)


def test_newer_versions_are_served_without_a_restart(model_dir, exported_model):
    app = create_app({"model_dir": model_dir, "model_poll_s": 0})
    client = app.test_client()
    backend = app.extensions["charlm.backend"]
    body = {"model": "charlm", "prompt": "ROMEO:", "max_tokens": 400, "seed": 4}
    expected = client.post("/v1/completions", json=body).get_json()["choices"][0]["text"]
    old_state = client.post("/v1/generate", json={"prompt": "A", "max_chars": 3}).get_json()["state"]
    batcher = app.extensions["charlm.batcher"]
    batcher.backend = gate = Gate(batcher.backend)
    # A stream on version 1 is half-way when version 2 arrives; it finishes on version 1.
    running = client.post("/v1/completions", json={**body, "stream": True}, buffered=False)
    gate.is_open.clear()
    add_version(model_dir, exported_model[1], 2)
    (model_dir / "3").mkdir()  # a version being copied in by hand, not complete yet: ignored
    assert wait_until(lambda: client.get("/v1/models").get_json()["data"][0]["version"] == 2)  # found by polling
    assert batcher.count() == 1
    gate.is_open.set()
    chunks = [p for p in sse_payloads(running.get_data(as_text=True)) if p != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert client.get("/v1/models").get_json()["data"][0]["versions"] == [1, 2]
    # New requests go to version 2; a state from version 1 is refused with a reason.
    assert client.post("/v1/generate", json={"max_chars": 3}).get_json()["version"] == 2
    error = assert_error(client.post("/v1/generate", json={"state": old_state}), 400, "state")
    assert "version 1" in error["message"]

    # A broken newer version is skipped (and not retried); version 2 goes on.
    (model_dir / "3" / "saved_model.pb").write_bytes(b"not a graph")
    backend.refresh()
    backend.refresh()
    assert backend.model().version == 2 and backend._failed == {3}
    assert client.get("/readyz").get_json()["version"] == 2
    # Only the served version and the one before it stay loaded.
    add_version(model_dir, exported_model[1], 4)
    backend.refresh()
    assert backend.model().version == 4
    backend.call("metadata", 2, metadata_inputs())
    with pytest.raises(VersionNotFound):
        backend.call("metadata", 1, metadata_inputs())
