"""Which package may import which (docs/architecture.md): every import in every .py file of the project's packages,
absolute or relative, at module level or lazily inside a function, checked against one table."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the other packages it may import (its own modules it always may).
MAY_IMPORT = {
    "model_interface": set(),
    "training": {"model_interface"},
    "serving": {"model_interface", "analysis"},
    "analysis": {"model_interface"},
    "benchmarks": {"model_interface", "training", "serving", "analysis"},
    "tests": {"model_interface", "training", "serving", "analysis"},
}
# tests/ is no package: its helper modules (conftest.py, serving_helpers.py, ...) are imported by their bare names.
TEST_HELPERS = {path.stem for path in (ROOT / "tests").glob("*.py")}


def package_of(module: str) -> str | None:
    """The project package an absolute module name belongs to, or None (the standard library, a dependency)."""
    top = module.split(".")[0]
    if top in MAY_IMPORT:
        return top
    return "tests" if top in TEST_HELPERS else None


def imported_modules(source: str, module: str):
    """(line, absolute module name) for every import in `source`, the text of module `module` (dotted): import and
    from-import statements anywhere in the file, relative ones resolved, and importlib.import_module("...") or
    __import__("...") with a literal name."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[:len(parts) - node.level + 1])
                name = ".".join(part for part in (base, node.module) if part)
            else:
                name = node.module
            if name:
                yield node.lineno, name
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and ast.unparse(node.func) in (
                    "importlib.import_module", "import_module", "__import__"):
            yield node.lineno, node.args[0].value


def violations(path: str, source: str) -> list[str]:
    """'file:line: ...' for each import in `source` (the text of `path`, relative to the repository root) that its
    package may not make."""
    parts = Path(path).with_suffix("").parts
    owner = parts[0]
    module = ".".join(parts) if owner != "tests" else parts[-1]
    found = []
    for line, name in imported_modules(source, module):
        target = package_of(name)
        if target is None or target == owner or target in MAY_IMPORT[owner]:
            continue
        allowed = ", ".join(sorted(MAY_IMPORT[owner])) or "none of the other packages"
        found.append(f"{path}:{line}: imports {name} ({target}); {owner} may import {allowed}")
    return found


def project_files():
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path.relative_to(ROOT).as_posix()


def test_every_package_imports_only_what_it_may():
    files = list(project_files())
    assert len(files) > 50 and "training/train.py" in files and "serving/gunicorn.conf.py" in files
    found = [v for path in files for v in violations(path, (ROOT / path).read_text(encoding="utf-8"))]
    assert not found, "forbidden imports:\n" + "\n".join(found)


def test_the_table_covers_every_python_file():
    """A new top-level directory of Python files must be given its place in the table (and docs/architecture.md)."""
    outside = [top.name for top in sorted(ROOT.iterdir()) if top.is_dir() and not top.name.startswith(".")
               and top.name not in MAY_IMPORT and next(top.rglob("*.py"), None)]
    assert outside == []
    assert sorted(path.name for path in ROOT.glob("*.py")) == []


@pytest.mark.parametrize("path, source, expected", [
    ("training/fake.py", "import os\n\ndef lazy():\n    from serving.batcher import Batcher\n",
     ["training/fake.py:4: imports serving.batcher (serving); training may import model_interface"]),
    ("model_interface/fake.py", "import numpy\nimport training.config as config\n",
     ["model_interface/fake.py:2: imports training.config (training); model_interface may import none of the "
      "other packages"]),
    ("analysis/fake.py", "from serving import app\nfrom model_interface.client import ModelClient\n",
     ["analysis/fake.py:1: imports serving (serving); analysis may import model_interface"]),
    ("serving/fake.py", "import importlib\nm = importlib.import_module('training.export')\n",
     ["serving/fake.py:2: imports training.export (training); serving may import analysis, model_interface"]),
    ("serving/fake.py", "def f():\n    import benchmarks.machine\n    import serving_helpers\n",
     ["serving/fake.py:2: imports benchmarks.machine (benchmarks); serving may import analysis, model_interface",
      "serving/fake.py:3: imports serving_helpers (tests); serving may import analysis, model_interface"]),
    ("benchmarks/fake.py", "from tests import conftest\n",
     ["benchmarks/fake.py:1: imports tests (tests); benchmarks may import analysis, model_interface, serving, "
      "training"]),
])
def test_a_forbidden_import_is_named_with_its_file_and_line(path, source, expected):
    assert violations(path, source) == expected


@pytest.mark.parametrize("path, source", [
    ("serving/fake.py", "import json\nfrom analysis.features import feature_tracks\nfrom . import errors\n"
                        "from .schemas import X\nimport model_interface.client\n"),
    ("serving/sub/fake.py", "from ..schemas import X\nfrom .. import errors\n"),
    ("training/fake.py", "from model_interface.signatures import SamplingSettings\nimport tensorflow as tf\n"),
    ("tests/test_fake.py", "import training.train\nimport serving.app\nfrom serving_helpers import shared_app\n"
                           "import browser\n"),
    ("benchmarks/fake.py", "from benchmarks.machine import machine\nfrom training.train import make_train_step\n"),
])
def test_allowed_imports_pass(path, source):
    assert violations(path, source) == []


def test_the_gateway_never_runs_on_the_tf_serving_stand_in():
    """serving/tfserving_standin.py is for tests and benchmarks on machines without TF Serving: nothing of the
    gateway itself may import it, so the production path stays the real one."""
    found = [f"{path}:{line}" for path in project_files() if path.startswith("serving/")
             and path != "serving/tfserving_standin.py"
             for line, name in imported_modules((ROOT / path).read_text(encoding="utf-8"), path[:-3].replace("/", "."))
             if name.startswith("serving.tfserving_standin")]
    assert not found, f"the gateway imports the stand-in: {found}"
