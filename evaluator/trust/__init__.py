"""Trust: the human labels that judges are measured against.

``golden`` reads and writes golden datasets (JSONL, CSV) and draws few-shot examples;
``golden_public`` maps the public human-labelled sets into them, with attribution; ``calibrate``
measures a judge against a golden set (agreement, kappa, F1 of the fail class, a trivial
baseline) and gates a change in CI; ``pairwise`` holds a pair's two orders and a pairwise
judge's position bias. Imports the wire and ``store``; the CLI imports it.
"""
