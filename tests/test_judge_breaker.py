"""The fleet-wide judge breaker and the fleet-wide 429 pause, against real Redis: the breaker
opens on a failure *rate* over its window (never on a streak, never below its minimum of calls),
cools down, then lets a few probes through fleet-wide and closes or opens again on them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis
from helpers import make_trace
from openai_server import OpenAIServer

from evaluator.judging.files import default_judges_dir, load_judges
from evaluator.judging.limits import Admission, BreakerPolicy, CircuitBreaker, RateLimiter
from evaluator.judging.runtime import JudgeRuntime, breaker_policy
from evaluator.settings import Settings

ENDPOINT = "e-test"
JUDGES = load_judges(default_judges_dir())

Breakers = Callable[[BreakerPolicy], Awaitable[CircuitBreaker]]


def run(redis_url: str, scenario: Callable[[Breakers], Awaitable[None]]) -> None:
    """Run ``scenario`` with a maker of breakers as separate processes would have them: each its
    own Redis connection and local view, reporting every answer at once (no batching), so the
    tests are exact."""

    async def main() -> None:
        clients: list[aioredis.Redis] = []

        async def make(policy: BreakerPolicy) -> CircuitBreaker:
            client = aioredis.Redis.from_url(redis_url)
            clients.append(client)
            breaker = CircuitBreaker(client, policy)
            breaker.REFRESH_S = 0.0
            return breaker

        try:
            await scenario(make)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(main())


async def answers(breaker: CircuitBreaker, ok: int, failed: int) -> None:
    for _ in range(ok):
        await breaker.record(ENDPOINT, ok=True)
    for _ in range(failed):
        await breaker.record(ENDPOINT, ok=False)


def test_a_streak_of_failures_among_successes_does_not_open_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(breakers: Breakers) -> None:
        breaker = await breakers(BreakerPolicy(min_calls=20, failure_rate=0.5))
        # 15 failures in a row (the old breaker opened after 5) but 15 of 55 = 27 % of the window.
        await answers(breaker, ok=40, failed=15)
        assert (await breaker.admit(ENDPOINT)).wait_s == 0
        # The rate reaches 50 % (40 of 80): open.
        await answers(breaker, ok=0, failed=25)
        admission = await breaker.admit(ENDPOINT)
        assert admission.wait_s > 0 and not admission.probe

    run(redis_url, scenario)


def test_it_does_not_open_below_its_minimum_of_calls(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(breakers: Breakers) -> None:
        breaker = await breakers(BreakerPolicy(min_calls=20, failure_rate=0.5))
        await answers(breaker, ok=0, failed=19)
        assert (await breaker.admit(ENDPOINT)).wait_s == 0  # 100 % failed, but only 19 calls
        await answers(breaker, ok=0, failed=1)
        assert (await breaker.admit(ENDPOINT)).wait_s > 0

    run(redis_url, scenario)


def test_answers_older_than_the_window_do_not_count(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(breakers: Breakers) -> None:
        breaker = await breakers(BreakerPolicy(window_s=0.5, min_calls=10, failure_rate=0.5))
        await answers(breaker, ok=0, failed=9)
        await asyncio.sleep(0.6)  # those 9 left the window
        await answers(breaker, ok=0, failed=9)
        assert (await breaker.admit(ENDPOINT)).wait_s == 0

    run(redis_url, scenario)


def test_failures_seen_by_two_processes_add_up(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(breakers: Breakers) -> None:
        policy = BreakerPolicy(min_calls=20, failure_rate=0.5)
        one, other = await breakers(policy), await breakers(policy)
        await answers(one, ok=0, failed=10)
        await answers(other, ok=0, failed=10)
        assert (await one.admit(ENDPOINT)).wait_s > 0
        assert (await other.admit(ENDPOINT)).wait_s > 0

    run(redis_url, scenario)


async def open_breakers(breakers: Breakers, policy: BreakerPolicy, n: int) -> list[CircuitBreaker]:
    fleet = [await breakers(policy) for _ in range(n)]
    await answers(fleet[0], ok=0, failed=policy.min_calls)
    assert all([(await b.admit(ENDPOINT)).wait_s > 0 for b in fleet])
    await asyncio.sleep(policy.open_s + 0.05)
    return fleet


def test_half_open_admits_its_probes_fleet_wide_then_closes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(breakers: Breakers) -> None:
        policy = BreakerPolicy(min_calls=5, open_s=0.3, probes=3)
        fleet = await open_breakers(breakers, policy, 4)
        # Four processes ask ten times each: three calls in all are let through, as probes.
        admissions = [await b.admit(ENDPOINT) for _ in range(10) for b in fleet]
        probes = [a for a in admissions if a.probe]
        assert len(probes) == 3 and all(a.wait_s == 0 for a in probes)
        assert all(a.wait_s > 0 and a.half_open for a in admissions if not a.probe)
        # Answers of calls that were not probes (made before it opened) do not decide anything.
        await answers(fleet[3], ok=5, failed=0)
        assert (await fleet[3].admit(ENDPOINT)).wait_s > 0
        for breaker in fleet[:2]:
            await breaker.record(ENDPOINT, ok=True, probe=True)
        assert (await fleet[3].admit(ENDPOINT)).wait_s > 0  # two of three probes: still half-open
        await fleet[2].record(ENDPOINT, ok=True, probe=True)
        assert all([(await b.admit(ENDPOINT)) == Admission() for b in fleet])

    run(redis_url, scenario)


def test_a_failed_probe_opens_it_again(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(breakers: Breakers) -> None:
        policy = BreakerPolicy(min_calls=5, open_s=0.3, probes=2)
        fleet = await open_breakers(breakers, policy, 2)
        assert (await fleet[0].admit(ENDPOINT)).probe
        await fleet[0].record(ENDPOINT, ok=False, probe=True)
        again = await fleet[1].admit(ENDPOINT)
        assert not again.probe and not again.half_open and 0.2 < again.wait_s <= 0.3
        await asyncio.sleep(0.35)
        assert (await fleet[1].admit(ENDPOINT)).probe  # the next cool-down ended: new probes

    run(redis_url, scenario)


def test_lost_probes_are_handed_out_again_after_their_lease(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(breakers: Breakers) -> None:
        policy = BreakerPolicy(min_calls=5, open_s=0.2, probes=1, probe_lease_s=0.3)
        [breaker] = await open_breakers(breakers, policy, 1)
        assert (await breaker.admit(ENDPOINT)).probe  # taken by a process that then died
        assert not (await breaker.admit(ENDPOINT)).probe
        await asyncio.sleep(0.35)
        assert (await breaker.admit(ENDPOINT)).probe

    run(redis_url, scenario)


def test_one_clients_429_pauses_another_clients_calls(
    redis_url: str, redis_client: redis.Redis, server: OpenAIServer
) -> None:
    """Two runtimes, as two worker processes have them (own Redis connections, own clients):
    the 429 with Retry-After that one gets holds back the other's call to the same model."""
    server.fake.retry_after_s = 1.0
    server.fake.script.append("429")
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",
        judge_backoff_base_s=0.01,
        judge_backoff_max_s=0.05,
    )
    spec = JUDGES["answer_relevance"]

    async def scenario() -> None:
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
        runtimes = [
            JudgeRuntime(
                settings,
                RateLimiter(client, {}, {}),
                CircuitBreaker(client, breaker_policy(settings)),
            )
            for client in clients
        ]
        try:
            first = asyncio.create_task(runtimes[0].judge(spec, make_trace(1)))
            while not server.fake.statuses:  # the 429 was answered...
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # ...and the other process asks after its pause was set
            second = await runtimes[1].judge(spec, make_trace(2))
            assert (await first).call.status == "ok" and second.call.status == "ok"
        finally:
            for runtime in runtimes:
                await runtime.close()
            for client in clients:
                await client.aclose()

    asyncio.run(scenario())
    refused_at = server.fake.statuses[0][0]
    [_, *later] = sorted(r.at for r in server.fake.requests)
    assert [status for _, status in server.fake.statuses] == [429, 200, 200]
    # Nothing reached the model before the Retry-After had passed: the other client's call,
    # asked for 0.3 s after the 429, included.
    assert len(later) == 2 and all(at >= refused_at + 0.95 for at in later), (refused_at, later)
