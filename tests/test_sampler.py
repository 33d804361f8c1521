"""The sampler loop in-process against real Redis: validation, acks, back-pressure, reclaim."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from helpers import make_trace

from evaluator.constants import (
    DEAD_STREAM,
    HEURISTICS_QUEUE,
    JUDGES_QUEUE,
    SAMPLER_GROUP,
    TRACES_STREAM,
)
from evaluator.ingest import publish, publish_many
from evaluator.judging.files import JudgeFileError
from evaluator.models import SampleDecision
from evaluator.sampling.sampler import DispatchError, Sampler
from evaluator.settings import Settings
from evaluator.streams import group_info


class Collect:
    """A dispatcher that keeps batches in memory (the Celery one is exercised in test_fleet)."""

    def __init__(self) -> None:
        self.queues: dict[str, list[list[dict[str, Any]]]] = {
            HEURISTICS_QUEUE: [],
            JUDGES_QUEUE: [],
        }
        self.fail = False

    def __call__(self, queue: str, entries: list[dict[str, Any]], batch_id: str = "") -> None:
        if self.fail:
            raise DispatchError("broker down")
        self.queues[queue].append(entries)

    @property
    def batches(self) -> list[list[dict[str, Any]]]:
        return self.queues[HEURISTICS_QUEUE]

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    @property
    def judge_entries(self) -> list[dict[str, Any]]:
        return [e for batch in self.queues[JUDGES_QUEUE] for e in batch]


def sampler(client: redis.Redis, dispatch: Collect, **overrides: Any) -> Sampler:
    settings = Settings(**{"sampler_block_ms": 10, "claim_interval_s": 0.05, **overrides})
    return Sampler(client, settings, dispatch, consumer=overrides.get("sampler_consumer", "c1"))


def drain(loop: Sampler) -> None:
    while loop.step(block_ms=10):
        pass


def test_batches_dispatch_and_ack(redis_client: redis.Redis) -> None:
    dispatch = Collect()
    publish_many(redis_client, [make_trace(i) for i in range(1200)], Settings())
    loop = sampler(redis_client, dispatch, sampler_batch_size=500, heuristics_batch_size=200)
    drain(loop)
    assert len(dispatch.entries) == 1200
    assert max(len(b) for b in dispatch.batches) == 200  # 500-entry reads split in 200s
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0
    first = dispatch.entries[0]
    assert json.loads(first["trace"])["trace_id"] == "t-000000"
    assert set(first["decision"]) == set(SampleDecision.model_fields)
    assert first["decision"]["stratum"] == "control"


def test_invalid_entries_are_dead_lettered_with_readable_reasons(redis_client: redis.Redis) -> None:
    settings = Settings(max_trace_bytes=2048)
    publish(redis_client, make_trace(1), settings)
    publish(redis_client, '{"trace_id": "a", "output": ', settings)
    publish(redis_client, json.dumps({"trace_id": "b"}), settings)
    publish(redis_client, json.dumps({"trace_id": "c", "output": "x", "latency_ms": -1}), settings)
    publish(redis_client, json.dumps({"trace_id": "d", "output": "x" * 5000}), settings)
    redis_client.xadd(TRACES_STREAM, {"wrong": "field"})
    dispatch = Collect()
    drain(sampler(redis_client, dispatch, max_trace_bytes=2048))
    assert [json.loads(e["trace"])["trace_id"] for e in dispatch.entries] == ["t-000001"]
    reasons = [f[b"reason"].decode() for _, f in redis_client.xrange(DEAD_STREAM)]
    assert reasons[0].startswith("payload: Invalid JSON")
    assert reasons[1] == "output: Field required"
    assert reasons[2] == "latency_ms: Input should be greater than or equal to 0"
    assert reasons[3].startswith("payload is 5031 bytes, over the limit of 2048")
    assert reasons[4] == "entry has no 'trace' field (fields: wrong)"
    first = redis_client.xrange(DEAD_STREAM)[0][1]
    assert first[b"payload"] == b'{"trace_id": "a", "output": '
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_nothing_is_acked_when_dispatch_fails(redis_client: redis.Redis) -> None:
    dispatch = Collect()
    publish_many(redis_client, [make_trace(i) for i in range(30)], Settings())
    loop = sampler(redis_client, dispatch)
    dispatch.fail = True
    with pytest.raises(DispatchError):
        loop.step(block_ms=10)
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 30
    # Same consumer after the failure (as the run loop does): its own pending entries come first.
    dispatch.fail = False
    loop._recover_own_pending = True
    drain(loop)
    assert len(dispatch.entries) == 30
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_back_pressure_stops_reading_while_queue_is_deep(redis_client: redis.Redis) -> None:
    dispatch = Collect()
    publish_many(redis_client, [make_trace(i) for i in range(10)], Settings())
    redis_client.rpush(HEURISTICS_QUEUE, *[b"task"] * 6)
    loop = sampler(redis_client, dispatch, max_heuristics_queue_depth=5, backpressure_sleep_s=0.01)
    assert loop.step(block_ms=10) == 0
    assert loop.counts.backpressure_pauses == 1
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["lag"] == 10  # nothing read
    redis_client.ltrim(HEURISTICS_QUEUE, 0, 1)
    drain(loop)
    assert len(dispatch.entries) == 10


def test_entries_of_a_dead_consumer_are_reclaimed(redis_client: redis.Redis) -> None:
    publish_many(redis_client, [make_trace(i) for i in range(25)], Settings())
    crashed = sampler(redis_client, Collect(), sampler_consumer="crashed")
    # The crashed consumer read 25 entries and died before dispatching or acking them.
    assert len(crashed._xreadgroup(">", 100, block_ms=None)) == 25
    dispatch = Collect()
    survivor = sampler(redis_client, dispatch, sampler_consumer="survivor", claim_idle_ms=200)
    drain(survivor)
    assert dispatch.entries == []  # not idle long enough yet
    time.sleep(0.3)
    drain(survivor)
    assert sorted(json.loads(e["trace"])["trace_id"] for e in dispatch.entries) == [
        f"t-{i:06d}" for i in range(25)
    ]
    assert survivor.counts.reclaimed == 25
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_entry_trimmed_while_pending_is_dead_lettered_not_silently_lost(
    redis_client: redis.Redis,
) -> None:
    publish_many(redis_client, [make_trace(i) for i in range(3)], Settings())
    crashed = sampler(redis_client, Collect(), sampler_consumer="crashed")
    [(first_id, _), *_] = crashed._xreadgroup(">", 100, block_ms=None)
    redis_client.xdel(TRACES_STREAM, first_id)
    dispatch = Collect()
    time.sleep(0.15)
    drain(sampler(redis_client, dispatch, sampler_consumer="survivor", claim_idle_ms=100))
    assert len(dispatch.entries) == 2
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"] == b"entry was trimmed from the stream before it was processed"
    assert dead[b"source_id"] == first_id
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_decision_is_recorded_per_entry(redis_client: redis.Redis) -> None:
    dispatch = Collect()
    publish(redis_client, make_trace(1, error="boom"), Settings())
    publish(redis_client, make_trace(2), Settings())
    judge_endpoint = "http://127.0.0.1:9/v1"  # configured, never called: the sampler only decides
    drain(sampler(redis_client, dispatch, judge_sample_rate=0.0, judge_base_url=judge_endpoint))
    decisions = {json.loads(e["trace"])["trace_id"]: e["decision"] for e in dispatch.entries}
    judges = ["groundedness", "answer_relevance", "safety"]
    assert decisions["t-000001"] == {
        "judge": True,
        "reasons": [
            "app error (stratum error, rate 1)",
            "correctness skipped: needs a reference answer",
        ],
        "stratum": "error",
        "rate": 1.0,
        "judges": judges,
        "inclusion": dict.fromkeys(judges, 1.0),
        "sampled_out": [],
        "filtered": {"correctness": "needs a reference answer"},
    }
    assert decisions["t-000002"] == {
        "judge": False,
        "reasons": [],
        "stratum": "control",
        "rate": 0.0,
        "judges": [],
        "inclusion": {},
        "sampled_out": ["groundedness", "answer_relevance", "correctness", "safety"],
        "filtered": {},
    }
    [judged] = dispatch.judge_entries
    assert judged["judges"] == judges
    assert judged["inclusion"] == dict.fromkeys(judges, 1.0)
    assert json.loads(judged["trace"])["trace_id"] == "t-000001"


def test_unknown_enabled_judge_is_a_clear_startup_error(redis_client: redis.Redis) -> None:
    available = r"\(available: agent_tool_use, answer_relevance"
    with pytest.raises(JudgeFileError, match=r"unknown judge.*: nonsense " + available):
        sampler(redis_client, Collect(), enabled_judges=["safety", "nonsense"])


def test_an_entry_that_keeps_killing_samplers_is_dead_lettered(redis_client: redis.Redis) -> None:
    publish_many(redis_client, [make_trace(i) for i in range(3)], Settings())
    crashed = sampler(redis_client, Collect(), sampler_consumer="crashed")
    [(poison_id, _), *_] = crashed._xreadgroup(">", 100, block_ms=None)
    # As if five samplers in a row had claimed it and died: its delivery count is now 6.
    redis_client.xclaim(TRACES_STREAM, SAMPLER_GROUP, "crashed", 0, [poison_id], retrycount=6)
    time.sleep(0.15)
    dispatch = Collect()
    survivor = sampler(redis_client, dispatch, sampler_consumer="survivor", claim_idle_ms=100)
    drain(survivor)
    assert sorted(json.loads(e["trace"])["trace_id"] for e in dispatch.entries) == [
        "t-000001",
        "t-000002",
    ]
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"] == b"delivered more than 5 times without being acknowledged"
    assert dead[b"source_id"] == poison_id
    assert json.loads(dead[b"payload"])["trace_id"] == "t-000000"
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_a_poison_entry_is_dead_lettered_on_a_same_name_restart_too(
    redis_client: redis.Redis,
) -> None:
    publish_many(redis_client, [make_trace(i) for i in range(2)], Settings())
    first = sampler(redis_client, Collect(), sampler_consumer="same-name")
    [(poison_id, _), _] = first._xreadgroup(">", 100, block_ms=None)
    redis_client.xclaim(TRACES_STREAM, SAMPLER_GROUP, "same-name", 0, [poison_id], retrycount=5)
    dispatch = Collect()
    drain(sampler(redis_client, dispatch, sampler_consumer="same-name"))  # the restart
    assert [json.loads(e["trace"])["trace_id"] for e in dispatch.entries] == ["t-000001"]
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"source_id"] == poison_id
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0
