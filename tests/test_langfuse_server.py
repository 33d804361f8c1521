"""The Langfuse test server refuses what the real server refuses (tests/langfuse_server.py names
the langfuse/langfuse file of each rule) and stores scores the way the real store does. Every
shape is sent over HTTP, to both score endpoints."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langfuse_server import PUBLIC_KEY, SECRET_KEY, FakeLangfuse

AUTH = {
    "Authorization": "Basic " + base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
}
DAY1 = datetime(2026, 11, 20, 10, tzinfo=UTC)


def score(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "s-1",
        "traceId": "t-1",
        "name": "groundedness",
        "value": 0.5,
        "dataType": "NUMERIC",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


# Each invalid shape of the issue, and what the server says about it.
INVALID = {
    "boolean 0.5": (score(dataType="BOOLEAN", value=0.5), "equal to either 0 or 1"),
    "boolean true": (score(dataType="BOOLEAN", value=True), "equal to either 0 or 1"),
    "categorical number": (score(dataType="CATEGORICAL", value=3), "a string is required"),
    "numeric string": (score(dataType="NUMERIC", value="0.5"), "a number is required"),
    "no subject": (score(traceId=None), "Provide exactly one"),
    "trace and session": (score(sessionId="sess-1"), "Provide exactly one"),
    "observation without trace": (
        score(traceId=None, sessionId="sess-1", observationId="o-1"),
        "ObservationId requires traceId",
    ),
    "session and dataset run": (
        score(traceId=None, sessionId="sess-1", datasetRunId="run-1"),
        "Provide exactly one",
    ),
    "trace and dataset run": (score(datasetRunId="run-1"), "Provide exactly one"),
    "observation alone": (score(traceId=None, observationId="o-1"), "Provide exactly one"),
    "empty name": (score(name=""), "name: a non-empty string"),
    "unknown source": (score(source="HUMAN"), "source: expected one of"),
    "text over 500": (score(dataType="TEXT", value="x" * 501), "1 to 500 characters"),
    "environment langfuse-": (score(environment="langfuse-prod"), "must not start with"),
    "environment uppercase": (score(environment="Production"), "environment: lowercase"),
    "environment over 40": (score(environment="e" * 41), "environment: lowercase"),
    "unknown data type": (score(dataType="PERCENT"), "invalid discriminator"),
}


def post(langfuse: FakeLangfuse, path: str, body: Any) -> httpx.Response:
    return httpx.post(langfuse.url + path, json=body, headers=AUTH, timeout=10)


def ingest(langfuse: FakeLangfuse, *bodies: dict[str, Any], at: datetime = DAY1) -> Any:
    events = [
        {"id": f"e-{i}", "type": "score-create", "timestamp": at.isoformat(), "body": b}
        for i, b in enumerate(bodies)
    ]
    response = post(langfuse, "/api/public/ingestion", {"batch": events})
    assert response.status_code == 207, response.text
    return response.json()


@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_invalid_score_is_refused_by_both_endpoints(langfuse: FakeLangfuse, case: str) -> None:
    body, message = INVALID[case]
    answer = ingest(langfuse, score(id="ok-1", traceId="t-2"), body)
    assert answer["successes"] == [{"id": "e-0", "status": 201}]
    [error] = answer["errors"]
    assert (error["id"], error["status"], error["message"]) == ("e-1", 400, "Invalid request data")
    assert message in error["error"]

    batch = post(langfuse, "/api/public/scores", [score(id="ok-2", traceId="t-3"), body])
    assert batch.status_code == 207
    assert batch.json()["accepted"] == 1 and batch.json()["rejected"] == 1
    assert message in batch.json()["errors"][0]["message"]
    assert set(langfuse.scores) == {"ok-1", "ok-2"}  # the invalid one is nowhere


def test_sources_the_scores_endpoint_keeps_for_langfuse(langfuse: FakeLangfuse) -> None:
    # EVAL is internal: ingestion takes it, POST /api/public/scores does not.
    assert ingest(langfuse, score(source="EVAL"))["errors"] == []
    batch = post(langfuse, "/api/public/scores", [score(id="s-2", source="EVAL")])
    assert batch.status_code == 207 and "source" in batch.json()["errors"][0]["message"]


def test_annotation_needs_a_config_and_ingestion_drops_it_later(langfuse: FakeLangfuse) -> None:
    annotation = score(id="a-1", source="ANNOTATION", dataType="BOOLEAN", value=1)
    # Ingestion answers 201, and its worker drops the score afterwards.
    assert ingest(langfuse, annotation)["successes"] == [{"id": "e-0", "status": 201}]
    assert langfuse.scores == {}
    assert langfuse.dropped == [("a-1", langfuse.dropped[0][1])]
    assert "configId is required" in langfuse.dropped[0][1]
    batch = post(langfuse, "/api/public/scores", [{**annotation, "id": "a-2"}])
    assert (
        batch.status_code == 207 and "configId is required" in batch.json()["errors"][0]["message"]
    )
    # With a config it is stored, under the config's name; a mismatching one is dropped.
    langfuse.configs["cfg-1"] = {"name": "correct", "dataType": "BOOLEAN"}
    ingest(langfuse, {**annotation, "id": "a-3", "configId": "cfg-1"})
    ingest(langfuse, {**annotation, "id": "a-4", "configId": "cfg-1", "dataType": "NUMERIC"})
    assert set(langfuse.scores) == {"a-3"} and langfuse.scores["a-3"]["name"] == "correct"
    assert "Data type mismatch" in langfuse.dropped[-1][1]


def test_the_event_envelope_is_checked(langfuse: FakeLangfuse) -> None:
    events = [
        {"id": "e-0", "type": "score-create", "timestamp": "2026-11-20T10:00:00", "body": score()},
        {"id": "", "type": "score-create", "timestamp": DAY1.isoformat(), "body": score()},
        {"id": "e-2", "type": "score-update", "timestamp": DAY1.isoformat(), "body": score()},
    ]
    response = post(langfuse, "/api/public/ingestion", {"batch": events})
    assert response.status_code == 207 and response.json()["successes"] == []
    assert [e["id"] for e in response.json()["errors"]] == ["e-0", "", "e-2"]
    assert post(langfuse, "/api/public/ingestion", [score()]).status_code == 400  # no "batch"


def test_body_limits(langfuse: FakeLangfuse) -> None:
    # 2.5 MB: over the scores endpoint's 1 MB (Next.js default), under ingestion's 4.5 MB.
    bodies = [score(id=f"s-{i}", comment="c" * 2500) for i in range(1000)]
    assert len(json.dumps(bodies)) > 2_500_000
    response = post(langfuse, "/api/public/scores", bodies)
    assert (response.status_code, response.text) == (413, "Body exceeded 1mb limit")
    assert len(ingest(langfuse, *bodies)["successes"]) == 1000
    huge = [score(id=f"h-{i}", comment="c" * 5000) for i in range(1000)]
    events = [
        {"id": b["id"], "type": "score-create", "timestamp": DAY1.isoformat(), "body": b}
        for b in huge
    ]
    assert post(langfuse, "/api/public/ingestion", {"batch": events}).status_code == 413


def test_a_score_resent_with_a_later_timestamp_on_a_later_day_is_a_second_row(
    langfuse: FakeLangfuse,
) -> None:
    ingest(langfuse, score(value=0.1))
    ingest(langfuse, score(value=0.2), at=DAY1)  # same timestamp: the same row, updated
    ingest(langfuse, score(value=0.3), at=DAY1 + timedelta(hours=2))  # same day: same row
    assert langfuse.duplicates() == {} and langfuse.scores["s-1"]["value"] == 0.3
    ingest(langfuse, score(value=0.4), at=DAY1 + timedelta(days=1))  # a later day: a new row
    assert langfuse.duplicates() == {"s-1": 2}
    # Re-sent with its first timestamp, it finds its row: the timestamp stays the first one.
    ingest(langfuse, score(id="s-2", value=0.1, environment="prod"), at=DAY1)
    ingest(langfuse, score(id="s-2", value=0.9, environment="other"), at=DAY1 - timedelta(days=3))
    assert langfuse.duplicates().get("s-2") is None
    row = langfuse.scores["s-2"]
    assert (row["value"], row["environment"], row["timestamp"]) == (0.9, "prod", DAY1.isoformat())


def test_v3_takes_one_object_on_the_scores_endpoint_and_has_no_observations_v2() -> None:
    fake = FakeLangfuse(version="v3")
    fake.start()
    try:
        refused = post(fake, "/api/public/scores", [score()])
        assert refused.status_code == 400 and refused.json()["message"] == "Invalid request data"
        assert post(fake, "/api/public/scores", score()).json() == {"id": "s-1"}
        missing = httpx.get(fake.url + "/api/public/v2/observations", headers=AUTH)
        assert missing.status_code == 404 and "v4" in missing.json()["message"]
        assert ingest(fake, score(id="s-2"))["errors"] == []
        assert set(fake.scores) == {"s-1", "s-2"}
    finally:
        fake.stop()


def test_wrong_keys_and_paths(langfuse: FakeLangfuse) -> None:
    assert httpx.post(langfuse.url + "/api/public/ingestion", json={"batch": []}).status_code == 401
    assert httpx.get(langfuse.url + "/api/public/ingestion", headers=AUTH).status_code == 405
    assert post(langfuse, "/langfuse/api/public/ingestion", {"batch": []}).status_code == 404


# The ingestion route's 207 body as the real server builds it (aggregateBatchResult in
# packages/shared/src/server/ingestion/processEventBatch.ts of langfuse/langfuse): keys and
# fixed values of each kind of entry. ``error`` of a 400 is zod's message (any text).
REAL_SUCCESS = {"id": str, "status": 201}
REAL_ERRORS = {
    400: {"id": str, "status": 400, "message": "Invalid request data", "error": str},
    500: {"id": str, "status": 500, "error": "Internal Server Error"},
}


def shaped_like(entry: dict[str, Any], real: dict[str, Any]) -> bool:
    if set(entry) != set(real):
        return False
    return all(
        isinstance(entry[k], v) if isinstance(v, type) else entry[k] == v for k, v in real.items()
    )


def test_the_ingestion_207_body_has_the_real_servers_shape(langfuse: FakeLangfuse) -> None:
    langfuse.fail_items = 1  # the first valid event fails on the server's side
    answer = ingest(
        langfuse, score(id="blinked"), score(id="ok-1"), score(id="bad", dataType="BOOLEAN")
    )
    assert set(answer) == {"successes", "errors"}
    assert [s["id"] for s in answer["successes"]] == ["e-1"]
    assert all(shaped_like(s, REAL_SUCCESS) for s in answer["successes"])
    by_status = {e["status"]: e for e in answer["errors"]}
    assert set(by_status) == {400, 500}
    assert by_status[400]["id"] == "e-2" and shaped_like(by_status[400], REAL_ERRORS[400])
    assert by_status[500]["id"] == "e-0" and shaped_like(by_status[500], REAL_ERRORS[500])
    assert set(langfuse.scores) == {"ok-1"}  # a failed event is not stored
    # Sent again, the transient one is taken.
    assert ingest(langfuse, score(id="blinked"))["errors"] == []
    assert set(langfuse.scores) == {"ok-1", "blinked"}


# The subjects the real server takes (applyScoreValidation in packages/shared/src/utils/scores.ts
# of langfuse/langfuse): the ids given, an empty string counting as not given.
SUBJECT_KEYS = ("traceId", "sessionId", "datasetRunId", "observationId")
TAKEN_SUBJECTS = [
    {"traceId"},
    {"traceId", "observationId"},
    {"sessionId"},
    {"datasetRunId"},
]


def test_exactly_one_subject_every_combination_on_both_endpoints(langfuse: FakeLangfuse) -> None:
    # Each of the four ids absent, empty or given: 81 bodies, each sent to both endpoints.
    bodies, taken = [], set()
    for n, values in enumerate(itertools.product((None, "", "x-1"), repeat=4)):
        body = {
            "id": f"c-{n}",
            "name": "goal",
            "value": 1,
            "dataType": "BOOLEAN",
            **{k: v for k, v in zip(SUBJECT_KEYS, values, strict=True) if v is not None},
        }
        bodies.append(body)
        given = {k for k, v in zip(SUBJECT_KEYS, values, strict=True) if v}
        if given in TAKEN_SUBJECTS:
            taken.add(body["id"])
    # trace alone 8 ways (the other three absent or empty), with an observation 4, session 8, run 8
    assert len(taken) == 28
    answer = ingest(langfuse, *bodies)
    accepted = {bodies[int(s["id"].removeprefix("e-"))]["id"] for s in answer["successes"]}
    assert accepted == taken
    assert all("Provide exactly one" in e["error"] for e in answer["errors"])
    langfuse.rows.clear()
    langfuse._keys.clear()
    batch = post(langfuse, "/api/public/scores", bodies)
    assert batch.status_code == 207 and batch.json()["accepted"] == len(taken)
    assert set(langfuse.scores) == taken


def test_a_session_score_is_stored_on_the_session_without_a_trace(langfuse: FakeLangfuse) -> None:
    session = score(id="sess-score", traceId=None, sessionId="chat-7", dataType="BOOLEAN", value=0)
    assert ingest(langfuse, session)["errors"] == []
    ingest(langfuse, {**session, "value": 1}, at=DAY1 + timedelta(hours=1))  # updated in place
    assert langfuse.duplicates() == {}
    stored = langfuse.session_scores("chat-7")
    assert set(stored) == {"sess-score"} and stored["sess-score"]["value"] == 1
    assert "traceId" not in stored["sess-score"]
    # A CORRECTION is for traces: taken by the API, dropped by the worker.
    correction = score(id="fix-1", traceId=None, sessionId="chat-7", dataType="CORRECTION")
    assert ingest(langfuse, {**correction, "value": "better"})["errors"] == []
    assert "fix-1" not in langfuse.scores
    assert langfuse.dropped[-1][0] == "fix-1" and "sessions" in langfuse.dropped[-1][1]
