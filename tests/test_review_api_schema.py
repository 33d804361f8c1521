"""Schemathesis against the review API's own OpenAPI document, in-process (ASGI), bounded.

Every operation in the document is called with generated valid and invalid input and a valid
token, against real Redis with seeded review items of every level, a session item and an
agent run's trajectory item among them (generated item ids are mixed with the seeded ones so
claim, read, label, release, skip and renew reach real items). The checks:
no 5xx, every status code and response body as documented, invalid input refused. Bounded for
CI: ``MAX_EXAMPLES`` cases per generation mode (about 15 s in all on a slow machine; 3,000
per mode found nothing more).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from review_fixtures import (
    agent_run,
    route_session,
    session_scores,
    support_session,
    trajectory_item,
)
from schemathesis.generation.modes import GenerationMode
from test_review_queue import review_item, seed

from evaluator.evaluators.trajectory import ToolErrors
from evaluator.models import ReviewItem
from evaluator.review.api import create_app
from evaluator.review.queue import ReviewQueue
from evaluator.sessions.conversation import session_trace
from evaluator.settings import ReviewerAccess, Settings
from evaluator.sinks.sql import SQLStore

MAX_EXAMPLES = 400  # per generation mode, over all operations: ~15 s in all
AUTH = {"Authorization": "Bearer tok-schema"}
TOKENS = {"tok-schema": ReviewerAccess(reviewer="schema", tenants=["acme", "globex:eu"])}
SEEDED = [review_item(i) for i in range(6)] + [review_item(6, tenant="globex:eu")]
SEEDED += [review_item(7, tenant="initech")]  # another tenant's: 403


def _level_item_ids() -> list[str]:
    """The ids the fixture's session and trajectory items get (ids are deterministic)."""
    session = support_session()
    trace = agent_run(1)
    return [
        ReviewItem.for_scores(session_trace(session), session_scores(session), 10).id,
        ReviewItem.for_scores(trace, ToolErrors().evaluate(trace), 10).id,
    ]


LEVEL_ITEM_IDS = _level_item_ids()


@pytest.fixture
def review_api_schema(sqlite_url: str, redis_client: redis.Redis) -> Iterator[Any]:
    store = SQLStore(sqlite_url)
    seed(store, redis_client, SEEDED)
    assert [route_session(store, redis_client)[0].id, trajectory_item(store, redis_client).id] == (
        LEVEL_ITEM_IDS
    )
    app = create_app(
        ReviewQueue(redis_client, store, lease_s=60, sinks=[]), Settings(reviewer_tokens=TOKENS)
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    store.close()


def cases(schema: Any, mode: GenerationMode) -> st.SearchStrategy[schemathesis.Case[Any]]:
    """Generated cases of every operation; those on one item also with the seeded items' ids
    (a generated id is never one, so only 404s would be seen)."""
    seeded_ids = st.sampled_from([item.id for item in SEEDED] + LEVEL_ITEM_IDS)

    def on_seeded_items(operation: Any) -> st.SearchStrategy[schemathesis.Case[Any]]:
        return seeded_ids.flatmap(
            lambda item_id: operation.as_strategy(mode, path_parameters={"item_id": item_id})
        )

    operations = [result.ok() for result in schema.get_all_operations()]
    per_item = [on_seeded_items(op) for op in operations if "{item_id}" in op.path]
    return st.one_of(schema.as_strategy(mode), *per_item)


@pytest.mark.timeout(90)  # a hard bound for CI; it takes about 7 s per mode
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_review_api_keeps_its_openapi_document(
    review_api_schema: Any, mode: GenerationMode
) -> None:
    operations = {result.ok().label for result in review_api_schema.get_all_operations()}
    assert len(operations) == 8, operations  # every JSON route is in the document

    @given(case=cases(review_api_schema, mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    def conforms(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=AUTH)

    conforms()
