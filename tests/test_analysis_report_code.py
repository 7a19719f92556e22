"""The report on C: a planted bracket-depth cell must come out as the code section's bracket cell, strings and
comments lexed as C, and the long-range figure drawn for closing braces (no training: hand-set weights)."""
import dataclasses
import json

import numpy as np
import pytest

from analysis import report
from analysis.features import feature_tracks

HIDDEN, DEPTH_CELL = 8, 3
STEP = 0.2  # the planted cell's c moves by tanh(STEP) per bracket


def c_function(rng, name):
    """A function with nested blocks, a '{' in a comment and a '}' in a string (they pair with each other, so
    naive bracket depth never goes below 0), char literals and tab indentation."""
    body = [f"\t/* {name}: the {{ of a comment */", f"\tint n = {rng.integers(1, 99)};"]
    for k in range(rng.integers(1, 4)):
        body += [f"\tif (n > {k}) {{", f"\t\tn = f(n, '{k}');  // step {k}", "\t}"]
        if rng.random() < 0.5:
            body += ["\twhile (n--) {", "\t\tif (g(n)) {", "\t\t\tputs(\"x\\n\");", "\t\t}", "\t}"]
    body += ["\ts = \"}\";", "\treturn n;"]
    return f"static int {name}(int x)\n{{\n" + "\n".join(body) + "\n}\n\n"


def c_corpus(chars):
    rng = np.random.default_rng(5)
    parts, size, i = ["#include <linux/kernel.h>\n\n"], 0, 0
    while size < chars:
        parts.append(c_function(rng, f"fn_{i}"))
        size += len(parts[-1])
        i += 1
    return "".join(parts)


def planted_depth_weights(model, vocab):
    """Cell DEPTH_CELL adds tanh(STEP) to its c on every opener ( [ { and takes it off on every closer (i = f = o = 1,
    candidate tanh(STEP * dim 0 of the embedding), which is +1, -1 or 0); nothing else reads or writes it."""
    rng = np.random.default_rng(11)
    big = 20.0
    embedding = rng.normal(0, 0.5, size=model.embedding.embeddings.shape)
    embedding[:, 0] = [1.0 if c in "([{" else -1.0 if c in ")]}" else 0.0 for c in vocab.chars]
    model.embedding.embeddings.assign(embedding)
    cell = model.recurrent[0].cell
    kernel, recurrent, bias = (rng.normal(0, 0.3, size=w.shape)
                               for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    recurrent[DEPTH_CELL, :] = 0
    for block in range(4):  # Keras keeps the gates as i, f, c, o along the last axis
        kernel[:, block * HIDDEN + DEPTH_CELL] = 0
        recurrent[:, block * HIDDEN + DEPTH_CELL] = 0
        bias[block * HIDDEN + DEPTH_CELL] = big
    bias[2 * HIDDEN + DEPTH_CELL] = 0
    kernel[0, 2 * HIDDEN + DEPTH_CELL] = STEP
    for w, v in zip(cell.weights, (kernel, recurrent, bias)):
        w.assign(v)


@pytest.fixture(scope="module")
def code_report(tmp_path_factory):
    from training.config import TrainConfig
    from training.corpus import Vocab
    from training.export import publish_model
    from training.model import CharRNN

    work = tmp_path_factory.mktemp("code-report")
    text = c_corpus(40_000)
    corpus = work / "tiny-c.txt"
    corpus.write_text(text, encoding="utf-8")
    vocab = Vocab.from_text(text)
    config = dataclasses.replace(TrainConfig(), hidden_size=HIDDEN, num_layers=1, embedding_size=4, dropout=0.0)
    model = CharRNN(len(vocab), config)
    planted_depth_weights(model, vocab)
    model_dir = publish_model(model, vocab, config, work / "exported", "planted-c")
    out = work / "report"
    assert report.main(["--model", str(model_dir), "--text", str(corpus), "--out", str(out),
                        "--activation-chars", "3000", "--max-order", "5"]) == 0
    return text, out, json.loads((out / "report.json").read_text())


def test_the_planted_bracket_cell_is_the_code_sections_bracket_cell(code_report):
    _, _, results = code_report
    assert results["language"] == {"language": "c", "decided_by": "a sniff of the text"}
    best = results["code"]["cells"]["bracket_depth"]
    assert (best["layer"], best["cell"]) == (0, DEPTH_CELL) and best["r_held_out"] > 0.9
    for name in ("indentation", "inside_comment", "inside_string", "inside_quotes"):
        assert "layer" in results["code"]["cells"][name], name  # every code feature varies on this text


def test_strings_and_comments_are_lexed_as_c_and_braces_in_them_left_out(code_report):
    text, _, results = code_report
    val = text[results["text"]["train_characters"]:]
    sample = val[:results["text"]["activation_sample_characters"]]
    c_tracks = feature_tracks(sample, ["inside_comment"], language="c")["inside_comment"]
    assert c_tracks.sum() > 0 and c_tracks[sample.index("if")] == 0
    braces = results["code"]["brace_by_distance"]
    in_literals = val.count('"}"')  # every function has one '}' in a string, which must not be counted
    assert sum(r["count"] for r in braces) <= val.count("}") - in_literals
    assert sum(r["count"] for r in braces) > 0.9 * (val.count("}") - in_literals)  # few lose their opener to the cut


def test_the_page_shows_the_code_cells_and_the_long_range_figure(code_report):
    _, out, _ = code_report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (out / "figures" / "long_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('src="data:image/png;base64,') == 6
    assert "Code cells (the paper's Linux cells)" in page and "closing braces by distance" in page


def test_the_language_comes_from_the_corpus_metadata_when_it_describes_this_text(tmp_path):
    import hashlib

    corpus = tmp_path / "kernel.txt"
    text = "int x;\n"
    corpus.write_text(text)
    assert report.corpus_language(corpus, text) == ("prose", "a sniff of the text")
    facts = {"language": "c", "sha256": hashlib.sha256(text.encode()).hexdigest()}
    corpus.with_suffix(".json").write_text(json.dumps(facts))
    assert report.corpus_language(corpus, text) == ("c", str(corpus.with_suffix(".json")))
    assert report.corpus_language(corpus, text + "more") == ("prose", "a sniff of the text")  # another text
    assert report.corpus_language(corpus, text, "python") == ("python", "--language")
