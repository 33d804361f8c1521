"""Every Redis key, stream, group and Celery queue name in one place."""

from typing import Final

TRACES_STREAM: Final = "evalfleet:traces"
DEAD_STREAM: Final = "evalfleet:dead"
REVIEW_STREAM: Final = "evalfleet:review"
SAMPLER_GROUP: Final = "evalfleet-sampler"

# Stream entry field that carries the JSON document.
TRACE_FIELD: Final = "trace"

# Idempotency markers for the review stream: one key per routed review item.
REVIEW_ROUTED_PREFIX: Final = "evalfleet:review:routed:"
# Claimable review queues: one stream per (priority, tenant, evaluator), consumer group below;
# the set lists them, the hash maps a review item id to "<queue> <entry id>".
REVIEW_QUEUE_PREFIX: Final = "evalfleet:review:q:"
REVIEW_QUEUES: Final = "evalfleet:review:queues"
REVIEW_ENTRIES: Final = "evalfleet:review:entries"
REVIEW_GROUP: Final = "reviewers"
# How far the reaper has checked that review items in SQL are on the review stream (a time).
REVIEW_CHECKED_UNTIL: Final = "evalfleet:review:checked-until"

HEURISTICS_QUEUE: Final = "heuristics"
JUDGES_QUEUE: Final = "judges"
# Re-evaluation runs: a worker serving both takes live judge work first (queues are read in
# sorted order, and "judges" sorts before "judges_backfill").
JUDGES_BACKFILL_QUEUE: Final = "judges_backfill"
WORK_QUEUES: Final = (HEURISTICS_QUEUE, JUDGES_QUEUE, JUDGES_BACKFILL_QUEUE)

# Celery's record of tasks a worker took but has not acknowledged (kombu's Redis transport), one
# per worker role: heuristics workers restore each other's lost tasks after minutes, workers of
# judge queues after the judges' longer time limit. The role names the key's suffix.
UNACKED_PREFIX: Final = "evalfleet:unacked:"
WORKER_ROLES: Final = (HEURISTICS_QUEUE, JUDGES_QUEUE)

# Heuristics batches dispatched and not finished (evaluator.sampling.inflight): id -> entries, and
# id -> when it is overdue.
HEURISTICS_INFLIGHT: Final = "evalfleet:inflight:heuristics"
HEURISTICS_INFLIGHT_DUE: Final = "evalfleet:inflight:heuristics:due"

# Starts of one delivery of a task (id, retry): a second start means its child died unfinished.
TASK_STARTS_PREFIX: Final = "evalfleet:task-starts:"

HEURISTICS_TASK: Final = "evalfleet.heuristics_batch"
JUDGES_TASK: Final = "evalfleet.judge_batch"
SESSIONS_TASK: Final = "evalfleet.session_batch"  # completed sessions, on the heuristics queue

# Owned by one room each (the module named), kept here so every key is in one list.
FIRST_SEEN_KEY: Final = "evalfleet:first-seen"  # sampling.py
SKIPPED_PREFIX: Final = "evalfleet:review:skipped:"  # review/queue.py
LANGFUSE_BACKFILL_PREFIX: Final = "evalfleet:backfill:langfuse:"  # ingest/langfuse.py
OTLP_SPANS_PREFIX: Final = "evalfleet:otlp:spans:"  # ingest/assembly.py
OTLP_META_PREFIX: Final = "evalfleet:otlp:meta:"  # ingest/assembly.py
OTLP_PENDING: Final = "evalfleet:otlp:pending"  # ingest/assembly.py
SPEND_PREFIX: Final = (
    "evalfleet:spend:"  # + YYYY-MM-DD (hash: judge -> USD, calls:judge -> n, * -> USD) (budget.py)
)
RUN_SPEND_PREFIX: Final = "evalfleet:spend:run:"  # + run id (hash: usd) (budget.py)
TRAFFIC_PREFIX: Final = (
    "evalfleet:traffic:"  # + minute (hash: seen:stratum, sampled, eligible:judge) (budget.py)
)
RATE_LIMIT_PREFIX: Final = "evalfleet:ratelimit:"  # ratelimit.py
CIRCUIT_PREFIX: Final = "evalfleet:circuit:"  # ratelimit.py
# + model: exists while a 429's Retry-After lasts; every worker waits it out (ratelimit.py).
RATE_PAUSE_PREFIX: Final = "evalfleet:ratelimit-pause:"
CHORE_PREFIX: Final = "evalfleet:chore:"  # + chore name: which sampler runs it (sampler.py)

# Sessions (sessions/tracker.py), all by session digest (blake2b of tenant and session id, so
# no untrusted string is ever split back out of a key): a hash of what is known about the
# session and its turns' trace ids, and one sorted set of open sessions by due time.
SESSION_PREFIX: Final = "evalfleet:session:"  # + digest (hash: meta fields, '#' + trace id)
SESSIONS_DUE: Final = "evalfleet:sessions:due"  # zset: digest -> due time (ms)
# + consumer name: the token of the live sampler holding that name in the group (streams.py)
SAMPLER_LEASE_PREFIX: Final = "evalfleet:sampler:lease:"
