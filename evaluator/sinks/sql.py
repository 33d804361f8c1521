"""The results store: scores, traces (with the sampler's decision), trace payloads, judge
calls, review items and labels — written one transaction per batch, read by ``stats``, ``demo``,
calibration and the review queue.

Writes are idempotent upserts keyed on deterministic ids, so a redelivered batch leaves exactly
the same rows. The tables and schema creation live in ``evaluator.store``; the ledger rows a batch
carries are written through ``evaluator.ledger`` in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, case, func, literal_column
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from evaluator.ledger import rows as ledger_rows
from evaluator.models import (
    SESSION_SUBJECT_PREFIX,
    Level,
    ReviewItem,
    ReviewLabel,
    ReviewStatus,
    Score,
    ScoreStatus,
    Trace,
)
from evaluator.sampling.estimates import ScoreSums, Sums
from evaluator.store.database import Database
from evaluator.store.tables import (
    JudgeCallRecord,
    OutboxRecord,
    ReviewItemRecord,
    ReviewLabelRecord,
    ScoreRecord,
    TracePayloadRecord,
    TraceRecord,
)
from evaluator.store.upsert import upsert


def label_row(label: ReviewLabel) -> dict[str, Any]:
    return {
        "id": label.id,
        "trace_id": label.trace_id,
        "evaluator": label.evaluator,
        "evaluator_version": label.evaluator_version,
        "reviewer": label.reviewer,
        "verdict": label.verdict.value,
        "field_scores": label.field_scores,
        "note": label.note,
        "labelled_at": label.labelled_at,
        "source": label.source,
        "tenant": label.trace.tenant,
        "prompt_version": label.trace.prompt_version,
        "trace": label.trace.model_dump(mode="json", exclude_none=True),
    }


def score_row(
    score: Score, tenant: str | None, feature: str | None, prompt_version: str | None
) -> dict[str, Any]:
    return {
        "id": score.id,
        "trace_id": score.trace_id,
        "evaluator": score.evaluator,
        "evaluator_version": score.evaluator_version,
        "name": score.name,
        "data_type": score.data_type.value,
        "value": score.value,
        "label": score.label,
        "passed": score.passed,
        "severity": score.severity.value,
        "status": score.status.value,
        "reason": score.reason,
        "tenant": tenant,
        "feature": feature,
        "prompt_version": prompt_version,
        "created_at": score.created_at,
        "details": score.metadata,
        "level": score.level.value,
    }


def payload_row(trace: Trace, payload: str, published_at: datetime) -> dict[str, Any]:
    """A ``trace_payloads`` row: the trace as published, for the reaper and re-evaluation."""
    return {
        "trace_id": trace.trace_id,
        "tenant": trace.tenant,
        "prompt_version": trace.prompt_version,
        "published_at": published_at,
        "payload": payload,
    }


def review_row(item: ReviewItem) -> dict[str, Any]:
    row = item.model_dump(mode="json", exclude={"trace", "created_at"})
    row["created_at"] = item.created_at
    row["trace"] = item.trace.model_dump(mode="json", exclude_none=True)
    return row


def _sql_text(value: str) -> Any:
    # A constant rendered into the statement, not a parameter: PostgreSQL must see the same
    # expression in SELECT and GROUP BY, and two bound parameters are two expressions to it.
    return literal_column("'" + value.replace("'", "''") + "'")


# A score's level as stored; rows from before the column read as a session score when their
# trace id is a session subject, else as a turn score (store/schema.py: no rewrite of old rows).
LEVEL: Any = func.coalesce(
    col(ScoreRecord.level),
    case(
        (
            col(ScoreRecord.trace_id).like(_sql_text(SESSION_SUBJECT_PREFIX + "%")),
            _sql_text(Level.SESSION.value),
        ),
        else_=_sql_text(Level.TURN.value),
    ),
)


def _sum_terms(w: Any, y: Any) -> list[Any]:
    """w, wy, w², w²y, w²y²: what ``estimates.Sums`` holds besides n."""
    return [w, w * y, w * w, w * w * y, w * w * y * y]


def _digest_changed(table: Any, proposed: Any) -> Any:
    # Outbox: leave a row alone when its content (digest) did not change.
    return table.c.digest != proposed.digest


class SQLStore(Database):
    """Idempotent batch writes of results, and the read queries used by ``stats``, ``demo``,
    the review queue and tests."""

    def write_batch(
        self,
        traces: Sequence[dict[str, Any]],
        scores: Sequence[dict[str, Any]],
        reviews: Sequence[ReviewItem],
        calls: Sequence[dict[str, Any]] = (),
        outbox: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        payloads: Sequence[dict[str, Any]] = (),
        latest_payloads: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Upsert traces, scores and judge calls; insert-if-absent review items (keeping their
        reviewer state) and trace payloads; replace ``latest_payloads`` (a session's Trace at
        its latest version); queue sink deliveries whose content changed; move ledger rows
        forward."""
        with self.session() as session:
            upsert(session, TracePayloadRecord, payloads, "trace_id", update=False)
            upsert(session, TracePayloadRecord, latest_payloads, "trace_id", update=True)
            ledger_rows.write_rows(self, ledger, session)
            upsert(session, OutboxRecord, outbox, "id", update=True, guard=_digest_changed)
            upsert(session, JudgeCallRecord, calls, "id", update=True)
            upsert(session, TraceRecord, traces, "trace_id", update=True)
            upsert(session, ScoreRecord, scores, "id", update=True)
            upsert(session, ReviewItemRecord, [review_row(r) for r in reviews], "id", update=False)
            session.commit()

    # -- reads ---------------------------------------------------------------------------------

    def score_summary(self, by_level: bool = False) -> list[dict[str, Any]]:
        """Per evaluator and score name: count, passed, failed, errors, mean value. With
        ``by_level``, per level too (turn, trajectory, session; ``LEVEL``), each row saying its
        ``level``: an evaluator scores at one level, so these are the same rows, with it."""
        keys = [col(ScoreRecord.evaluator), col(ScoreRecord.name), *([LEVEL] if by_level else [])]
        with self.session() as session:
            rows = session.execute(
                sa_select(
                    *keys,
                    func.count(),
                    func.sum(func.cast(col(ScoreRecord.passed).is_(True), Integer)),
                    func.sum(func.cast(col(ScoreRecord.passed).is_(False), Integer)),
                    func.sum(
                        func.cast(col(ScoreRecord.status) == ScoreStatus.ERROR.value, Integer)
                    ),
                    func.avg(col(ScoreRecord.value)),
                )
                .group_by(*keys)
                .order_by(*keys)
            ).all()
        summary = []
        for row in rows:
            evaluator, name, *level = row[: len(keys)]
            count, passed, failed, errors, mean = row[len(keys) :]
            summary.append(
                {
                    "evaluator": evaluator,
                    "name": name,
                    **({"level": level[0]} if by_level else {}),
                    "count": int(count),
                    "passed": int(passed or 0),
                    "failed": int(failed or 0),
                    "errors": int(errors or 0),
                    "mean": float(mean) if mean is not None else None,
                }
            )
        return summary

    def judge_sampled_count(self) -> int:
        with self.session() as session:
            query = (
                select(func.count())
                .select_from(TraceRecord)
                .where(col(TraceRecord.judge_sampled).is_(True))
            )
            return int(session.exec(query).one())

    def score_sums(self, since: datetime | None = None) -> list[ScoreSums]:
        """Per (evaluator, score): the sums of ``estimates.Sums`` for its pass rate and its
        mean over successful scores, weighted by 1 / inclusion probability (none reads as 1).
        Summed by the database: one row per score, whatever the number of traces."""
        # Constants as SQL literals: PostgreSQL cannot type an untyped parameter inside sum().
        one: Any = literal_column("1.0")
        zero: Any = literal_column("0.0")
        weight = one / func.coalesce(col(ScoreRecord.inclusion_probability), one)
        passed = case((col(ScoreRecord.passed).is_(True), one), else_=zero)
        out: list[ScoreSums] = []
        with self.session() as session:
            for statistic, y, present in (
                ("pass_rate", passed, col(ScoreRecord.passed).is_not(None)),
                ("mean", col(ScoreRecord.value), col(ScoreRecord.value).is_not(None)),
            ):
                query = (
                    sa_select(
                        col(ScoreRecord.evaluator),
                        col(ScoreRecord.name),
                        func.count(),
                        *[func.sum(term) for term in _sum_terms(weight, y)],
                        *[func.sum(term) for term in _sum_terms(one, y)],
                    )
                    .where(col(ScoreRecord.status) == ScoreStatus.OK.value, present)
                    .group_by(col(ScoreRecord.evaluator), col(ScoreRecord.name))
                )
                if since is not None:
                    query = query.where(col(ScoreRecord.created_at) >= since)
                for evaluator, name, n, *sums in session.execute(query):
                    values = [float(v or 0.0) for v in sums]
                    out.append(
                        (
                            evaluator,
                            name,
                            statistic,
                            Sums(int(n), *values[:5]),
                            Sums(int(n), *values[5:]),
                        )
                    )
        return out

    def judge_spend_since(self, since: datetime) -> dict[str, tuple[float, int]]:
        """{judge: (USD, calls)} recorded in judge_calls since ``since``."""
        with self.session() as session:
            query = (
                select(JudgeCallRecord.judge, func.sum(JudgeCallRecord.cost_usd), func.count())
                .where(col(JudgeCallRecord.created_at) >= since)
                .group_by(col(JudgeCallRecord.judge))
            )
            return {judge: (float(usd or 0.0), int(n)) for judge, usd, n in session.exec(query)}

    def pending_review_count(self) -> int:
        with self.session() as session:
            query = (
                select(func.count())
                .select_from(ReviewItemRecord)
                .where(ReviewItemRecord.status == ReviewStatus.PENDING.value)
            )
            return int(session.exec(query).one())

    def reviews_created_between(
        self, after: datetime, until: datetime, limit: int = 1000
    ) -> list[ReviewItemRecord]:
        """Pending review items created in (after, until], oldest first."""
        with self.session() as session:
            query = (
                select(ReviewItemRecord)
                .where(
                    ReviewItemRecord.status == ReviewStatus.PENDING.value,
                    col(ReviewItemRecord.created_at) > after,
                    col(ReviewItemRecord.created_at) <= until,
                )
                .order_by(col(ReviewItemRecord.created_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def review_queue(self, limit: int = 10) -> list[ReviewItemRecord]:
        """Pending review items, most urgent first."""
        with self.session() as session:
            query = (
                select(ReviewItemRecord)
                .where(ReviewItemRecord.status == ReviewStatus.PENDING.value)
                .order_by(col(ReviewItemRecord.priority).desc(), col(ReviewItemRecord.created_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Outbox rows per sink and status (pending, delivered, rejected)."""
        counts: dict[str, dict[str, int]] = {}
        with self.session() as session:
            query = select(OutboxRecord.sink, OutboxRecord.status, func.count()).group_by(
                OutboxRecord.sink, OutboxRecord.status
            )
            for sink, status, count in session.exec(query):
                counts.setdefault(sink, {})[status] = int(count)
        return counts

    # -- review --------------------------------------------------------------------------------

    def add_labels(self, labels: Sequence[ReviewLabel], replace: bool = False) -> None:
        """Insert labels; an existing label (same id) is kept unless ``replace`` (imports)."""
        with self.session() as session:
            rows = [label_row(label) for label in labels]
            upsert(session, ReviewLabelRecord, rows, "id", update=replace)
            session.commit()

    def label(self, label_id: str) -> ReviewLabel | None:
        with self.session() as session:
            record = session.get(ReviewLabelRecord, label_id)
            return record.to_label() if record else None

    def labels(self, evaluator: str | None = None) -> list[ReviewLabel]:
        with self.session() as session:
            query = select(ReviewLabelRecord).order_by(col(ReviewLabelRecord.labelled_at))
            if evaluator is not None:
                query = query.where(ReviewLabelRecord.evaluator == evaluator)
            return [record.to_label() for record in session.exec(query)]

    def review_item(self, item_id: str) -> ReviewItemRecord | None:
        with self.session() as session:
            return session.get(ReviewItemRecord, item_id)

    def set_review_status(self, item_id: str, status: ReviewStatus) -> None:
        with self.session() as session:
            record = session.get(ReviewItemRecord, item_id)
            if record is not None and record.status != ReviewStatus.LABELLED.value:
                record.status = status.value  # a label is final
                session.add(record)
                session.commit()

    def scores_by_id(self, score_ids: Sequence[str]) -> list[ScoreRecord]:
        with self.session() as session:
            query = select(ScoreRecord).where(col(ScoreRecord.id).in_(list(score_ids)))
            return list(session.exec(query))

    def review_counts(self) -> list[tuple[str, str | None, str, int]]:
        """(evaluator, tenant, status, count) over all review items."""
        with self.session() as session:
            query = select(
                ReviewItemRecord.evaluator,
                ReviewItemRecord.tenant,
                ReviewItemRecord.status,
                func.count(),
            ).group_by(
                col(ReviewItemRecord.evaluator),
                col(ReviewItemRecord.tenant),
                col(ReviewItemRecord.status),
            )
            return [(e, t, s, int(c)) for e, t, s, c in session.exec(query)]

    def publish_to_score_delays_ms(self) -> list[float]:
        with self.session() as session:
            rows = session.exec(select(TraceRecord.published_at, TraceRecord.scored_at)).all()
        return sorted((scored - published).total_seconds() * 1000 for published, scored in rows)
