"""Operations: what running the fleet needs around the data flow, at the ground floor.

Readiness and outage handling (``health``), logs (``logs``), Prometheus metrics (``metrics``),
one-line errors (``errors``), dead letters (``dlq``) and an embedded Redis (``embedded``). They
import only the wire (``settings``, ``constants``, ``streams``), so any room may use them.
"""
