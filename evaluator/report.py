"""Rich renderings shared by `evalfleet stats` and `evalfleet demo`."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from evaluator.calibrate import CalibrationReport, GateResult
from evaluator.dlq import DeadLetter
from evaluator.estimates import ScoreEstimate
from evaluator.ledger import LedgerState
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
        ("heuristics batches in flight", stats.heuristics_in_flight),
        *((f"taken, not acked ({role} workers)", n) for role, n in stats.unacked.items()),
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
        rate = _pct(row["passed"] / judged) if judged else "-"
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
    render_estimates(stats.estimates, console)
    render_ledger(stats.ledger, console)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f} %"


def render_estimates(estimates: list[ScoreEstimate], console: Console) -> None:
    """Sampled evaluations as population estimates: each score weighted by 1 / its inclusion
    probability, with the unweighted figure beside it. Only scores with sampling weights."""
    sampled = [e for e in estimates if e.weighted.population > e.weighted.n + 1e-9]
    if not sampled:
        return
    table = Table(
        "score", "stat", "sampled", "stands for", "estimate (95 % CI)", "unweighted",
        title="Population estimates (inverse inclusion probability weights)",
        title_justify="left",
    )  # fmt: skip
    for e in sampled:
        w, plain = e.weighted, e.plain
        if e.statistic == "pass_rate":
            shown = f"{_pct(w.mean)} ± {100 * w.half_width:.1f}"
            unweighted = _pct(plain.mean)
        else:
            shown = f"{w.mean:.3f} ± {w.half_width:.3f}"
            unweighted = f"{plain.mean:.3f}"
        name = display_name(e.evaluator, e.name)
        table.add_row(name, e.statistic, f"{w.n:,}", f"{w.population:,.0f}", shown, unweighted)
    console.print(table)


def render_ledger(ledger: dict[str, dict[str, int]], console: Console) -> None:
    if not ledger:
        return
    states = [s.value for s in LedgerState if any(s.value in per for per in ledger.values())]
    table = Table("evaluator", *states, title="Evaluation ledger", title_justify="left")
    for evaluator, per in sorted(ledger.items()):
        table.add_row(evaluator, *[f"{per[s]:,}" if s in per else "" for s in states])
    console.print(table)


def render_dead_letters(letters: list[DeadLetter], console: Console) -> None:
    table = Table("source id", "reason", "bytes", title="Dead letters", title_justify="left")
    for letter in letters:
        table.add_row(letter.source_id, letter.reason, f"{letter.payload_bytes:,}")
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


def render_calibration(
    report: CalibrationReport, console: Console, disagreements: int = 10
) -> None:
    a = report.agreement
    table = Table(
        title=f"Calibration: {report.judge} {report.version} ({report.model})", title_justify="left"
    )
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    for label, value in (
        ("examples judged", f"{a.n} of {report.examples} ({report.errors} judge errors)"),
        ("agreement (accuracy)", f"{pct(a.accuracy)}  (min {report.min_agreement:.0%})"),
        (
            "Cohen's kappa",
            f"{_number(a.kappa)}  (min {report.min_kappa})",
        ),
        ("fail class precision", pct(a.precision_fail)),
        ("fail class recall", pct(a.recall_fail)),
        ("fail class F1", pct(a.f1_fail)),
        *((f"Spearman {name}", _number(rho)) for name, rho in report.spearman.items()),
        *(
            [
                ("weighted agreement (1/P(incl.))", pct(report.weighted.accuracy)),
                ("weighted kappa", _number(report.weighted.kappa)),
            ]
            if report.weighted is not None
            else []
        ),
    ):
        table.add_row(label, value)
    console.print(table)
    matrix = Table(title="Confusion (rows: humans, columns: judge)", title_justify="left")
    matrix.add_column("")
    matrix.add_column("judge pass", justify="right")
    matrix.add_column("judge fail", justify="right")
    for human in ("pass", "fail"):
        row = a.confusion[human]
        matrix.add_row(f"human {human}", str(row["pass"]), str(row["fail"]))
    console.print(matrix)
    if report.disagreements:
        shown = Table(title=f"Disagreements ({len(report.disagreements)})", title_justify="left")
        for column in ("trace", "human", "judge", "judge's reasoning", "human note"):
            shown.add_column(column)
        for d in report.disagreements[:disagreements]:
            shown.add_row(d.trace_id, d.human, d.judge, d.reasoning[:300], d.note)
        console.print(shown)
    verdict = (
        "[green]PASS[/green]"
        if report.passed
        else "[red]FAIL[/red]: " + "; ".join(report.failures())
    )
    console.print(f"{report.judge}: {verdict}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(report: CalibrationReport | None) -> str:
    if report is None:
        return "new judge"
    kappa, accuracy = report.agreement.kappa, report.agreement.accuracy
    return f"{report.version}: kappa {_number(kappa)}, agreement {accuracy:.1%}"


def render_gate(results: list[GateResult], console: Console) -> bool:
    """Print one line per changed judge; True when any of them may not ship."""
    for result in results:
        change = f"{result.judge} ({_summary(result.old)} -> {_summary(result.new)})"
        if result.reasons:
            console.print(f"[red]FAIL[/red] {change}: " + "; ".join(result.reasons))
        else:
            console.print(f"[green]ok[/green] {change}")
    return any(result.reasons for result in results)
