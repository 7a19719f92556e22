"""The report end to end on the session's tiny model and the 60k-character slice (small settings)."""
import ast
import json
import math
from pathlib import Path

import pytest

from analysis import report
from analysis.exported import ModelError


@pytest.fixture(scope="module")
def written(exported_model, corpus_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code = report.main(["--model", str(exported_model[0]), "--text", str(corpus_slice), "--out", str(out),
                        "--activation-chars", "3000", "--max-order", "8"])
    assert code == 0
    return out


def test_writes_a_self_contained_page_figures_and_every_number(written):
    page = (written / "report.html").read_text(encoding="utf-8")
    for name in ("ngrams", "saturation", "cells", "errors", "advantage"):
        assert (written / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('src="data:image/png;base64,') == 5  # no file beside it is needed to view it
    assert "<span style=\"background:rgb(" in page  # text coloured by cells
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    results = json.loads((written / "report.json").read_text(), parse_constant=refuse)  # no NaN or Infinity
    assert set(results) >= {"model", "text", "bits_per_char", "cells", "saturation", "errors", "advantage"}


def test_numbers_agree_with_the_model_and_with_each_other(written, model_client, corpus_slice):
    results = json.loads((written / "report.json").read_text())
    text = corpus_slice.read_text(encoding="utf-8")
    train, val = model_client.metadata.split(text)
    assert results["text"]["validation_characters"] == len(val) == 6000
    # The LSTM's bits/char is the score signature's over the validation split, read in one call here.
    out = model_client.score([val])
    assert results["bits_per_char"]["lstm"] == pytest.approx(float(out["bits_per_char"][0]), abs=2e-3)
    ngram = results["bits_per_char"]["ngram"]
    assert list(ngram) == [str(n) for n in range(1, 9)]
    assert results["bits_per_char"]["best_ngram"] == min(ngram.values())
    assert ngram["1"] > ngram["2"] > ngram["3"]
    shares = [row["share_of_errors"] for row in results["errors"]["categories"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    for row in results["saturation"]["summary"]:
        assert 0 <= row["mean_left"] <= 1 and 0 <= row["mean_right"] <= 1 and row["mean_left"] + row["mean_right"] <= 1


def test_cell_ranking_covers_every_feature_and_says_why_one_is_missing(written):
    ranking = json.loads((written / "report.json").read_text())["cells"]["ranking"]
    assert ranking["inside_quotes"]["best"] == [] and "constant" in ranking["inside_quotes"]["note"]  # no '"' there
    for name in ("line_position", "newline_ahead", "inside_word", "word_position", "word_boundary"):
        best = ranking[name]["best"]
        assert len(best) == 5 and all(0 <= b["cell"] < 32 and b["layer"] == 0 for b in best)  # a 1x32 model
        assert not math.isnan(best[0]["r_held_out"])
    # Even a tiny model has a cell that knows whether it is inside a word.
    assert abs(ranking["inside_word"]["best"][0]["r_held_out"]) > 0.5


def test_bad_arguments_get_a_message_naming_them(tmp_path, corpus_slice, capsys):
    assert report.main(["--model", str(tmp_path / "nowhere"), "--text", str(corpus_slice), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--model" in err and "nowhere" in err and "Traceback" not in err
    # Nothing listening: the address and the flag, not a gRPC traceback.
    assert report.main(["--tfserving", "127.0.0.1:1", "--text", str(corpus_slice), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--tfserving 127.0.0.1:1" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        report.main(["--model", str(tmp_path), "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert "missing.txt" in capsys.readouterr().err


def test_the_model_flags_pick_the_newest_complete_version_or_say_why_not(exported_model, tmp_path):
    model_dir, version = exported_model
    for path in (model_dir, version):
        client = report.open_client(model=str(path))
        assert client.transport.version_dir == version
        client.close()
    with pytest.raises(ValueError, match="--model .* no complete model version"):
        report.open_client(model=str(tmp_path))
    with pytest.raises(ValueError, match="--model .* no such directory"):
        report.open_client(model=str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="--model.*--tfserving"):
        report.open_client()


def test_analysis_never_imports_training_and_reaches_models_only_through_model_interface():
    """Analysis reads exported models only, and only through model_interface: no module of it imports training/,
    TensorFlow or gRPC, at the top or inside a function."""
    package = Path(report.__file__).parent
    banned = ("training", "tensorflow", "tensorflow_serving", "grpc")
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in banned for n in names), f"{path.name} imports {names}"
