"""Sampling: what the sampler reads, decides and hands on.

``sampler`` is the consumer-group loop over ``evalfleet:traces`` (validation, dead letters,
back-pressure, the fleet chores); ``strata`` puts each trace in a stratum and gives each judge
its inclusion probability; ``budget`` keeps judge spend within its budgets; ``estimates`` turns
weighted samples into population figures; ``inflight`` records heuristics batches until they are
stored. Imports the wire (``models``, ``work``, ``constants``, ``settings``), ``ops`` and
``sessions``; ``fleet`` and the CLI import it.
"""
