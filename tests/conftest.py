"""Real services for tests: Redis (local, or a throwaway server), SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy
from helpers import Fleet
from langfuse_server import FakeLangfuse
from openai_server import OpenAIServer

from evaluator.ops.embedded import EmbeddedRedis, redis_answers
from evaluator.settings import Settings, get_settings
from evaluator.sinks.sql import SQLStore

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A non-daemon thread a test left running (a publisher retrying against a Redis the test
    shut down, say) keeps the interpreter from exiting after the summary, and CI then waits for
    its time limit. After the summary: name the thread, print where it is, exit with a failure."""
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread()]
    lingering = [t for t in lingering if not t.daemon and (t.join(5.0) or t.is_alive())]
    if not lingering:
        return
    frames = sys._current_frames()
    for thread in lingering:
        stack = "".join(traceback.format_stack(frames.get(thread.ident or 0)))  # type: ignore[arg-type]
        sys.stderr.write(f"\nthread {thread.name!r} outlived the tests:\n{stack}")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(_exit_status[-1] if _exit_status and _exit_status[-1] else 1)


TEST_REDIS_DB = 13  # keeps a developer's db 0 untouched when the local server is used
POSTGRES_URL = os.environ.get(
    "EVALFLEET_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("EVALFLEET_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    local = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    if redis_answers(local, timeout_s=0.5):
        yield local
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _postgres_available() -> str | None:
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_URL}: {type(exc).__name__}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL (skipped, with the reason, if absent)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/evalfleet.db"
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    from sqlmodel import SQLModel

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    yield POSTGRES_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/evalfleet.db"


@pytest.fixture
def store(database_url: str) -> Iterator[SQLStore]:
    sql = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    yield sql
    sql.close()


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # never reach a real provider
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Fleet]]:
    fleets: list[Fleet] = []

    def make(env: dict[str, str]) -> Fleet:
        fleet = Fleet(env, tmp_path)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        for process in fleet.processes:
            if process.poll() is None:
                Fleet.kill(process, signal.SIGKILL)


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    """The Langfuse API test server (tests/langfuse_server.py), validating like the real one."""
    fake = FakeLangfuse()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    """The OpenAI-protocol test server (tests/openai_server.py) on a free port."""
    with OpenAIServer() as running:
        yield running
