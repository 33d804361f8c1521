"""`evalfleet review` driven through a pseudo-terminal: real keystrokes, real labels."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import redis
from helpers import fleet_env
from review_fixtures import route_session
from test_review_queue import review_item, seed

from evaluator.models import Verdict
from evaluator.sinks.sql import SQLStore

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and styles


class Terminal:
    """A child process on a pseudo-terminal; keystrokes in, screen text out."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.screen = ""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in _ANSI.sub("", self.screen):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown; screen:\n{self.screen[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the child exited and closed the terminal
                    time.sleep(0.05)

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        code = self.process.wait(timeout=30)
        os.close(self.master)
        return code


def test_label_with_single_keystrokes(
    sqlite_url: str, redis_url: str, redis_client: redis.Redis
) -> None:
    store = SQLStore(sqlite_url)
    items = [review_item(1, priority=20, evaluator="safety"), review_item(2), review_item(3)]
    seed(store, redis_client, items)
    env = {**fleet_env(redis_url, sqlite_url), "COLUMNS": "120", "TERM": "xterm"}
    terminal = Terminal([sys.executable, "-m", "evaluator.cli", "review", "--reviewer", "ana"], env)
    terminal.expect("t-000001")  # the critical safety item first
    terminal.expect("claim 2 is not in the context")
    terminal.send("f")
    terminal.expect("labelled fail")
    terminal.expect("t-000002")
    terminal.send("P")  # pass, with a note
    terminal.expect("note:")
    terminal.send("judge was too strict\n")
    terminal.expect("labelled pass")
    terminal.expect("t-000003")
    terminal.send("x")  # unknown key: the help line again, nothing happens
    terminal.expect("[q]uit")
    terminal.send("q")
    terminal.expect("1 pass, 1 fail, 0 skipped")
    assert terminal.close() == 0

    labels = {label.trace_id: label for label in store.labels()}
    assert labels["t-000001"].verdict is Verdict.FAIL and labels["t-000001"].reviewer == "ana"
    assert labels["t-000002"].note == "judge was too strict"
    assert "t-000003" not in labels
    # Quitting released the third item: someone else gets it at once.
    from evaluator.review.queue import ReviewQueue

    [claimed] = ReviewQueue(redis_client, store).claim("ben")
    assert claimed.item.trace_id == "t-000003"
    store.close()


def test_a_session_item_in_the_terminal_shows_the_conversation_and_the_failing_step(
    sqlite_url: str, redis_url: str, redis_client: redis.Redis
) -> None:
    store = SQLStore(sqlite_url)
    item, _ = route_session(store, redis_client)
    env = {**fleet_env(redis_url, sqlite_url), "COLUMNS": "140", "TERM": "xterm"}
    command = [sys.executable, "-m", "evaluator.cli", "review", "--reviewer", "ana"]
    terminal = Terminal([*command, "--level", "session"], env)
    terminal.expect("session_goal_achieved v1 · session")
    terminal.expect("Conversation (24 messages)")
    terminal.expect("messages not shown")
    terminal.expect("▶ tool (turn 3) · result of call_3")
    terminal.expect("▶ tool · lookup_order · t3:call_3 · 1200 ms · turn 3")
    terminal.expect("error: upstream timeout")
    terminal.send("f")
    terminal.expect("labelled fail")
    terminal.expect("0 pass, 1 fail, 0 skipped")
    assert terminal.close() == 0
    [label] = store.labels("session_goal_achieved")
    assert label.id == item.id and label.trace.trace_id == "session:d-review"
    store.close()
