"""TensorFlow Serving's version layout: `<model dir>/<integer version>/saved_model.pb`, `variables/`,
`assets.extra/`. The only place that lists version directories.

A version is built under `.build-<pid>-<ns>/` beside the versions and renamed to the next integer when whole,
so TF Serving (which only looks at integer names) and the gateway never see half of one; a version directory
with its graph file is therefore complete. A killed build leaves only its `.build-*` directory, swept by the
next publish once its process is gone.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from model_interface.errors import LayoutError

GRAPH_FILE = "saved_model.pb"
EXTRA_DIR = "assets.extra"  # TF Serving ignores it; the version's own files live here
METADATA_FILE = "charlm.json"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving's --enable_model_warmup reads
BUILD_PREFIX = ".build-"


def is_complete(version_dir: Path) -> bool:
    return Path(version_dir).name.isdigit() and (Path(version_dir) / GRAPH_FILE).is_file()


def complete_versions(model_dir: Path) -> list[int]:
    """The complete versions under a model directory, oldest first ([] if there is no such directory)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if is_complete(p))


def newest_version(model_dir: Path) -> Path | None:
    versions = complete_versions(model_dir)
    return Path(model_dir) / str(versions[-1]) if versions else None


def next_version(model_dir: Path) -> int:
    """One above every integer directory, complete or not: a number is never reused."""
    model_dir = Path(model_dir)
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1


def resolve_version(path: Path, version: int | None = None, what: str = "model") -> Path:
    """A model directory (newest complete version, or `version`) or one version directory -> a version directory.
    `what` names the flag or setting the path came from, for the message."""
    path = Path(path)
    if (path / GRAPH_FILE).is_file():
        if version is not None and path.name != str(version):
            raise LayoutError(f"{what} {path} is itself version {path.name}, not version {version}")
        return path
    if not path.is_dir():
        raise LayoutError(f"{what} {path}: no such directory (expected exported_models/<name> or one of its "
                          f"versions; `make train` exports one)")
    versions = complete_versions(path)
    if not versions:
        raise LayoutError(f"{what} {path}: holds no complete model version (no <integer>/{GRAPH_FILE}); "
                          f"run `make train` or `python -m training.export` first")
    if version is None:
        return path / str(versions[-1])
    if version not in versions:
        raise LayoutError(f"{what} {path} has no version {version} (it has {', '.join(map(str, versions))})")
    return path / str(version)


def version_number(version_dir: Path) -> int:
    """The integer a version directory is named by (0 for a directory outside the layout)."""
    name = Path(version_dir).name
    return int(name) if name.isdigit() else 0


def remove_abandoned_builds(model_dir: Path) -> None:
    """Sweep the `.build-<pid>-*` directories whose process is gone (a killed build)."""
    for build in Path(model_dir).glob(BUILD_PREFIX + "*"):
        try:
            pid = int(build.name[len(BUILD_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ValueError:  # not one of ours: leave it
            continue
        except ProcessLookupError:
            shutil.rmtree(build, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def publish_version(model_dir: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(directory)` on a fresh hidden directory, then rename it to the next version number.
    Returns the version directory. If `build` fails or the process dies, no version appears."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(model_dir)
    staging = model_dir / f"{BUILD_PREFIX}{os.getpid()}-{time.time_ns()}"
    try:
        build(staging)
        if not (staging / GRAPH_FILE).is_file():
            raise LayoutError(f"the build in {staging} wrote no {GRAPH_FILE}")
        while True:  # another publisher may take the same number between our look and our rename
            version = model_dir / str(next_version(model_dir))
            try:
                os.rename(staging, version)
                return version
            except OSError:
                if not version.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
