"""Rich renderings shared by `evalfleet stats` and `evalfleet demo`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from evaluator.dlq import DeadLetter
from evaluator.models import display_name
from evaluator.sinks.sql import ReviewItemRecord
from evaluator.stats import FleetStats


def render_stats(stats: FleetStats, console: Console) -> None:
    fleet = Table(title="Fleet", show_header=False, title_justify="left")
    fleet.add_column(style="bold")
    fleet.add_column(justify="right")
    rows = [
        ("traces stream length", stats.stream_length),
        ("pending (read, not acked)", stats.pending),
        ("lag (not yet read)", stats.lag),
        *((f"queue {name}", depth) for name, depth in stats.queue_depths.items()),
        ("traces scored", stats.traces_scored),
        ("sampled for judges", stats.judge_sampled),
        ("dead letters", stats.dead_letters),
        ("routed to review (stream)", stats.review_stream_length),
        ("review items pending", stats.review_pending),
        *(
            (f"sink {sink} {status}", count)
            for sink, statuses in sorted(stats.sinks.items())
            for status, count in sorted(statuses.items())
        ),
    ]
    for label, value in rows:
        fleet.add_row(label, f"{value:,}")
    console.print(fleet)

    scores = Table(title="Scores by evaluator", title_justify="left")
    for column in ("score", "count", "passed", "failed", "errors", "pass rate"):
        scores.add_column(column, justify="left" if column == "score" else "right")
    for row in stats.scores:
        judged = row["passed"] + row["failed"]
        rate = f"{100 * row['passed'] / judged:.1f} %" if judged else "-"
        style = "red" if judged and row["passed"] / judged < 0.9 else None
        name = display_name(row["evaluator"], row["name"])
        scores.add_row(
            name,
            f"{row['count']:,}",
            f"{row['passed']:,}",
            f"{row['failed']:,}",
            f"{row['errors']:,}",
            rate,
            style=style,
        )
    console.print(scores)


def render_dead_letters(letters: list[DeadLetter], console: Console) -> None:
    table = Table("source id", "reason", "bytes", title="Dead letters", title_justify="left")
    for letter in letters:
        table.add_row(letter.source_id, letter.reason, f"{len(letter.payload):,}")
    console.print(table)


def render_review_queue(items: list[ReviewItemRecord], console: Console) -> None:
    table = Table(
        "priority",
        "trace",
        "evaluator",
        "why",
        title="Review queue (most urgent first)",
        title_justify="left",
    )
    for item in items:
        table.add_row(str(item.priority), item.trace_id, item.evaluator, "; ".join(item.reasons))
    console.print(table)
