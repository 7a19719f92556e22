"""Shared fixtures: the corpus, a slice of it, and one tiny model trained once per test session."""
import dataclasses
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(ROOT))

SLICE_CHARS = 60_000  # enough for a tiny model to learn words in seconds


def find_corpus() -> Path:
    candidates = [os.environ.get("CHARLM_TEST_CORPUS"), ROOT.parent / "shared/data/tinyshakespeare.txt",
                  ROOT / "data/tinyshakespeare.txt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("tiny-shakespeare not found: set CHARLM_TEST_CORPUS, or run `make train` once to download it")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    return find_corpus()


@pytest.fixture(scope="session")
def corpus_slice(shakespeare_path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare-slice.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:SLICE_CHARS], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_config(corpus_slice, tmp_path_factory):
    from training.config import PRESETS, TrainConfig

    values = dataclasses.asdict(TrainConfig())
    values.update(PRESETS["tiny"], corpus=str(corpus_slice), verbose=0,
                  run_dir=str(tmp_path_factory.mktemp("runs") / "tiny"))
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tiny_config):
    """The tiny preset trained once on the slice; tests read its run directory, never retrain it."""
    from training.train import train

    summary = train(tiny_config)
    return tiny_config, summary


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory):
    """The session's tiny run exported once: (model directory, version directory)."""
    from training.export import export_version

    config, _ = trained_run
    export_dir = tmp_path_factory.mktemp("exported_models")
    version = export_version(Path(config.run_dir), export_dir, "charlm")
    return export_dir / "charlm", version


@pytest.fixture(scope="session")
def bf16_version(trained_run, tmp_path_factory):
    """The session's tiny run exported a second time, in bf16: its version directory."""
    from training.export import export_version

    config, _ = trained_run
    return export_version(Path(config.run_dir), tmp_path_factory.mktemp("bf16_models"), "charlm", precision="bf16")


@pytest.fixture(scope="session")
def model_client(exported_model):
    """The session's exported version through the model interface's in-process transport."""
    from model_interface.client import InProcess, ModelClient

    return ModelClient(InProcess(exported_model[1]))


@pytest.fixture(scope="session")
def loaded_model(model_client):
    """The raw tf.saved_model.load() object of the session's version, for tests of the graph itself."""
    return model_client.transport.loaded


@pytest.fixture(scope="session")
def app(exported_model):
    """The gateway (flaskr's `app` fixture) on the session's model: one per session (serving_helpers.shared_app),
    so tests must not change it; a module that needs other settings defines its own `app`."""
    from serving_helpers import shared_app

    return shared_app(exported_model[0])


@pytest.fixture
def client(app):
    return app.test_client()
