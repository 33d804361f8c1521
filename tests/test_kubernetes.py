"""deploy/kubernetes: valid against the Kubernetes schemas (kubernetes-validate, bundled, offline)
and the KEDA / Prometheus Operator CRDs (cloudcoil's models generated from them), and in
agreement with the code: settings, queues, stream, probes, ports, the alert rules."""

from __future__ import annotations

import importlib.util
import runpy
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlparse

import pytest
import redis
import yaml
from fastapi.testclient import TestClient

from evaluator.constants import (
    HEURISTICS_QUEUE,
    JUDGES_BACKFILL_QUEUE,
    JUDGES_QUEUE,
    SAMPLER_GROUP,
    TRACES_STREAM,
)
from evaluator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
SECRETS = {
    "EVALFLEET_DATABASE_URL",
    "EVALFLEET_JUDGE_API_KEY",
    "LANGFUSE_SECRET_KEY",
    "EVALFLEET_REVIEWER_TOKENS",
    "EVALFLEET_OTLP_TOKEN",
}
# The processes of the README's table: component -> the arguments it runs with.
PROCESSES = {
    "sampler": ["sampler"],
    "worker": ["worker", "--queues", HEURISTICS_QUEUE],
    "judge-worker": ["worker", "--queues", JUDGES_QUEUE, "--pool", "threads", "--concurrency", "8"],
    "judge-backfill-worker": [
        "worker",
        "--queues",
        JUDGES_BACKFILL_QUEUE,
        "--pool",
        "threads",
        "--concurrency",
        "4",
    ],
    "relay": ["relay"],
    "review-api": ["review-api", "--port", "8080"],
    "otlp-receiver": ["otlp-receiver", "--port", "4318", "--flushers", "1"],
}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) of every resource kustomization.yaml lists."""
    return [
        (name, doc)
        for name in kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def deployments() -> dict[str, dict[str, Any]]:
    """component -> Deployment."""
    return {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for doc in objects("Deployment").values()
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def config() -> dict[str, str]:
    data: dict[str, str] = objects("ConfigMap")["evalfleet-config"]["data"]
    return data


def secret() -> dict[str, str]:
    data: dict[str, str] = objects("Secret")["evalfleet-secrets"]["stringData"]
    return data


# --- the files -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert kustomization()["namespace"] == "evalfleet"


def _kubernetes_versions() -> list[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        return ["missing"]
    import kubernetes_validate  # type: ignore[import-untyped]

    bundled = sorted(
        (p.name.removeprefix("v").removesuffix("-local-strict") for p in _schema_dirs()),
        key=lambda v: tuple(int(n) for n in v.split(".")),
    )
    # The oldest release these manifests target (policy/v1, autoscaling/v2, startupProbe and
    # seccompProfile are all older), and the newest the validator knows.
    return sorted(
        {"1.28.0" if "1.28.0" in bundled else bundled[0], kubernetes_validate.latest_version()}
    )


def _schema_dirs() -> list[Path]:
    spec = importlib.util.find_spec("kubernetes_validate")
    assert spec is not None and spec.origin is not None
    return list((Path(spec.origin).parent / "kubernetes-json-schema").glob("v*-local-strict"))


@pytest.mark.skipif(
    importlib.util.find_spec("kubernetes_validate") is None,
    reason="kubernetes-validate not installed (PyPI, in the dev extra)",
)
@pytest.mark.parametrize("version", _kubernetes_versions())
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    """Strict: an unknown field (a typo such as `readinesProbe`) is an error, not ignored."""
    import kubernetes_validate

    checked = 0
    for name, doc in documents():
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 15


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


@pytest.mark.skipif(
    not (
        _installed("cloudcoil.models.keda") and _installed("cloudcoil.models.prometheus_operator")
    ),
    reason="cloudcoil-models-keda / -prometheus-operator not installed (PyPI, in the dev extra)",
)
def test_custom_resources_match_their_crd_schemas() -> None:
    """ScaledObject, ServiceMonitor and PrometheusRule against models generated from the KEDA and
    Prometheus Operator CRDs: types, required fields, apiVersion; a field the CRD does not know
    is dropped by the model, so a round trip that loses anything is an unknown field."""
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    models: dict[str, Any] = {
        "ScaledObject": keda.ScaledObject,
        "ServiceMonitor": monitoring.ServiceMonitor,
        "PrometheusRule": monitoring.PrometheusRule,
    }
    seen = set()
    for name, doc in documents():
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            assert doc["kind"] not in models, f"{name}: {doc['kind']} {doc['apiVersion']}"
            continue
        model = models[doc["kind"]].model_validate(doc)
        back = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert back == doc, f"{name}: {doc['kind']}/{doc['metadata']['name']} has unknown fields"
        seen.add(doc["kind"])
    assert seen == set(models)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (for `kubectl kustomize`)")
def test_kustomize_renders_every_object_into_the_namespace() -> None:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == len(documents())
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "evalfleet", doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            assert container(doc)["image"] == "evalfleet:" + kustomization()["images"][0]["newTag"]


def test_prometheusrule_holds_the_alerts_of_alerts_yml() -> None:
    """Generated by deploy/kubernetes/sync_alerts.py from the promtool-tested alerts.yml."""
    script = runpy.run_path(str(K8S / "sync_alerts.py"))
    alerts_text = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    assert (K8S / "prometheusrule.yaml").read_text() == script["render"](alerts_text), (
        "prometheusrule.yaml is out of date: python deploy/kubernetes/sync_alerts.py"
    )
    (rule,) = objects("PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load(alerts_text)


# --- agreement with the code -----------------------------------------------------------------


def test_every_process_runs_as_the_readme_says() -> None:
    found = deployments()
    assert set(found) == set(PROCESSES)
    for component, args in PROCESSES.items():
        assert container(found[component])["args"] == args, component
    procfile = (ROOT / "Procfile").read_text()
    for args in PROCESSES.values():
        assert args[0] in procfile


def test_settings_in_the_configmap_secrets_in_the_secret() -> None:
    data, secrets = config(), secret()
    assert not SECRETS & set(data), "a secret in the ConfigMap"
    assert set(secrets) == SECRETS
    for name in [*data, *secrets]:
        if name.startswith("EVALFLEET_"):
            assert name.removeprefix("EVALFLEET_").lower() in Settings.model_fields, name
        else:
            assert name.startswith(("LANGFUSE_", "OTEL_")), name
    for component, deployment in deployments().items():
        spec = container(deployment)
        assert spec["envFrom"] == [{"configMapRef": {"name": "evalfleet-config"}}], component
        for variable in spec.get("env", []):
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "evalfleet-secrets" and ref["key"] == variable["name"]
            assert ref["key"] in secrets, component
            # Only the database URL is required: every other secret turns a feature on.
            assert ref.get("optional", False) == (ref["key"] != "EVALFLEET_DATABASE_URL")
    needs = {
        "EVALFLEET_JUDGE_API_KEY": {"judge-worker", "judge-backfill-worker"},
        "EVALFLEET_REVIEWER_TOKENS": {"review-api"},
        "EVALFLEET_OTLP_TOKEN": {"otlp-receiver"},
        # The review API queues human labels for Langfuse as annotation scores.
        "LANGFUSE_SECRET_KEY": {
            "worker",
            "judge-worker",
            "judge-backfill-worker",
            "relay",
            "review-api",
        },
        "EVALFLEET_DATABASE_URL": set(PROCESSES) - {"otlp-receiver"},
    }
    for key, components in needs.items():
        given = {
            c
            for c, d in deployments().items()
            for v in container(d).get("env", [])
            if v["name"] == key
        }
        assert given == components, key


def test_the_configured_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("EVALFLEET_", "LANGFUSE_", "OPENAI_")):
            monkeypatch.delenv(name)
    for name, value in {**config(), **secret()}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.metrics_port == 9108
    assert settings.broker_url is None, "queues and streams in one database (see config.yaml)"
    assert settings.judge_endpoint_configured  # the sampler sends sampled traces to the judges
    from evaluator.sinks.langfuse import LangfuseSettings

    assert not LangfuseSettings().enabled  # until both keys are filled in


def _redis_target() -> tuple[str, str]:
    url = urlparse(config()["EVALFLEET_REDIS_URL"])
    return f"{url.hostname}:{url.port or 6379}", (url.path.lstrip("/") or "0")


def test_keda_scales_the_workers_on_their_queues_and_the_sampler_on_its_lag() -> None:
    address, database = _redis_target()
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]: doc for doc in objects("ScaledObject").values()
    }
    by_name = {d["metadata"]["name"]: (c, d) for c, d in deployments().items()}
    queues = {}
    for target, scaled_object in scaled.items():
        assert target in by_name, f"ScaledObject for a Deployment that does not exist: {target}"
        component, deployment = by_name[target]
        assert "replicas" not in deployment["spec"], f"{target}: KEDA owns its replica count"
        spec = scaled_object["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert metadata["address"] == address and metadata["databaseIndex"] == database, target
        assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata are strings"
        if trigger["type"] == "redis":
            assert int(metadata["listLength"]) > 0
            args = container(deployment)["args"]
            assert metadata["listName"] == args[args.index("--queues") + 1], target
            queues[metadata["listName"]] = spec
        else:
            assert trigger["type"] == "redis-streams" and component == "sampler"
            assert metadata["stream"] == TRACES_STREAM
            assert metadata["consumerGroup"] == SAMPLER_GROUP
            assert int(metadata["lagCount"]) > 0
            assert spec["maxReplicaCount"] <= 3  # 1-3 samplers per stream
    assert set(queues) == {HEURISTICS_QUEUE, JUDGES_QUEUE, JUDGES_BACKFILL_QUEUE}
    assert "sampler" in {by_name[t][0] for t in scaled}
    assert queues[JUDGES_BACKFILL_QUEUE]["minReplicaCount"] == 0  # idle otherwise
    assert queues[HEURISTICS_QUEUE]["minReplicaCount"] >= 1
    assert queues[JUDGES_QUEUE]["minReplicaCount"] >= 1


def _port(component: str) -> int:
    args = PROCESSES[component]
    return (
        int(args[args.index("--port") + 1])
        if "--port" in args
        else int(config()["EVALFLEET_METRICS_PORT"])
    )


def test_probes_liveness_on_healthz_readiness_on_readyz() -> None:
    for component, deployment in deployments().items():
        spec = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            get = spec[probe]["httpGet"]
            assert get["path"] == path, (component, probe)
            assert ports[get["port"]] == _port(component), (component, probe)


@pytest.fixture
def process_server() -> Iterator[int]:
    import socket

    from evaluator.ops.health import Readiness, serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = serve(port, Readiness("test"), host="127.0.0.1")
    yield port
    server.shutdown()
    server.server_close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except HTTPError as exc:
        return exc.code


def test_the_probed_paths_are_served(
    process_server: int, redis_client: redis.Redis, redis_url: str, sqlite_url: str
) -> None:
    """Each path a probe asks, on the server that answers it: the metrics server of sampler,
    workers and relay (evaluator.ops.health), the review API and the OTLP receiver."""
    from evaluator.ingest.receiver import create_receiver_app
    from evaluator.review.api import create_app
    from evaluator.review.queue import ReviewQueue
    from evaluator.sinks.sql import SQLStore

    base = f"http://127.0.0.1:{process_server}"
    assert _status(base + "/healthz") == 200
    assert _status(base + "/readyz") in (200, 503)
    assert _status(base + "/metrics") == 200

    settings = Settings(redis_url=redis_url, database_url=sqlite_url)
    store = SQLStore(settings.sqlalchemy_url)
    apps = {
        "review-api": create_app(ReviewQueue(redis_client, store, lease_s=60), settings),
        "otlp-receiver": create_receiver_app(redis_client, settings, flush=False),
    }
    try:
        for component, app in apps.items():
            spec = container(deployments()[component])
            with TestClient(app) as client:
                for probe in ("livenessProbe", "readinessProbe"):
                    path = spec[probe]["httpGet"]["path"]
                    assert client.get(path).status_code in (200, 503), (component, path)
                # /metrics on the http port needs the token where one is set (the review API's
                # always is); Prometheus scrapes the metrics port instead (below).
                expected = 401 if component == "review-api" else 200
                assert client.get("/metrics").status_code == expected, component
                assert "metrics" in {p["name"] for p in spec["ports"]}, component
    finally:
        store.close()


def test_servicemonitor_scrapes_every_process() -> None:
    (monitor,) = objects("ServiceMonitor").values()
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    services = [
        s
        for s in objects("Service").values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    for component, deployment in deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"] for p in container(deployment)["ports"]}
        scraped = [
            port
            for service in services
            if service["spec"]["selector"].items() <= labels.items()
            for port in service["spec"]["ports"]
            if port["name"] in endpoint_ports and port["targetPort"] in ports
        ]
        assert scraped, f"no ServiceMonitor endpoint reaches {component}'s /metrics"


def test_pods_run_unprivileged_with_a_read_only_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for component, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile, component
        spec = container(deployment)
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Writable /tmp: the prefork workers' metric files, and anything else temporary.
        assert {"name": "tmp", "mountPath": "/tmp"} in spec["volumeMounts"], component
        assert "requests" in spec["resources"] and "limits" in spec["resources"], component
