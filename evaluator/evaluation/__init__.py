"""Evaluation: what a batch of work does, and re-evaluation runs.

``scoring`` is the pipeline a worker task runs: admit (the ledger) → evaluate (heuristics,
judges) → store (one transaction) → route (review). ``reeval`` plans, prices and starts runs of
a judge version over stored traces, and compares versions. Imports ``evaluators``,
``judging``, ``ledger``, ``review``, ``sinks`` and the wire; ``worker`` and the CLI import it.
"""
