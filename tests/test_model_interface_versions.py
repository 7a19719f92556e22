"""TensorFlow Serving's version layout: what counts as a version, and publishing one whole or not at all."""
import subprocess
import sys

import pytest

from model_interface.errors import LayoutError
from model_interface.versions import (complete_versions, newest_version, next_version, publish_version,
                                      remove_abandoned_builds, resolve_version)


def fake_version(directory):
    directory.mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"graph")


def test_only_integer_directories_with_a_graph_are_versions(tmp_path):
    for name in ("1", "3", "10"):
        fake_version(tmp_path / name)
    (tmp_path / "12").mkdir()  # no graph: half-copied by hand, not a version, but its number is taken
    fake_version(tmp_path / ".build-1-2")
    fake_version(tmp_path / "latest")
    assert complete_versions(tmp_path) == [1, 3, 10]
    assert newest_version(tmp_path) == tmp_path / "10"
    assert next_version(tmp_path) == 13
    assert complete_versions(tmp_path / "missing") == [] and next_version(tmp_path / "missing") == 1


def test_resolve_version_names_what_is_wrong(tmp_path):
    fake_version(tmp_path / "m" / "2")
    assert resolve_version(tmp_path / "m") == tmp_path / "m" / "2"
    assert resolve_version(tmp_path / "m" / "2", 2) == tmp_path / "m" / "2"
    with pytest.raises(LayoutError, match="--model .*nope: no such directory"):
        resolve_version(tmp_path / "nope", what="--model")
    with pytest.raises(LayoutError, match="holds no complete model version"):
        resolve_version(tmp_path)
    with pytest.raises(LayoutError, match=r"has no version 5 \(it has 2\)"):
        resolve_version(tmp_path / "m", 5)
    with pytest.raises(LayoutError, match="is itself version 2, not version 3"):
        resolve_version(tmp_path / "m" / "2", 3)


def test_publish_appears_whole_or_not_at_all(tmp_path):
    def failing(directory):
        fake_version(directory)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_version(tmp_path / "m", failing)
    assert list((tmp_path / "m").iterdir()) == []
    with pytest.raises(LayoutError, match="wrote no saved_model.pb"):
        publish_version(tmp_path / "m", lambda directory: directory.mkdir())
    assert list((tmp_path / "m").iterdir()) == []
    assert publish_version(tmp_path / "m", fake_version) == tmp_path / "m" / "1"
    assert publish_version(tmp_path / "m", fake_version) == tmp_path / "m" / "2"


def test_abandoned_builds_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    fake_version(tmp_path / f".build-{dead}-1")
    import os

    fake_version(tmp_path / f".build-{os.getpid()}-1")  # a live build (ours) is left alone
    remove_abandoned_builds(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".build-{os.getpid()}-1"]
