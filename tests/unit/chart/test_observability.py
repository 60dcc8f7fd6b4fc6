"""Observability: the chart's optional ServiceMonitor and dashboard ConfigMap, the Grafana
dashboard's queries and docs/metrics.md, checked against the metrics the code defines."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubelambda"
DASHBOARD = CHART / "dashboards" / "kubelambda.json"
DOCS = REPO / "docs" / "metrics.md"
SOURCE = REPO / "operator" / "kubelambda"

# A metric declared in the source: prometheus_client's Counter / Gauge / Histogram / Summary or
# a custom collector's *MetricFamily, with its name as the first (string literal) argument.
DECLARATION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*\"(kubelambda_[a-z0-9_]+)\""
)
# A metric name in a query or in the docs ("kubelambda_gateway_*" in prose is no name).
NAME = re.compile(r"\bkubelambda_[a-z0-9_]*[a-z0-9](?![a-z0-9_]*\*)")
SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum"),
    "Summary": ("", "_count", "_sum"),
}


def defined_metrics() -> dict[str, str]:
    """Base name -> type of every metric declared under operator/kubelambda."""
    found: dict[str, str] = {}
    for path in SOURCE.rglob("*.py"):
        for kind, name in DECLARATION.findall(path.read_text()):
            base = name.removesuffix("_total") if kind == "Counter" else name
            assert found.get(base, kind) == kind, f"{base} declared as two types"
            found[base] = kind
    return found


def exposed_names() -> dict[str, str]:
    """Every series name Prometheus stores for those metrics -> its base name."""
    return {
        base + suffix: base for base, kind in defined_metrics().items() for suffix in SUFFIXES[kind]
    }


def helm(*args: str) -> str:
    result = subprocess.run(["helm", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", "kl", str(CHART), "-n", "kl"]
    for value in sets:
        args += ["--set", value]
    for api in api_versions:
        args += ["--api-versions", api]
    return [o for o in yaml.safe_load_all(helm(*args)) if o is not None]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


# --- the metric inventory the other tests rely on


def test_the_code_defines_the_metrics_of_every_component() -> None:
    metrics = defined_metrics()
    prefixes = {name.split("_")[1] for name in metrics}
    assert prefixes == {"gateway", "invoker", "autoscaler"}
    assert len(metrics) >= 20
    assert metrics["kubelambda_gateway_invocation_duration_seconds"] == "Histogram"
    assert metrics["kubelambda_gateway_invocations"] == "Counter"
    assert metrics["kubelambda_invoker_dlq_depth"] == "Gauge"
    assert metrics["kubelambda_autoscaler_desired_replicas"] == "Gauge"


# --- ServiceMonitor


def test_no_service_monitor_or_dashboard_by_default() -> None:
    for api_versions in ((), ("monitoring.coreos.com/v1",)):
        objects = render(api_versions=api_versions)
        assert not of_kind(objects, "ServiceMonitor")
        assert not [
            o
            for o in of_kind(objects, "ConfigMap")
            if "grafana_dashboard" in o["metadata"]["labels"]
        ]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_service_monitor_scrapes_gateway_invoker_and_autoscaler() -> None:
    objects = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    )
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "kl"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["kl"]}
    endpoints = {e["port"]: e for e in spec["endpoints"]}
    assert set(endpoints) == {"metrics", "autoscaler"}
    for endpoint in endpoints.values():
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"] == "15s"
        # The metrics' namespace label (the function's) must not become exported_namespace.
        assert endpoint["honorLabels"] is True

    services = {
        s["metadata"]["name"]: s
        for s in of_kind(objects, "Service")
        if _matches(spec["selector"], s["metadata"]["labels"])
    }
    assert set(services) == {"kl-gateway", "kl-invoker", "kl-autoscaler"}
    scraped = {
        name: {p["port"] for p in s["spec"]["ports"] if p["name"] in endpoints}
        for name, s in services.items()
    }
    assert scraped == {"kl-gateway": {9090}, "kl-invoker": {9090}, "kl-autoscaler": {8082}}

    # The Services' target ports are named container ports of the pods they select.
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    for name, deployment in (
        ("kl-gateway", "kl-gateway"),
        ("kl-invoker", "kl-invoker"),
        ("kl-autoscaler", "kl-operator"),
    ):
        container_ports = {
            p["name"]: p["containerPort"]
            for c in deployments[deployment]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in services[name]["spec"]["ports"]:
            if port["name"] in endpoints:
                assert container_ports[port["targetPort"]] == port["port"]


def test_service_monitor_auto_follows_the_cluster_api() -> None:
    auto = "metrics.serviceMonitor.enabled=auto"
    assert not of_kind(render(auto), "ServiceMonitor")
    assert of_kind(render(auto, api_versions=("monitoring.coreos.com/v1",)), "ServiceMonitor")
    # true renders whatever the cluster serves (helm template knows nothing of it).
    assert of_kind(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")


def test_service_monitor_enabled_rejects_other_values() -> None:
    result = subprocess.run(
        ["helm", "template", "x", str(CHART), "--set", "metrics.serviceMonitor.enabled=yes"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "enabled" in result.stderr


# --- dashboard ConfigMap


def test_dashboard_config_map_carries_the_dashboard() -> None:
    objects = render(
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.namespace=monitoring",
        "metrics.dashboard.annotations.grafana_folder=kubelambda",
    )
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"] == "kl-dashboard"
    ]
    metadata = config_map["metadata"]
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["labels"]["app.kubernetes.io/name"] == "kubelambda"
    assert metadata["namespace"] == "monitoring"
    assert metadata["annotations"] == {"grafana_folder": "kubelambda"}
    assert json.loads(config_map["data"]["kubelambda.json"]) == dashboard()
    assert not of_kind(objects, "ServiceMonitor")


def test_dashboard_labels_can_override_the_sidecar_label() -> None:
    objects = render(
        "metrics.dashboard.enabled=true", "metrics.dashboard.labels.grafana_dashboard=kl"
    )
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"] == "kl-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "kl"
    assert config_map["metadata"]["namespace"] == "kl"


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("metrics.serviceMonitor.enabled=true", "metrics.dashboard.enabled=true"),
        ("metrics.serviceMonitor.enabled=auto",),
    ],
)
def test_helm_lint_strict_with_metrics_options(sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in sets:
        args += ["--set", value]
    assert "0 chart(s) failed" in helm(*args)


# --- the dashboard itself


def test_dashboard_is_a_templated_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "kubelambda"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "function"} <= set(variables)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_only_metrics_the_code_defines() -> None:
    exposed = exposed_names()
    used: set[str] = set()
    for expr in expressions(dashboard()):
        names = set(NAME.findall(expr))
        assert names, f"no kubelambda metric in {expr!r}"
        unknown = names - set(exposed)
        assert not unknown, f"{expr!r} uses metrics the code does not define: {sorted(unknown)}"
        used |= {exposed[n] for n in names}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert set(NAME.findall(variable["definition"])) <= set(exposed)
    # The panels the issue asks for: every component's key series is on the dashboard.
    for base in (
        "kubelambda_gateway_invocations",
        "kubelambda_gateway_invocation_errors",
        "kubelambda_gateway_invocation_duration_seconds",
        "kubelambda_gateway_throttles",
        "kubelambda_gateway_in_flight",
        "kubelambda_gateway_queued",
        "kubelambda_gateway_cold_start_seconds",
        "kubelambda_invoker_queue_depth",
        "kubelambda_invoker_oldest_event_age_seconds",
        "kubelambda_invoker_retries",
        "kubelambda_invoker_dlq_depth",
        "kubelambda_invoker_destination_failures",
        "kubelambda_invoker_schedule_fires",
        "kubelambda_autoscaler_desired_replicas",
        "kubelambda_autoscaler_demand",
    ):
        assert base in used, f"the dashboard does not show {base}"


def test_dashboard_queries_filter_by_the_variables() -> None:
    unfiltered = {
        "kubelambda_gateway_rejected_requests",
        "kubelambda_invoker_queue_latency_seconds",
        "kubelambda_autoscaler_decisions",
        "kubelambda_autoscaler_reports",
        "kubelambda_autoscaler_wakes",
    }  # no namespace / function labels
    exposed = exposed_names()
    for expr in expressions(dashboard()):
        if {exposed[n] for n in NAME.findall(expr)} <= unfiltered:
            continue
        assert 'namespace=~"$namespace"' in expr, expr
        assert 'function=~"$function"' in expr, expr


# --- docs/metrics.md


def test_docs_list_every_metric_the_code_defines() -> None:
    text = DOCS.read_text()
    for base, kind in defined_metrics().items():
        assert f"`{base}{SUFFIXES[kind][0]}`" in text, f"docs/metrics.md lacks {base} ({kind})"


def test_docs_name_only_metrics_the_code_defines() -> None:
    exposed = exposed_names()
    unknown = set(NAME.findall(DOCS.read_text())) - set(exposed)
    assert not unknown, f"docs/metrics.md names metrics the code does not define: {sorted(unknown)}"
