"""CHARLM_* environment variables -> Settings; bad values stop the gateway at start with the variable named."""
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.app import create_app
from serving.settings import Settings


def test_defaults(monkeypatch):
    for name in ("CHARLM_BACKEND", "CHARLM_MODEL_DIR", "CHARLM_API_KEYS", "CHARLM_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.backend == "local" and settings.model_dir == Path("exported_models/charlm")
    assert settings.served_name == "charlm" and settings.api_keys == ()


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARLM_BACKEND", "tfserving")
    monkeypatch.setenv("CHARLM_MODEL_DIR", str(tmp_path / "shakespeare"))
    monkeypatch.setenv("CHARLM_TFSERVING_ADDRESS", "tf-serving:8500")
    monkeypatch.setenv("CHARLM_MAX_STREAMS", "8")
    monkeypatch.setenv("CHARLM_API_KEYS", " key-one, key-two ,,")
    monkeypatch.setenv("CHARLM_TEST_CORPUS", "/elsewhere")  # other CHARLM_ variables are not settings: ignored
    settings = Settings()
    assert settings.backend == "tfserving" and settings.tfserving_address == "tf-serving:8500"
    assert settings.max_streams == 8 and settings.served_name == "shakespeare"
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-one", "key-two"]
    assert "key-one" not in repr(settings)  # secrets stay out of logs
    monkeypatch.setenv("CHARLM_MODEL_NAME", "charlm")
    assert Settings().served_name == "charlm"


@pytest.mark.parametrize("name, value", [
    ("CHARLM_BACKEND", "triton"), ("CHARLM_MAX_STREAMS", "0"), ("CHARLM_MAX_STREAMS", "many"),
    ("CHARLM_TFSERVING_TIMEOUT_S", "-1"), ("CHARLM_MAX_BODY_BYTES", "10"), ("CHARLM_FIRST_CHUNK", "128"),
    ("CHARLM_NEWCOMER_FIRST", "sometimes"),
])
def test_bad_values_refuse_to_start(monkeypatch, tmp_path, name, value):
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("CHARLM_MODEL_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match=name.removeprefix("CHARLM_").lower() if name != "CHARLM_FIRST_CHUNK"
                       else "max_chunk"):
        create_app()


def test_config_overrides_environment_and_rejects_unknown_names(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARLM_MAX_TOKENS", "100")
    assert Settings(max_tokens=50).max_tokens == 50
    with pytest.raises(ValidationError, match="max_tokenz"):
        create_app({"model_dir": tmp_path, "max_tokenz": 5})
