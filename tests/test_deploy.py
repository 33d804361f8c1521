"""Deployment files agree with the code: metric names, compose mounts, the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import evaluator.ops.metrics  # noqa: F401 - registers the metrics

ROOT = Path(__file__).resolve().parent.parent
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exported_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("evalfleet_"):
            names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, [""])}
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bevalfleet_[a-z_]+\b", text))


def test_alerts_and_dashboard_use_only_metrics_the_code_exports() -> None:
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/evalfleet.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    used = referenced(alerts) | referenced(exprs)
    assert used, "no metric referenced"
    assert used <= exported_names(), used - exported_names()


def test_compose_mounts_exist_and_env_names_are_settings() -> None:
    from evaluator.settings import Settings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for variable in service.get("environment") or {}:
            if variable.startswith("EVALFLEET_"):
                assert variable.removeprefix("EVALFLEET_").lower() in Settings.model_fields, (
                    variable
                )
            if name in ("sampler", "worker", "relay") and variable.startswith("LANGFUSE_"):
                assert variable in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST")
    assert compose["services"]["langfuse-web"]["profiles"] == ["langfuse"]
    scraped = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for process in ("sampler", "worker", "judge-worker", "judge-backfill-worker", "relay"):
        assert f'"{process}:9108"' in scraped
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/evalfleet.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Health",
        "Quality",
        "Cost",
        "Review",
        "Deployment",
        "Sampling, budget and the evaluation ledger",
    ]


def test_judge_gate_workflow_runs_the_gate_on_judge_changes() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/judge-gate.yml").read_text())
    trigger = workflow[True]["pull_request"]["paths"]  # YAML 1.1 reads the key "on" as True
    assert "judges/**" in trigger
    steps = workflow["jobs"]["gate"]["steps"]
    assert any("evalfleet gate --base" in step.get("run", "") for step in steps)
    assert steps[0]["with"]["fetch-depth"] == 0
