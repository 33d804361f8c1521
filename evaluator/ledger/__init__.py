"""The evaluation ledger: for every (trace, evaluator, evaluator version), where it stands.

This room owns the ``evaluation_ledger`` table (declared with the others in ``evaluator.store``):
its rows and the forward-only write (``rows``), its queries (``queries``) and the reaper
(``reaper``). It imports ``store``, ``work``, ``judges`` and ``settings``; ``scoring``, the CLI and
the sampler's chores import it.

States: ``filtered`` (the judge does not apply), ``sampled_out``, ``queued``, ``running``,
``retrying`` (attempt, next time), ``done``, ``failed`` (reason), ``dead_lettered``,
``over_budget``. The first two and the last four are terminal.

Rows only move forward: a write lands when the row is open and the write's
``attempt * 10 + rank(state)`` is larger (a terminal write always is), so a late "queued" from
the heuristics worker never overwrites the judge worker's "running", and a Celery redelivery of
a finished batch changes nothing. Heuristics run on every trace in one step and are recorded as
one row per trace (evaluator ``heuristics``).

Nothing stays open for ever: ``reap`` (run by the sampler every ``EVALFLEET_REAPER_INTERVAL_S``
under a fleet-wide lock, or ``evalfleet ledger reap``) re-dispatches open rows past their
deadline from the stored trace payload, or fails them with a reason after
``EVALFLEET_LEDGER_MAX_DISPATCHES``.
"""

from evaluator.ledger.queries import inclusion_probabilities, open_count, rows_for_trace, summary
from evaluator.ledger.reaper import DispatchJudges, ReapCounts, prune, reap, redrive
from evaluator.ledger.rows import (
    HEURISTICS,
    OPEN_RANK,
    LedgerState,
    decision_rows,
    heuristics_version,
    ledger_row,
    write_rows,
)

__all__ = [
    "HEURISTICS",
    "OPEN_RANK",
    "DispatchJudges",
    "LedgerState",
    "ReapCounts",
    "decision_rows",
    "heuristics_version",
    "inclusion_probabilities",
    "ledger_row",
    "open_count",
    "prune",
    "reap",
    "redrive",
    "rows_for_trace",
    "summary",
    "write_rows",
]
