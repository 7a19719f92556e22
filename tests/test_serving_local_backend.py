"""The local backend: which directories are versions, and a newer version taken up while serving."""
import os
import shutil
import threading

import numpy as np
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


@pytest.mark.parametrize("bf16_units", [[], ["avx512_bf16"]])
def test_a_bf16_version_on_a_cpu_without_bf16_units_is_served_with_a_warning(bf16_units, bf16_version, tmp_path,
                                                                               monkeypatch, caplog):
    import serving.local_backend

    monkeypatch.setattr(serving.local_backend, "cpu_bf16_flags", lambda: bf16_units)
    model_dir = tmp_path / "charlm"
    model_dir.mkdir()
    add_version(model_dir, bf16_version, 7)
    backend = LocalBackend(Settings(model_dir=model_dir))
    with caplog.at_level("WARNING", logger="serving.local_backend"):
        backend.refresh()
    assert backend.model().version == 7 and backend.model().metadata.precision == "bf16"  # served either way
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if bf16_units:
        assert warned == []
    else:
        assert len(warned) == 1 and "version 7 is bf16" in warned[0] and "no bfloat16 units" in warned[0]


def test_batches_run_padded_to_a_power_of_two_and_each_row_is_its_own(model_dir):
    """Fewer shapes for TensorFlow to keep memory for; the padding rows never show, and never change a row."""
    from model_interface import signatures as sig
    from model_interface.signatures import SamplingSettings, fresh_states, generate_inputs, text_inputs
    from serving.local_backend import pad_batch, padded_rows

    assert [padded_rows(n) for n in (1, 2, 3, 4, 5, 33, 64)] == [1, 2, 4, 4, 8, 64, 64]
    padded = pad_batch({"text": np.asarray(["a", "b", "c"], object)}, 4)["text"]
    assert padded.tolist() == ["a", "b", "c", "c"]
    backend = LocalBackend(Settings(model_dir=model_dir))
    backend.refresh()
    prompts, settings = ["ROMEO:", "A", "KING"], [SamplingSettings(seed=s, temperature=0.9) for s in (1, 2, 3)]
    together = backend.call(sig.GENERATE, 1, generate_inputs(prompts, fresh_states(3), [30, 5, 12], settings))
    assert {value.shape[0] for value in together.values()} == {3}
    for i in range(3):
        alone = backend.call(sig.GENERATE, 1, generate_inputs(prompts[i:i + 1], fresh_states(1), [[30, 5, 12][i]],
                                                              settings[i:i + 1]))
        assert alone["text"][0] == together["text"][i]
        np.testing.assert_allclose(alone["state"][0], together["state"][i], atol=1e-5)
    scores = backend.call(sig.SCORE, 1, text_inputs(["First", "Citizen", "ab"]))
    assert scores["log_probs"].shape[0] == 3
