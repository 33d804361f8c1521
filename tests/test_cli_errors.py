"""Every `evalfleet` command when something is wrong: Redis out of reach, a setting that does not
parse, the database out of reach, a missing or garbled file. Each ends in one line naming the
variable, URL or file:line, no traceback, and the documented exit code (0 ok, 1 runtime failure
or unavailable dependency, 2 usage or configuration error). The real console script runs as a
subprocess with a clean environment; the runs go in parallel (they are mostly start-up). The
invalid-setting case, which fails before any command code runs, goes through the real script for
a few commands and in-process (the same root command) for the rest."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.ops.embedded import free_port
from evaluator.settings import OTHER_VARIABLES, Settings, get_settings, settings_variables
from evaluator.sinks.sql import SQLStore

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "evalfleet"
PASSWORD = "hunter2"  # in every URL given; must never be printed
REDIS_DOWN = (
    "error: cannot reach Redis at redis://:***@127.0.0.1:{redis_port}/0 (Connection refused); "
    "start it or set EVALFLEET_REDIS_URL"
)
INVALID = (
    "error: EVALFLEET_SAMPLER_BATCH_SIZE='abc': Input should be a valid integer (set it to a "
    "whole number, or unset it for the default 500)"
)
TRACE = '{"trace_id": "t1", "input": "hi", "output": "hello there"}'


@dataclass(frozen=True)
class Case:
    """How to run a command, and what it does with Redis out of reach."""

    args: tuple[str, ...] = ()
    # (exit code, text in its output) with Redis unreachable; None: the command is not run so.
    redis_down: tuple[int, str] | None = (1, REDIS_DOWN)
    why_not: str = ""  # when redis_down is None
    long_running: bool = False  # waits out outages: must stay up, without a traceback
    # Opens the database. With the database out of reach, only a few are run (time): every
    # command opens it through cli._open_store; these cover its paths (read-only, writer, both).
    store: bool = False
    reads_settings: bool = True
    env: dict[str, str] = field(default_factory=dict)


OK = (0, "")
ENDPOINT = {"EVALFLEET_JUDGE_BASE_URL": "http://127.0.0.1:{port}/v1"}
# Every command and subcommand; test_every_command_is_in_the_table fails for a missing one.
COMMANDS: dict[str, Case] = {
    "sampler": Case(long_running=True),
    "worker": Case(long_running=True),
    "relay": Case(long_running=True),
    "otlp-receiver": Case(("--port", "{port}"), long_running=True),
    "review-api": Case(("--port", "{port}"), long_running=True),
    "review": Case(("--reviewer", "ana"), store=True),
    # Without Redis it embeds one; the judge endpoint is down too: nothing could be judged.
    "calibrate": Case(
        ("--judge", "groundedness", "--dataset", "golden.jsonl", "--report", "report.json"),
        redis_down=(1, "no example could be judged"),
        env={**ENDPOINT, "EVALFLEET_JUDGE_MAX_ATTEMPTS": "1"},
    ),
    "gate": Case(("--base", "HEAD"), redis_down=(2, "set EVALFLEET_JUDGE_BASE_URL")),
    "replay": Case(("traces.jsonl",)),
    "reeval": Case(("--evaluator", "groundedness", "--since", "1h"), redis_down=OK, store=True),
    "compare": Case(("groundedness@1", "groundedness@2"), redis_down=OK, store=True),
    "stats": Case(store=True),
    "schema": Case(redis_down=OK, reads_settings=False),
    "demo": Case(
        ("--traces", "traces.jsonl"),
        redis_down=None,
        why_not="runs its own Redis (tests/test_demo.py)",
    ),
    "dlq list": Case(),
    "dlq show": Case(("0-1",)),
    "dlq redrive": Case(("--all",)),
    "backfill langfuse": Case(
        ("--since", "1h"),
        env={
            "LANGFUSE_PUBLIC_KEY": "pk",
            "LANGFUSE_SECRET_KEY": "sk",
            "LANGFUSE_HOST": "http://127.0.0.1:{port}",
        },
    ),
    "dataset export": Case(("--judge", "groundedness", "--out", "out.jsonl"), OK, store=True),
    "dataset import": Case(("golden.jsonl", "--judge", "groundedness"), OK, store=True),
    "judges list": Case(redis_down=OK),
    "judges show": Case(("groundedness",), redis_down=OK),
    "judges render": Case(("groundedness", "--trace", "trace.json"), redis_down=OK),
    "judges validate": Case(redis_down=OK),
    "judges lock": Case(redis_down=OK),
    "ledger": Case(("--trace", "t1"), redis_down=(1, "no ledger rows for trace 't1'"), store=True),
    "ledger summary": Case(redis_down=OK, store=True),
    "ledger reap": Case(redis_down=OK, store=True),
    "ledger redrive": Case(redis_down=OK, store=True),
}
DATABASE_DOWN = ("stats", "review", "dataset import")
# Commands whose invalid-setting case runs the real console script (the rest run in-process).
INVALID_BY_SCRIPT = ("sampler", "worker", "stats", "dlq list", "schema")
# A file argument naming nothing: one line naming the file, exit 2.
MISSING_FILE = {
    "demo": ("demo", "--traces", "datasets/x.jsonl"),
    "replay": ("replay", "datasets/x.jsonl"),
    "dataset import": ("dataset", "import", "datasets/x.jsonl", "--judge", "groundedness"),
    "dlq redrive": ("dlq", "redrive", "0-1", "--payload-file", "datasets/x.jsonl"),
    "calibrate": ("calibrate", "--judge", "groundedness", "--dataset", "datasets/x.jsonl"),
    "judges render": ("judges", "render", "groundedness", "--trace", "datasets/x.jsonl"),
}
BAD_PREFIX = b'{"trace_id": "t3", "output": "caf'  # then 0xe1: Latin-1, not UTF-8
BAD_COLUMN = len(BAD_PREFIX) + 1


def command_paths() -> list[str]:
    """Every runnable command of the Typer app, as typed after `evalfleet`."""
    paths: list[str] = []

    def walk(command: Any, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            paths.append(path)
            return
        if path and command.invoke_without_command:
            paths.append(path)  # a group that does something itself (`ledger --trace`)
        for name, sub in subcommands.items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return paths


@dataclass
class Run:
    args: list[str]
    code: int | None
    stdout: str
    stderr: str
    alive_after_s: float = 0.0  # long-running: it was still up after this long

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def errors(self) -> list[str]:
        """stderr without warning lines."""
        return [line for line in self.stderr.splitlines() if not line.startswith("warning:")]

    def describe(self) -> str:
        return f"evalfleet {' '.join(self.args)} -> {self.code}\n{self.output[-3000:]}"


@dataclass
class Workspace:
    dir: Path
    redis_port: int
    env: dict[str, str]

    def format(self, text: str) -> str:
        return text.format(redis_port=self.redis_port, port=free_port(), tmp=self.dir)

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        environment = {**self.env, **{k: self.format(v) for k, v in (env or {}).items()}}
        args = [self.format(a) for a in args]
        done = subprocess.run(
            [str(SCRIPT), *args],
            env=environment,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(args, done.returncode, done.stdout, done.stderr)

    def invoke(self, args: list[str], env: dict[str, str] | None = None) -> Run:
        """The command in this process (not thread-safe: the environment is the process's)."""
        environment: dict[str, str | None] = {
            k: self.format(v) for k, v in {**self.env, **(env or {})}.items()
        }
        for name in os.environ:  # as clean as the subprocesses' environment, for our variables
            if name.startswith(("EVALFLEET_", "LANGFUSE_", "OPENAI_")):
                environment.setdefault(name, None)
        args = [self.format(a) for a in args]
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, args, env=environment)
        finally:
            get_settings.cache_clear()
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += f"\nTraceback: {result.exception!r}"  # escaped the root command
        return Run(args, result.exit_code, result.stdout, stderr)

    def outage(self, args: list[str], env: dict[str, str], wait_for: str) -> Run:
        """Start a long-running command, let it meet the outage for at least 3 s (until it logs
        ``wait_for``, at most 10 s), then SIGTERM it."""
        environment = {**self.env, **{k: self.format(v) for k, v in env.items()}}
        args = [self.format(a) for a in args]
        logs = self.dir / f"outage-{args[0]}.log"
        with logs.open("w") as log:
            process = subprocess.Popen(
                [str(SCRIPT), *args],
                env=environment,
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started = time.monotonic()
            alive = 0.0
            try:
                while time.monotonic() - started < 10:
                    time.sleep(0.5)
                    if process.poll() is not None:
                        break
                    alive = time.monotonic() - started
                    if alive >= 3 and wait_for in logs.read_text(errors="replace"):
                        break
                process.send_signal(signal.SIGTERM)
                code = process.wait(20)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
                    process.wait()
        return Run(args, code, logs.read_text(errors="replace"), "", alive)


def _clean_env(directory: Path, redis_port: int) -> dict[str, str]:
    """No EVALFLEET_*, LANGFUSE_* or OPENAI_* of the developer's; Redis at a port nothing
    listens on; the database, judges and golden sets in the workspace."""
    return {
        "PATH": f"{SCRIPT.parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(directory),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
        "EVALFLEET_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0",
        "EVALFLEET_DATABASE_URL": f"sqlite:///{directory}/fleet.db",
        "EVALFLEET_JUDGES_DIR": str(directory / "judges"),
        "EVALFLEET_GOLDEN_DIR": str(directory / "golden"),
        "EVALFLEET_HEALTH_PROBE_INTERVAL_S": "1",
        "EVALFLEET_OUTAGE_BACKOFF_MAX_S": "1",
    }


def _workspace(directory: Path) -> Workspace:
    shutil.copytree(ROOT / "judges", directory / "judges")
    (directory / "golden").mkdir()
    (directory / "traces.jsonl").write_text(TRACE + "\n")
    (directory / "trace.json").write_text(TRACE + "\n")
    golden = (ROOT / "datasets" / "golden" / "groundedness.jsonl").read_text().splitlines()[0]
    (directory / "golden.jsonl").write_text(golden + "\n")
    (directory / "bad.jsonl").write_bytes(TRACE.encode() + b"\n\n" + BAD_PREFIX + b'\xe9"}\n')
    SQLStore(f"sqlite:///{directory}/fleet.db").close()  # the fleet ran: the database exists
    redis_port = free_port()
    return Workspace(directory, redis_port, _clean_env(directory, redis_port))


Job = Callable[[], Run]


def _jobs(ws: Workspace) -> dict[tuple[str, str], Job]:
    """Every run of this module, by (scenario, command)."""

    def run(args: list[str], env: dict[str, str] | None = None) -> Job:
        return lambda: ws.run(args, env)

    jobs: dict[tuple[str, str], Job] = {}
    for path, case in COMMANDS.items():
        args = [*path.split(), *case.args]
        invalid = {**case.env, "EVALFLEET_SAMPLER_BATCH_SIZE": "abc"}
        if path in INVALID_BY_SCRIPT:
            jobs["invalid", path] = run(args, invalid)
        else:
            jobs["invalid in-process", path] = lambda a=args, e=invalid: ws.invoke(a, e)  # type: ignore[misc]
        if case.long_running:
            wait_for = "relay started" if path == "relay" else f"127.0.0.1:{ws.redis_port}"
            jobs["outage", path] = lambda a=args, e=case.env, w=wait_for: ws.outage(a, e, w)  # type: ignore[misc]
        elif case.redis_down is not None:
            jobs["redis", path] = run(args, case.env)
        if case.store and path in DATABASE_DOWN:
            url = f"postgresql://evalfleet:{PASSWORD}@127.0.0.1:{free_port()}/evalfleet"
            jobs["database", path] = run(args, {**case.env, "EVALFLEET_DATABASE_URL": url})
    for path, args in MISSING_FILE.items():
        jobs["missing", path] = run(list(args))
    for flags in (["--format", "otel"], ["--validate"], []):
        jobs["garbage", " ".join(["replay", *flags])] = run(["replay", *flags, "bad.jsonl"])
    jobs["garbage", "demo"] = run(["demo", "--traces", "bad.jsonl"])
    misspelled = {"EVALFLEET_SAMPLER_BATCHSIZE": "3", "EVALFLEET_ZZZ": "1"}
    jobs["warning", "schema"] = run(
        ["schema"], {**misspelled, **dict.fromkeys(OTHER_VARIABLES, "")}
    )
    no_db = {"EVALFLEET_DATABASE_URL": "sqlite:///evalfleet.db"}
    jobs["no database", "stats"] = run(["stats"], no_db)
    export = ["dataset", "export", "--judge", "groundedness", "--out", "o.jsonl"]
    jobs["no database", "dataset export"] = run(export, no_db)
    nonsense = {"EVALFLEET_DATABASE_URL": "nonsense"}
    jobs["bad url", "stats"] = run(["stats"], nonsense)
    jobs["bad url", "dataset import"] = run(
        ["dataset", "import", "golden.jsonl", "--judge", "groundedness"], nonsense
    )
    jobs["bad url", "dlq list"] = run(["dlq", "list"], {"EVALFLEET_REDIS_URL": "127.0.0.1:6379"})
    jobs["debug", "dlq list"] = run(["--debug", "dlq", "list"])
    return jobs


@dataclass
class Suite:
    workspace: Workspace
    runs: dict[tuple[str, str], Run]

    def check(self, scenario: str, check: Callable[[str, Run], list[str]]) -> int:
        """Apply ``check`` to the scenario's runs; fail with every problem found. Returns how
        many runs there were."""
        failures = []
        runs = [(command, run) for (name, command), run in self.runs.items() if name == scenario]
        for command, run in runs:
            problems = check(command, run)
            if problems:
                failures.append(f"[{command}] {'; '.join(problems)}\n{run.describe()}")
        assert not failures, "\n\n".join(failures)
        return len(runs)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    ws = _workspace(tmp_path_factory.mktemp("cli-errors"))
    jobs = _jobs(ws)
    # The long-running ones first: they mostly wait, and the others fill the gaps.
    order = sorted(jobs, key=lambda key: key[0] != "outage")
    inprocess = [key for key in order if key[0].endswith("in-process")]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {key: pool.submit(jobs[key]) for key in order if key not in inprocess}
        runs = {key: future.result() for key, future in futures.items()}
    for scenario, command in inprocess:  # one at a time: they share os.environ
        runs[scenario.removesuffix(" in-process"), command] = jobs[scenario, command]()
    return Suite(ws, runs)


def _one_line(run: Run, expected: str) -> list[str]:
    """Problems with a run that must end in exactly ``expected`` as its one error line."""
    problems = []
    if "Traceback" in run.output:
        problems.append("a traceback")
    if PASSWORD in run.output:
        problems.append("the password")
    if run.errors != [expected]:
        problems.append(f"stderr is not the one line {expected!r}")
    return problems


def _code(run: Run, expected: int) -> list[str]:
    return [] if run.code == expected else [f"exit code {run.code}, not {expected}"]


def test_every_command_is_in_the_table() -> None:
    paths = command_paths()
    assert len(paths) > 25
    assert sorted(set(paths) - set(COMMANDS)) == [], "add these commands to COMMANDS"
    assert sorted(set(COMMANDS) - set(paths)) == [], "stale entries in COMMANDS"


def test_redis_unreachable(suite: Suite) -> None:
    port = suite.workspace.redis_port

    def check(command: str, run: Run) -> list[str]:
        assert COMMANDS[command].redis_down is not None
        code, text = COMMANDS[command].redis_down  # type: ignore[misc]
        if text == REDIS_DOWN:
            return _one_line(run, text.format(redis_port=port)) + _code(run, code)
        problems = ["a traceback"] if "Traceback" in run.output else []
        if text not in " ".join(run.output.split()):
            problems.append(f"no {text!r}")
        return problems + _code(run, code)

    assert suite.check("redis", check) > 15
    for path, case in COMMANDS.items():
        assert case.long_running or case.redis_down is not None or case.why_not, path


def test_long_running_commands_wait_out_an_outage(suite: Suite) -> None:
    port = suite.workspace.redis_port

    def check(command: str, run: Run) -> list[str]:
        problems = ["a traceback"] if "Traceback" in run.output else []
        if run.alive_after_s < 3:
            problems.append(f"exited after {run.alive_after_s:.1f} s of the outage")
        if PASSWORD in run.output:
            problems.append("the password")
        if command != "relay" and f"127.0.0.1:{port}" not in run.output:
            problems.append("no line about the outage")
        if run.code not in (0, -signal.SIGTERM):
            problems.append(f"exit code {run.code} after SIGTERM")
        return problems

    long_running = [path for path, case in COMMANDS.items() if case.long_running]
    assert suite.check("outage", check) == len(long_running) == 5


def test_an_invalid_setting_names_its_variable(suite: Suite) -> None:
    def check(command: str, run: Run) -> list[str]:
        if not COMMANDS[command].reads_settings:
            return [] if run.code == 0 and "Traceback" not in run.output else ["failed"]
        return _one_line(run, INVALID) + _code(run, 2)

    assert suite.check("invalid", check) == len(COMMANDS)


def test_database_unreachable(suite: Suite) -> None:
    pattern = re.compile(
        r"error: cannot use the database at postgresql://evalfleet:\*\*\*@127\.0\.0\.1:\d+/"
        r"evalfleet \(.*Connection refused\); start it or set EVALFLEET_DATABASE_URL"
    )

    def check(command: str, run: Run) -> list[str]:
        problems = ["a traceback"] if "Traceback" in run.output else []
        if PASSWORD in run.output:
            problems.append("the password")
        if len(run.errors) != 1 or not pattern.fullmatch(run.errors[0]):
            problems.append("not one line naming the database and EVALFLEET_DATABASE_URL")
        return problems + _code(run, 1)

    assert suite.check("database", check) == len(DATABASE_DOWN)
    assert all(COMMANDS[path].store for path in DATABASE_DOWN)


def test_invalid_urls_are_configuration_errors(suite: Suite) -> None:
    def check(command: str, run: Run) -> list[str]:
        variable = "EVALFLEET_DATABASE_URL='nonsense'"
        if command == "dlq list":
            variable = "EVALFLEET_REDIS_URL='127.0.0.1:6379'"
        problems = ["a traceback"] if "Traceback" in run.output else []
        if len(run.errors) != 1 or not run.errors[0].startswith(f"error: {variable} is not a"):
            problems.append(f"not one line naming {variable}")
        return problems + _code(run, 2)

    assert suite.check("bad url", check) == 3


def test_a_missing_file_is_named(suite: Suite) -> None:
    def check(command: str, run: Run) -> list[str]:
        return _one_line(run, "error: datasets/x.jsonl: no such file") + _code(run, 2)

    assert suite.check("missing", check) == len(MISSING_FILE)


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(suite: Suite) -> None:
    expected = f"error: bad.jsonl:3: not valid UTF-8 (byte 0xe9 at column {BAD_COLUMN})"

    def check(command: str, run: Run) -> list[str]:
        return _one_line(run, expected) + _code(run, 2)

    assert suite.check("garbage", check) == 4


def test_a_misspelled_variable_is_warned_about(suite: Suite) -> None:
    run = suite.runs["warning", "schema"]
    assert run.code == 0, run.describe()
    # ... and none about the variables read outside Settings (OTHER_VARIABLES, all set here).
    assert run.stderr.splitlines() == [
        "warning: EVALFLEET_SAMPLER_BATCHSIZE is not a setting (did you mean "
        "EVALFLEET_SAMPLER_BATCH_SIZE?)",
        "warning: EVALFLEET_ZZZ is not a setting; nothing reads it",
    ], run.describe()


def test_read_only_commands_do_not_create_a_database(suite: Suite) -> None:
    for command in ("stats", "dataset export"):
        run = suite.runs["no database", command]
        assert run.errors == [
            "error: no database at ./evalfleet.db (run the fleet first or set "
            "EVALFLEET_DATABASE_URL)"
        ], run.describe()
        assert run.code == 1, run.describe()
    assert not (suite.workspace.dir / "evalfleet.db").exists()


def test_debug_shows_the_traceback(suite: Suite) -> None:
    run = suite.runs["debug", "dlq list"]
    assert run.code == 1 and "Traceback" in run.output, run.describe()
    assert "ConnectionError" in run.output, run.describe()


def test_every_variable_read_anywhere_is_known() -> None:
    """OTHER_VARIABLES is the one list of EVALFLEET_* names that are not Settings fields: every
    settings class's names (LangfuseSettings has some) and every name the repository's code,
    tests and deployment files use must be in it or in Settings, or they would be warned about."""
    from pydantic_settings import BaseSettings

    import evaluator.sinks.langfuse  # noqa: F401 - its LangfuseSettings

    known = {*settings_variables(Settings), *OTHER_VARIABLES}
    classes = [c for c in BaseSettings.__subclasses__() if c.__module__.startswith("evaluator")]
    assert len(classes) >= 2
    for model in classes:
        ours = {v for v in settings_variables(model) if v.startswith("EVALFLEET_")}
        assert ours <= known, f"{model.__name__}: add {sorted(ours - known)} to OTHER_VARIABLES"
    used: dict[str, str] = {}
    places = ["evaluator", "tests", "bench", "deploy", "Procfile", "docker-compose.yml"]
    for place in places:
        path = ROOT / place
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if file.suffix in (".pyc", ".png", ".db") or "__pycache__" in file.parts:
                continue
            if file.name == Path(__file__).name:
                continue  # its misspellings are on purpose
            text = file.read_text(errors="ignore")
            for name in re.findall(r"EVALFLEET_[A-Z0-9_]*[A-Z0-9]", text):
                used.setdefault(name, str(file.relative_to(ROOT)))
    # A prefix test (startswith("EVALFLEET_JUDGE")) names no variable of its own.
    unknown = {n: f for n, f in used.items() if n not in known and not any(
        k.startswith(n + "_") for k in known
    )}  # fmt: skip
    assert not unknown, f"EVALFLEET_* names nothing reads (add to OTHER_VARIABLES?): {unknown}"


# -- in-process: the messages themselves -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"EVALFLEET_JUDGE_SAMPLE_RATE": "1.5"},
            "error: EVALFLEET_JUDGE_SAMPLE_RATE='1.5': Input should be less than or equal to 1 "
            "(set it to a number <= 1, or unset it for the default 0.1)",
        ),
        (
            {"EVALFLEET_LOG_FORMAT": "xml"},
            "error: EVALFLEET_LOG_FORMAT='xml': Input should be 'text' or 'json' (set it to one "
            "of 'text' or 'json', or unset it for the default text)",
        ),
        (
            {"evalfleet_metrics_port": "x"},  # read case-insensitively: named as it was set
            "error: evalfleet_metrics_port='x': Input should be a valid integer (set it to a "
            "whole number, or unset it)",
        ),
        (
            {"EVALFLEET_SAMPLE_RATE_OVERRIDES": "{bad"},
            "error: EVALFLEET_SAMPLE_RATE_OVERRIDES='{bad': not valid JSON (Expecting property "
            "name enclosed in double quotes at column 2) (set it to a JSON object, or unset it "
            "for the default {})",
        ),
        (
            {"EVALFLEET_SAMPLE_RATE_OVERRIDES": '{"tenant:a": 2}'},
            "error: EVALFLEET_SAMPLE_RATE_OVERRIDES='{\"tenant:a\": 2}': sample rate for "
            "'tenant:a' must be within [0, 1], got 2.0 (unset it for the default {})",
        ),
        (
            {"EVALFLEET_REVIEWER_TOKENS": '{"tok-secret": {"tenants": []}}'},
            "error: EVALFLEET_REVIEWER_TOKENS (value hidden): Field required at <key>.reviewer "
            "(unset it)",
        ),
        (
            {"EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES": "abc"},
            "error: EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES='abc': Input should be a valid integer "
            "(set it to a whole number, or unset it for the default 1000000)",
        ),
        (
            {"LANGFUSE_TIMEOUT": "0"},
            "error: LANGFUSE_TIMEOUT='0': Input should be greater than 0 (set it to a number > "
            "0, or unset it for the default 20.0)",
        ),
        (
            {"LANGFUSE_BASE_URL": "x", "EVALFLEET_LANGFUSE_SCORE_CONFIGS": "[1"},
            "error: EVALFLEET_LANGFUSE_SCORE_CONFIGS='[1': not valid JSON (Expecting ',' "
            "delimiter at column 3) (set it to a JSON object, or unset it for the default {})",
        ),
    ],
)
def test_a_setting_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    from evaluator.ops.errors import describe
    from evaluator.sinks.langfuse import LangfuseSettings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    model = LangfuseSettings if any("LANGFUSE" in name for name in env) else Settings
    with pytest.raises(Exception) as raised:
        model()
    failure = describe(raised.value)
    assert failure is not None and failure.code == 2
    assert failure.message == expected


def test_redis_errors_name_the_url_they_concern(monkeypatch: pytest.MonkeyPatch) -> None:
    import kombu.exceptions
    import redis

    from evaluator.ops.errors import describe
    from evaluator.settings import get_settings

    monkeypatch.setenv("EVALFLEET_REDIS_URL", "redis://:pw@10.0.0.1:6379/0")
    monkeypatch.setenv("EVALFLEET_BROKER_URL", "redis://broker:6380/1")
    get_settings.cache_clear()
    refused = redis.ConnectionError("Error 111 connecting to broker:6380. Connection refused.")
    try:
        raise kombu.exceptions.OperationalError(str(refused)) from refused  # as Celery does
    except kombu.exceptions.OperationalError as exc:
        failure = describe(exc)
    assert failure is not None and failure.code == 1
    assert failure.message == (
        "error: cannot reach Redis at redis://broker:6380/1 (Connection refused); start it or "
        "set EVALFLEET_BROKER_URL"
    )
    timeout = describe(redis.TimeoutError("Timeout connecting to server"))
    assert timeout is not None and timeout.message == (
        "error: cannot reach Redis at redis://:***@10.0.0.1:6379/0 (timed out); start it or set "
        "EVALFLEET_REDIS_URL"
    )
    denied = describe(redis.AuthenticationError("invalid username-password pair"))
    assert denied is not None and denied.code == 2
    assert "EVALFLEET_REDIS_URL" in denied.message and "pw" not in denied.message
    assert describe(ValueError("something else")) is None  # not known: a bug, a traceback


def test_passwords_are_masked() -> None:
    from evaluator.ops.errors import mask_url

    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    assert mask_url("postgresql://u@h/db?password=x&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert mask_url("sqlite:///evalfleet.db") == "sqlite:///evalfleet.db"
