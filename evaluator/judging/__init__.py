"""Judging: LLM-as-judge evaluators and everything they need.

``files`` loads and validates the judge YAML files (versioned, locked) and renders their
prompts with trace text fenced as untrusted data; ``client`` is the transport (one client per
event loop, one retry policy, one error classifier); ``limits`` the fleet-wide rate limiter and
circuit breaker in Redis; ``runtime`` runs judges on traces and turns their answers into scores
and call records; ``ragas`` the RAGAS metrics, on the same transport. Imports the wire,
``evaluators`` (the protocol, PII redaction), ``trust.golden`` (few-shot examples) and ``ops``.
"""
