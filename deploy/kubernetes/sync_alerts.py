"""Write prometheusrule.yaml from deploy/prometheus/alerts.yml: the same rule groups, comments
and all, as a Prometheus Operator PrometheusRule, so the two cannot drift.

    python deploy/kubernetes/sync_alerts.py          # rewrite prometheusrule.yaml
    python deploy/kubernetes/sync_alerts.py --check  # exit 1 if it is out of date

tests/test_kubernetes.py runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/kubernetes/sync_alerts.py: edit the
# alerts there (promtool tests them) and run the script. Your Prometheus' ruleSelector must match
# this object's labels (kube-prometheus-stack: add its `release: <name>` label).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: evalfleet
  labels:
    app.kubernetes.io/name: evalfleet
    app.kubernetes.io/part-of: evalfleet
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule for the text of alerts.yml: its body (without the leading comment
    lines) indented under ``spec``."""
    lines = alerts.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)
    return HEADER + body


def main(argv: list[str]) -> int:
    wanted = render(ALERTS.read_text())
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(f"{TARGET} is out of date: run python {Path(__file__).as_posix()}")
            return 1
        return 0
    TARGET.write_text(wanted)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
