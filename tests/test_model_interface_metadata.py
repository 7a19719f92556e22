"""A version's charlm.json as one typed value."""
import json

import pytest

from model_interface.errors import MetadataError
from model_interface.metadata import ModelMetadata

FACTS = dict(model_name="m", vocab=["\n", " ", "a", "b"], cell="lstm", num_layers=2, hidden_size=8,
             embedding_size=4, state_size=33, max_chars_per_call=4096,
             signatures=["generate", "score", "activations", "metadata"], val_fraction=0.2,
             created="2026-12-01T10:00:00Z")


def test_round_trip_and_derived_facts(tmp_path):
    metadata = ModelMetadata(**FACTS)
    path = metadata.write(tmp_path)
    assert path == tmp_path / "assets.extra" / "charlm.json"
    written = json.loads(path.read_text())
    assert written["vocab_size"] == 4 and "then the position" in written["state_layout"]
    again = ModelMetadata.read(tmp_path)
    assert again == metadata and again.created_unix == 1796119200
    assert again.unknown_chars("abc\u2603") == ["c", "\u2603"]
    assert again.split("0123456789") == ("01234567", "89")
    assert ModelMetadata.state_size_for("gru", 2, 8) == 17 and ModelMetadata.state_size_for("lstm", 2, 8) == 33


def test_precision_defaults_to_fp32_for_versions_written_before_it(tmp_path):
    old = ModelMetadata.from_json(json.dumps(FACTS))  # a charlm.json with no "precision"
    assert old.precision == "fp32"
    bf16 = ModelMetadata(**FACTS, precision="bf16")
    bf16.write(tmp_path)
    assert json.loads((tmp_path / "assets.extra/charlm.json").read_text())["precision"] == "bf16"
    assert ModelMetadata.read(tmp_path).precision == "bf16"
    with pytest.raises(MetadataError, match="precision: Input should be 'fp32' or 'bf16'"):
        ModelMetadata.from_json(json.dumps({**FACTS, "precision": "fp16"}))


def test_a_newer_exports_extra_facts_are_kept():
    metadata = ModelMetadata.from_json(json.dumps({**FACTS, "future_fact": 3}))
    assert metadata.model_extra["future_fact"] == 3


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), ("[1]", "not a JSON object"),
    (json.dumps({k: v for k, v in FACTS.items() if k != "cell"}), "cell: Field required"),
    (json.dumps({**FACTS, "cell": "transformer"}), "cell: Input should be"),
    (json.dumps({**FACTS, "vocab": []}), "vocab: "),
])
def test_bad_metadata_names_the_field(text, message):
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_json(text, "some/charlm.json")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(MetadataError, match=r"assets.extra/charlm.json: cannot be read"):
        ModelMetadata.read(tmp_path)
