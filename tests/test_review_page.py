"""The reviewers' web page end to end in headless Chromium: sign in, claim, label, next."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from helpers import wait_for
from review_fixtures import FAILED_TURN, HOSTILE_RESULT, TURNS, route_session
from test_review_queue import review_item, seed

from evaluator.ops.embedded import free_port
from evaluator.review.api import create_app
from evaluator.review.queue import ReviewQueue
from evaluator.settings import ReviewerAccess, Settings
from evaluator.sinks.sql import SQLStore

ARTIFACTS = Path(
    os.environ.get("EVALFLEET_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs chromium and chromedriver (Debian packages chromium, chromium-driver)",
)


@pytest.fixture
def server(sqlite_url: str, redis_client: redis.Redis) -> Iterator[tuple[str, SQLStore]]:
    store = SQLStore(sqlite_url)
    adversarial = review_item(2, priority=10)
    adversarial.trace.output = "<script>document.title='owned'</script> Reset it under Settings."
    seed(store, redis_client, [review_item(1, priority=20, evaluator="safety"), adversarial])
    yield from serving(store, redis_client)


@pytest.fixture
def session_server(sqlite_url: str, redis_client: redis.Redis) -> Iterator[tuple[str, SQLStore]]:
    """A turn item, and a session item whose failing tool call returned script and markup."""
    store = SQLStore(sqlite_url)
    seed(store, redis_client, [review_item(1, priority=20, evaluator="safety")])
    route_session(store, redis_client)
    yield from serving(store, redis_client)


def serving(store: SQLStore, redis_client: redis.Redis) -> Iterator[tuple[str, SQLStore]]:
    settings = Settings(
        reviewer_tokens={"tok-ana": ReviewerAccess(reviewer="ana", tenants=["acme"])}
    )
    app = create_app(ReviewQueue(redis_client, store, lease_s=60), settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_for(lambda: web.started, 10, "review server started")
    yield f"http://127.0.0.1:{port}", store
    web.should_exit = True
    thread.join(10)
    store.close()


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,1400",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def submit(browser: Any, element_id: str) -> None:
    """Click a submit button and wait until the browser has loaded the page that follows."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()

    def left(_: Any) -> bool:
        # The old page is gone once its element cannot be asked about. Chromium answers that
        # with StaleElementReference, or mid-navigation with "Node with given id does not belong
        # to the document" (an unknown error): both mean it left.
        try:
            page.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(browser, 10).until(left)
    WebDriverWait(browser, 10).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete"
    )


def test_claim_label_next_in_chromium(server: tuple[str, SQLStore], browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    url, store = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get(f"{url}/review")
    assert "valid reviewer token" in browser.page_source  # 401 before signing in
    browser.get(f"{url}/review/login")
    browser.find_element(By.ID, "token").send_keys("tok-ana")
    submit(browser, "sign-in")
    assert browser.find_element(By.ID, "reviewer").text == "ana"
    assert "safety" in browser.find_element(By.ID, "queues").text

    submit(browser, "claim-next")  # the critical safety item comes first
    assert browser.find_element(By.ID, "trace-id").text == "t-000001"
    assert "claim 2 is not in the context" in browser.find_element(By.ID, "reasons").text
    assert "safety" in browser.find_element(By.ID, "scores").text
    browser.find_element(By.ID, "verdict-fail").click()
    browser.find_element(By.ID, "note").send_keys("unsafe advice")
    submit(browser, "submit-label")

    # Next item at once; its adversarial answer is shown as text, never run.
    assert browser.find_element(By.ID, "trace-id").text == "t-000002"
    assert "<script>" in browser.find_element(By.ID, "output").text
    assert browser.title == "Evalfleet review"
    browser.save_screenshot(str(ARTIFACTS / "review-item.png"))
    browser.find_element(By.ID, "verdict-pass").click()
    submit(browser, "submit-label")
    assert "Nothing left to review" in browser.find_element(By.ID, "empty").text
    browser.save_screenshot(str(ARTIFACTS / "review-done.png"))

    labels = {label.trace_id: label for label in store.labels()}
    assert labels["t-000001"].verdict.value == "fail" and labels["t-000001"].note == "unsafe advice"
    assert labels["t-000002"].verdict.value == "pass"
    assert {label.reviewer for label in labels.values()} == {"ana"}
    assert (ARTIFACTS / "review-item.png").stat().st_size > 10_000


def sign_in(browser: Any, url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/review/login")
    browser.find_element(By.ID, "token").send_keys("tok-ana")
    submit(browser, "sign-in")


def test_a_session_item_shows_the_conversation_and_the_failing_step_in_chromium(
    session_server: tuple[str, SQLStore], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select

    assert isinstance(browser, WebDriver)
    url, store = session_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sign_in(browser, url)
    assert "session" in browser.find_element(By.ID, "queues").text
    # The level filter claims the session item, though the turn item is more urgent.
    Select(browser.find_element(By.ID, "level-filter")).select_by_value("session")
    submit(browser, "claim-next")
    assert browser.find_element(By.ID, "level").text == "session"
    assert browser.find_element(By.ID, "session-id").text == "session chat-42"
    assert "turn 3" in browser.find_element(By.ID, "focus-turns").text

    # The failing step: highlighted, visibly (a coloured outline), indented under its agent.
    step = browser.find_element(
        By.CSS_SELECTOR, f'[data-step-id="t{FAILED_TURN}:call_{FAILED_TURN}"]'
    )
    assert "highlight" in (step.get_attribute("class") or "").split()
    assert step.value_of_css_property("outline-style") == "solid"
    assert step.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    assert step.get_attribute("data-depth") == "1"
    parent = browser.find_element(By.CSS_SELECTOR, f'[data-step-id="t{FAILED_TURN}:run"]')
    assert step.location["x"] > parent.location["x"]
    assert "upstream timeout" in step.text and "attempt" not in step.text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".step.highlight")) == 1
    # Its result, script and markup, is shown as text; nothing of it ran.
    assert HOSTILE_RESULT in step.find_element(By.CLASS_NAME, "result").text
    assert browser.title == "Evalfleet review"
    assert not browser.find_elements(By.CSS_SELECTOR, "#trajectory script, #conversation script")
    assert not browser.find_elements(By.CSS_SELECTOR, "#trajectory img, #conversation img")
    tool_message = browser.find_element(By.ID, "message-10")
    assert "highlight" in (tool_message.get_attribute("class") or "")
    assert HOSTILE_RESULT in tool_message.text and "result of call_3" in tool_message.text

    # The whole conversation, role-labelled; its long middle folded until expanded.
    messages = browser.find_elements(By.CSS_SELECTOR, "li.message")
    assert len(messages) == TURNS * 4
    assert [m.find_element(By.CLASS_NAME, "role").get_attribute("textContent")
            for m in messages[:4]] == ["user", "assistant", "tool", "assistant"]  # fmt: skip
    folded = browser.find_element(By.ID, "message-14")  # a turn-4 tool result in the middle
    assert not folded.is_displayed()
    assert "lookup_order" in browser.find_element(By.ID, "message-1").text  # a tool call
    browser.save_screenshot(str(ARTIFACTS / "review-session.png"))
    browser.find_element(By.ID, "expand-all").click()
    assert folded.is_displayed() and "A-4" in folded.text

    browser.find_element(By.ID, "verdict-fail").click()
    submit(browser, "submit-label")
    [label] = store.labels("session_goal_achieved")
    assert label.trace.trace_id == "session:d-review" and label.reviewer == "ana"
    assert browser.title == "Evalfleet review"
    # "Label and next" kept to sessions: the turn item waiting in the queue is not served.
    assert "Nothing left to review" in browser.find_element(By.ID, "empty").text
    assert store.labels("safety") == []
