"""The container images (docker/*.Dockerfile, .dockerignore), checked without a Docker engine: what enters the
build context, what each image copies and runs, and that both agree with the code and the manifests. checkov's
Dockerfile policies run in tests/k8s/test_k8s_policy.py."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gateway": ROOT / "docker/gateway.Dockerfile", "train": ROOT / "docker/train.Dockerfile"}
# The repository's top-level Python packages that code in an image may import (benchmarks are not shipped).
PACKAGES = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"benchmarks"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


# A stand-in for Docker's .dockerignore matching (moby's patternmatcher), enough for the patterns used here:
# `*` and `?` stay within one path segment, `**` spans any number, a leading `!` re-includes, the last matching
# pattern decides, and a pattern that matches a directory matches everything below it.
def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((exclude, re.compile(regex + r"\Z")))
    return patterns


def in_context(path: str, patterns) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


def test_dockerignore_stand_in_follows_dockers_rules():
    patterns = [(True, re.compile(r"[^/]*\Z")), (False, re.compile(r"keep\Z")), (True, re.compile(r"(?:.*/)?x\Z"))]
    assert not in_context("other/file", patterns)
    assert in_context("keep/file", patterns)
    assert not in_context("keep/x/file", patterns)


def test_build_context_holds_the_code_and_nothing_else():
    patterns = ignore_patterns()
    for path in ["data/tinyshakespeare.txt", "runs/charlm/backup.npz", "exported_models/charlm/1/saved_model.pb",
                 ".venv/bin/python", ".venv-k8s/bin/kubectl", ".venv-torch/bin/python", ".git/HEAD",
                 "reports/charlm/report.html", "serving/__pycache__/app.cpython-311.pyc", "tests/conftest.py",
                 "k8s/base/kustomization.yaml", "best.weights.h5"]:
        assert not in_context(path, patterns), path
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    included = {p for p in listed if in_context(p, patterns)}
    assert included and all(p == "requirements.txt" or p.split("/")[0] in PACKAGES for p in included), included
    for image, dockerfile in DOCKERFILES.items():
        for op, args in instructions(dockerfile):
            if op == "COPY" and "--from=" not in args:
                source = args.split()[0].rstrip("/")
                assert any(p == source or p.startswith(source + "/") for p in included), f"{image}: COPY {source}"


def test_each_image_copies_the_code_it_imports():
    copied = {image: {args.split()[0].rstrip("/") for op, args in final_stage(path) if op == "COPY"
                      and "--from=" not in args} for image, path in DOCKERFILES.items()}
    for image, entry in (("gateway", "serving"), ("train", "training")):
        needed, todo = set(), [entry]
        while todo:  # packages the entry package imports, transitively
            package = todo.pop()
            needed.add(package)
            for source in (ROOT / package).rglob("*.py"):
                for imported in re.findall(r"^\s*(?:from|import)\s+(\w+)", source.read_text(), re.M):
                    if imported in PACKAGES and imported not in needed:
                        todo.append(imported)
        assert needed <= copied[image], f"{image} imports {needed - copied[image]} but does not copy it"


def test_images_run_as_the_manifests_user_without_build_tools():
    manifests_uid = set(re.findall(r"runAsUser: (\d+)", "".join(
        p.read_text() for p in (ROOT / "k8s").rglob("*.yaml"))))
    assert len(manifests_uid) == 1
    for image, path in DOCKERFILES.items():
        steps = instructions(path)
        bases = [args.split()[0] for op, args in steps if op == "FROM"]
        assert len(bases) == 2 and len(set(bases)) == 1, f"{image}: a build stage and a final stage, one base image"
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[0]), bases[0]
        final = final_stage(path)
        users = [args for op, args in final if op == "USER"]
        uid = next(iter(manifests_uid))
        assert users and users[-1] == f"{uid}:{uid}", users
        runs = " ".join(args for op, args in final if op == "RUN")
        assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs), f"{image}: {runs}"
        assert any(op == "COPY" and "--from=build" in args for op, args in final)


def test_gateway_image_runs_gunicorn_as_make_serve_does_with_a_healthcheck():
    final = dict((op, args) for op, args in final_stage(DOCKERFILES["gateway"]))
    makefile = (ROOT / "Makefile").read_text()
    app = re.search(r"gunicorn -c serving/gunicorn\.conf\.py '([^']+)'", makefile)[1]
    assert final["CMD"] == f'["gunicorn", "-c", "serving/gunicorn.conf.py", "{app}"]'
    assert "/healthz" in final["HEALTHCHECK"] and "PORT" in final["HEALTHCHECK"]
    port = re.search(r"\bPORT=(\d+)", final["ENV"])[1]
    assert final["EXPOSE"] == port
    deployment = (ROOT / "k8s/base/gateway/deployment.yaml").read_text()
    assert re.search(rf"containerPort: {port}\b", deployment)


def test_training_image_runs_training():
    final = dict((op, args) for op, args in final_stage(DOCKERFILES["train"]))
    assert final["ENTRYPOINT"] == '["python", "-m", "training.train"]'
    assert "PYTHONPATH=/app" in final["ENV"] and final["WORKDIR"] == "/app"


def test_make_images_builds_both_dockerfiles_from_the_repository_root():
    recipe = re.search(r"^images:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)[1]
    for image, path in DOCKERFILES.items():
        assert re.search(rf"-f {path.relative_to(ROOT)} -t \$\(IMAGE_REGISTRY\)/{image}:\$\(IMAGE_TAG\) \.$",
                         recipe, re.M), image
