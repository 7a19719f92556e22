"""The code corpus: whole ASCII .py files in sorted path order, site-packages left out, up to a size."""
import pytest

from analysis.code_corpus import build_corpus, main


@pytest.fixture
def library(tmp_path):
    files = {"b.py": "b = 1\n", "a.py": "a = (1,\n     2)\n", "pkg/c.py": "def c():\n    return 'c'\n",
             "pkg/d.py": "d = 'é'\n", "site-packages/e.py": "e = 5\n", "notes.txt": "not code\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_takes_ascii_python_files_in_sorted_order(library):
    assert build_corpus(10_000, library) == "a = (1,\n     2)\n" + "b = 1\n" + "def c():\n    return 'c'\n"


def test_stops_before_the_file_that_would_pass_the_size(library):
    assert build_corpus(20, library) == "a = (1,\n     2)\n"  # 16 characters; adding b.py would make 22
    assert build_corpus(5, library) == "a = (1,\n     2)\n"  # at least one whole file


def test_the_real_standard_library_gives_code_with_brackets_and_indentation(tmp_path, capsys):
    out = tmp_path / "stdlib.txt"
    assert main(["--out", str(out), "--chars", "50000"]) == 0
    text = out.read_text(encoding="utf-8")
    assert 0 < len(text) <= 50_000 and text.isascii()
    assert text.count("(") > 100 and "\n    " in text
    assert str(out) in capsys.readouterr().out
