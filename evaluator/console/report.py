"""Every rich rendering of the CLI and the demo, in one place: commands compute, this prints."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from evaluator.console.stats import FleetStats
from evaluator.ledger import OPEN_RANK, LedgerState
from evaluator.models import display_name
from evaluator.ops.dlq import DeadLetter
from evaluator.sampling.estimates import ScoreEstimate
from evaluator.store.tables import LedgerRecord, ReviewItemRecord
from evaluator.trust.calibrate import CalibrationReport, GateResult

if TYPE_CHECKING:  # the types only: rendering must not import the judges or re-evaluation
    from evaluator.console.levels import CheckCounts, LevelSummary
    from evaluator.evaluation.reeval import Comparison, ReevalPlan
    from evaluator.judging.files import JudgeSpec


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


def _check_table(title: str, subject: str, rows: list[CheckCounts]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("check", subject, "passed", "failed", "errors", "pass rate"):
        table.add_column(column, justify="left" if column == "check" else "right")
    for row in rows:
        rate = row.pass_rate
        style = "red" if rate is not None and rate < 0.9 else None
        shown = "-" if rate is None else _pct(rate)
        table.add_row(row.name, f"{row.count:,}", f"{row.passed:,}", f"{row.failed:,}",
                      f"{row.errors:,}", shown, style=style)  # fmt: skip
    return table


def render_levels(levels: LevelSummary, console: Console) -> None:
    """Results above the turn: trajectory checks over agent runs, session checks over
    completed conversations, and the sessions that failed the most checks."""
    if levels.trajectory:
        title = f"Trajectory checks ({levels.agent_runs:,} agent runs)"
        console.print(_check_table(title, "runs", levels.trajectory))
    if not levels.session_checks:
        return
    title = f"Sessions ({levels.sessions:,} evaluated): pass rate per session check"
    console.print(_check_table(title, "sessions", levels.session_checks))
    if levels.worst_sessions:
        worst = Table("session", "tenant", "turns", "failed checks", title="Worst sessions",
                      title_justify="left")  # fmt: skip
        for w in levels.worst_sessions:
            failed = "; ".join(f"{check}: {reason}" for check, reason in w.failed)
            worst.add_row(w.session_id, w.tenant or "", str(w.turns), failed)
        console.print(worst)


def render_ledger(
    ledger: dict[str, dict[str, int]], console: Console, *, title: str = "Evaluation ledger"
) -> None:
    """Counts by evaluator and state (states in the ledger's order), with how many are open."""
    if not ledger:
        return
    states = [s.value for s in LedgerState if any(s.value in per for per in ledger.values())]
    table = Table("evaluator", *states, "open", title=title, title_justify="left")
    for evaluator, per in sorted(ledger.items()):
        still_open = sum(n for state, n in per.items() if state in OPEN_RANK)
        counts = [f"{per[s]:,}" if s in per else "" for s in states]
        table.add_row(evaluator, *counts, f"{still_open:,}")
    console.print(table)


def render_ledger_rows(rows: list[LedgerRecord], console: Console) -> None:
    """One trace's rows: every evaluator's state."""
    table = Table("evaluator", "version", "state", "attempt", "stratum", "P(incl.)", "updated",
                  "reason")  # fmt: skip
    for r in rows:
        p = f"{r.inclusion_probability:g}" if r.inclusion_probability is not None else ""
        updated = r.updated_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r.evaluator, r.evaluator_version, r.state, str(r.attempt), r.stratum or "",
                      p, updated, r.reason)  # fmt: skip
    console.print(table)


def render_dead_letters(letters: list[DeadLetter], console: Console) -> None:
    table = Table("id", "source id", "failed at", "reason", "bytes", title="Dead letters",
                  title_justify="left")  # fmt: skip
    for letter in letters:
        table.add_row(letter.id, letter.source_id, letter.failed_at, letter.reason,
                      f"{letter.payload_bytes:,}")  # fmt: skip
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

    skipped = "; ".join(f"{n} {why}" for why, n in report.not_applicable.items())
    for label, value in (
        ("examples judged", f"{a.n} of {report.examples} ({report.errors} judge errors)"),
        *([("not applicable (not judged)", skipped)] if skipped else []),
        ("agreement (accuracy)", f"{pct(a.accuracy)}  (min {report.min_agreement:.0%})"),
        (
            "Cohen's kappa",
            f"{_number(a.kappa)}  (min {report.min_kappa})",
        ),
        ("fail class precision", pct(a.precision_fail)),
        ("fail class recall", pct(a.recall_fail)),
        ("fail class F1", pct(a.f1_fail)),
        *((f"Spearman {name}", _number(rho)) for name, rho in report.spearman.items()),
        *((f"ROC-AUC {name} (low = fail)", _number(v)) for name, v in report.score_auc.items()),
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
    if report.baselines:
        # The same metrics for one-feature rules fitted on these labels: the bar to clear.
        bars = Table(
            title="Judge vs trivial baselines (fitted on the same examples)", title_justify="left"
        )
        for column in ("", "rule", "agreement", "kappa", "fail F1", "ROC-AUC"):
            bars.add_column(column, justify="left" if column in ("", "rule") else "right")
        # The judge's own score (named after it, or its only numeric one), never the best of many.
        aucs = {k: v for k, v in report.score_auc.items() if v is not None}
        judge_auc = aucs.get(report.judge, next(iter(aucs.values())) if len(aucs) == 1 else None)
        bars.add_row(
            "judge", report.model, pct(a.accuracy), _number(a.kappa), pct(a.f1_fail),
            _number(judge_auc),
        )  # fmt: skip
        for baseline in report.baselines:
            b = baseline.agreement
            bars.add_row(
                baseline.feature, baseline.rule, pct(b.accuracy), _number(b.kappa),
                pct(b.f1_fail), _number(baseline.auc),
            )  # fmt: skip
        console.print(bars)
    if report.by_source:
        sources = Table(
            title="Agreement per source (baseline: the best one fitted on that source)",
            title_justify="left",
        )
        columns = ("source", "examples", "agreement", "kappa", "fail F1")
        for column in (*columns, "baseline agreement", "baseline kappa", "baseline AUC"):
            sources.add_column(column, justify="left" if column == "source" else "right")
        for name, part in report.by_source.items():
            bar = report.source_baselines.get(name)
            sources.add_row(
                name, str(part.n), pct(part.accuracy), _number(part.kappa), pct(part.f1_fail),
                pct(bar.agreement.accuracy) if bar else "-",
                _number(bar.agreement.kappa) if bar else "-", _number(bar.auc) if bar else "-",
            )  # fmt: skip
        console.print(sources)
    if report.position is not None:
        bias = report.position
        console.print(
            f"position bias over {bias.pairs} pairs judged in both orders: the verdict follows "
            f"the position, not the answer, in {bias.follows_position:.1%} (consistent "
            f"{bias.consistency:.1%}; first-shown preferred in both orders {bias.first_both}, "
            f"second-shown in both {bias.second_both})"
        )
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
    for warning in report.baseline_warnings():
        console.print(f"[yellow]WARNING:[/yellow] {warning}")
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


def render_reeval_plan(planned: ReevalPlan, console: Console) -> None:
    """What a re-evaluation run would judge, cost and take, before it is confirmed."""
    spec = planned.spec
    console.print(f"[bold]{spec.name}@{spec.version}[/bold] ({spec.model})")
    console.print(
        f"  traces: {planned.count:,} to judge of {planned.considered:,} in the window "
        f"({planned.already:,} already scored by this version, {planned.filtered:,} outside "
        "its applies_when)"
    )
    console.print(
        f"  tokens per call: {planned.input_tokens_per_call:,.0f} in + "
        f"{planned.output_tokens_per_call:,.0f} out, from {planned.tokens_from or 'nothing'}"
    )
    total_tokens = planned.count * (planned.input_tokens_per_call + planned.output_tokens_per_call)
    usd = f"${planned.usd:,.2f}" if planned.usd is not None else "unknown"
    console.print(f"  estimated: {total_tokens:,.0f} tokens, {usd}")
    if planned.seconds is not None:
        console.print(f"  time: ~{planned.seconds / 60:,.1f} min ({planned.pace})")
    for note in planned.notes:
        console.print(f"  [yellow]note:[/yellow] {note}")


def render_comparison(
    result: Comparison, name: str, version_a: str, version_b: str, console: Console
) -> None:
    """Two versions of a judge on the traces both scored, and each against human labels."""
    console.print(
        f"{name}: {result.traces_a:,} traces scored by {version_a}, {result.traces_b:,} by "
        f"{version_b}, {result.both:,} by both"
    )
    if not result.both:
        return
    v = result.verdicts
    kappa = f"{v.kappa:.3f}" if v.kappa is not None else "n/a"
    console.print(f"verdicts agree on {100 * v.accuracy:.1f} % (Cohen's kappa {kappa})")
    console.print(
        f"  {version_a} pass / {version_b} fail: {v.confusion['pass']['fail']:,}; "
        f"{version_a} fail / {version_b} pass: {v.confusion['fail']['pass']:,}"
    )
    for f in result.fields:
        rho = f"{f.spearman:.3f}" if f.spearman is not None else "n/a"
        console.print(
            f"  {f.name}: Spearman {rho} over {f.n:,}; mean {f.mean_a:.3f} -> {f.mean_b:.3f}"
        )
    for version, humans in ((version_a, result.humans_a), (version_b, result.humans_b)):
        if humans is not None:
            k = f"{humans.kappa:.3f}" if humans.kappa is not None else "n/a"
            console.print(
                f"  vs human labels ({humans.n:,}): {version} {100 * humans.accuracy:.1f} % "
                f"agreement, kappa {k}"
            )


def render_judges(judges: Iterable[JudgeSpec], enabled: list[str], console: Console) -> None:
    """Every judge file: version, model, when it applies, its scores and thresholds."""
    table = Table("judge", "version", "model", "applies when", "scores (review under)", "enabled")
    for spec in judges:
        when = ", ".join(
            f"{k}={v}" for k, v in spec.applies_when.model_dump(exclude_none=True).items()
        )
        fields = ", ".join(
            f"{n} (<{spec.review_thresholds[n]:g})" if n in spec.review_thresholds else n
            for n in spec.score_fields
        )
        on = "yes" if spec.name in enabled else "no"
        table.add_row(spec.name, spec.version, spec.model, when or "always", fields, on)
    console.print(table)
