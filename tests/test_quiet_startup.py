"""No start-up line that reads like a failure: a TensorFlow program run the way the Makefile runs `make train`,
`serve`, `sample` and `report` (its exported TF_CPP_MIN_LOG_LEVEL and its `tf` stderr filter, through make itself,
so this cannot drift from the Makefile) prints none of TensorFlow's start-up notices, and still prints a Python
traceback, TensorFlow's own error messages and the program's own messages."""
import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"

# What TensorFlow prints without a GPU when nothing silences it (measured, TensorFlow 2.21): absl-style lines
# "I0000 00:00:1796122158.619584    6757 port.cc:153] ...", the cuInit failure, and absl's banner before them.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")
NOTICE_WORDS = ("cuInit", "oneDNN", "cuda drivers", "absl::InitializeLog", "cpu_feature_guard")


def make_env() -> dict:
    """The caller's environment without what would override the Makefile: a parent make's flags and command-line
    variables, and TensorFlow settings of the caller's own (conftest.py sets TF_CPP_MIN_LOG_LEVEL for pytest)."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("TF_", "MAKE", "MFLAGS")) and name != "GNUMAKEFLAGS"}


def run_as_make_does(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` run by $(PY) in a rule of the Makefile's own making: `$(call tf,...)`, as the TensorFlow targets."""
    if not PY.exists():
        pytest.fail(f"{PY} is missing: `make setup` builds it")
    probe = tmp_path / "probe.py"
    probe.write_text(script, encoding="utf-8")
    rule = f"quiet-startup-probe: ; @$(call tf,$(PY) {probe})"
    return subprocess.run(["make", "-s", "--no-print-directory", "--eval", rule, "quiet-startup-probe"], cwd=ROOT,
                          env=make_env(), capture_output=True, text=True, timeout=600)


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if ABSL_LINE.match(line) or any(word in line for word in NOTICE_WORDS)]


@pytest.mark.slow
def test_a_tensorflow_program_starts_without_notices(tmp_path):
    result = run_as_make_does(
        "import keras\nimport tensorflow as tf\n"
        "print(float(tf.reduce_sum(tf.ones(3))), keras.layers.Dense(2)(tf.ones((1, 3))).shape)\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3.0", "(1,", "2)"], result.stdout
    assert notices(result.stderr) == [], result.stderr


@pytest.mark.slow
def test_errors_and_the_programs_own_messages_still_show(tmp_path):
    result = run_as_make_does(
        "import sys\nimport tensorflow as tf\n"
        "print('charlm: a message of the program', file=sys.stderr)\n"
        "try:\n    tf.reshape(tf.zeros(3), [2])\n"
        "except tf.errors.InvalidArgumentError as e:\n    print('caught:', e.message, file=sys.stderr)\n"
        "raise ValueError('a real error')\n", tmp_path)
    assert result.returncode != 0
    assert "charlm: a message of the program" in result.stderr
    caught = [line for line in result.stderr.splitlines() if line.startswith("caught:")]
    assert len(caught) == 1 and "Input to reshape is a tensor with 3 values, but the requested shape has 2" in caught[0]
    assert "Traceback (most recent call last):" in result.stderr
    assert f'File "{tmp_path / "probe.py"}", line 8, in <module>' in result.stderr
    assert "ValueError: a real error" in result.stderr
    assert notices(result.stderr) == [], result.stderr


def test_the_filter_drops_only_the_start_up_notices(tmp_path):
    """The filter's own lines, without TensorFlow: the three notices go, any other line (an absl-style line
    included) stays, in order."""
    kept = ["W0000 00:00:1796122158.619584    6757 project.cc:12] a warning of someone else's",
            "I0000 00:00:1796122158.619584    6757 port.cc:153] another notice from the same file",
            "Could not find cuda drivers on your machine, GPU will not be used.", "a line", "", "a last line"]
    dropped = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
               "I0000 00:00:1796122158.619584    6757 port.cc:153] oneDNN custom operations are on. You may see "
               "slightly different numerical results due to floating-point round-off errors from different "
               "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
               "I0000 00:00:1796122158.619882    6757 cudart_stub.cc:31] Could not find cuda drivers on your "
               "machine, GPU will not be used."]
    lines = [dropped[0], kept[0], dropped[1], kept[1], dropped[2], kept[2], dropped[0], kept[3], kept[4], kept[5]]
    result = run_as_make_does(f"import sys\nsys.stderr.write({''.join(line + chr(10) for line in lines)!r})\n",
                              tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == kept


def makefile_exports() -> dict:
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "quiet-startup-env: ; @env",
                          "quiet-startup-env"], cwd=ROOT, env=make_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("TF_"))


def test_the_gateway_sets_what_the_makefile_exports():
    """gunicorn outside make (the images, k8s/) gets the same TensorFlow settings from serving/gunicorn.conf.py."""
    exported = makefile_exports()
    assert exported.get("TF_CPP_MIN_LOG_LEVEL") == "3", exported
    tree = ast.parse((ROOT / "serving" / "gunicorn.conf.py").read_text(encoding="utf-8"))
    defaults = {call.args[0].value: call.args[1].value for call in ast.walk(tree)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "setdefault" and ast.unparse(call.func.value).endswith("os.environ")}
    assert {name: defaults.get(name) for name in exported} == exported
