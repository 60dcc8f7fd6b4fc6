"""The Helm chart: lint-clean, and the generated files it ships stay in sync with their sources."""

from __future__ import annotations

import runpy
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubelambda"


def helm(*args: str) -> str:
    result = subprocess.run(["helm", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_helm_lint_strict_is_clean() -> None:
    output = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in output


def test_values_schema_rejects_unknown_values() -> None:
    result = subprocess.run(
        ["helm", "template", "x", str(CHART), "--set", "operator.replica=2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "replica" in result.stderr


def test_chart_crds_match_crds_folder() -> None:
    render = runpy.run_path(str(REPO / "hack" / "chart_crds.py"))["render"]
    assert (CHART / "templates" / "crds.yaml").read_text() == render(), "run `make crds`"


def test_kubectl_bundle_matches_the_chart() -> None:
    bundle = (REPO / "deploy" / "kubelambda.yaml").read_text()
    rendered = helm(
        "template",
        "kubelambda",
        str(CHART),
        "--namespace",
        "kubelambda-system",
        "--set",
        "store.createSecret=false",
        "--set",
        "invoker.createSecret=false",
    )
    assert rendered in bundle, "run `make bundle`"


def test_rendered_objects_are_labelled_and_least_privileged() -> None:
    objects = [
        o
        for o in yaml.safe_load_all(helm("template", "kl", str(CHART), "-n", "kl"))
        if o is not None
    ]
    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition":
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "kubelambda"
    roles = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] == "ClusterRole"}
    assert set(roles) == {"kl-operator", "kl-gateway", "kl-invoker"}
    for rules in roles.values():
        assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in rules)
    # Only the gateway touches Secrets: those API-key routes name, by name, never listed.
    secret_rules = [
        (name, rule["verbs"])
        for name, rules in roles.items()
        for rule in rules
        if "secrets" in rule["resources"]
    ]
    assert secret_rules == [("kl-gateway", ["get"])]
    invoker_verbs = {verb for rule in roles["kl-invoker"] for verb in rule["verbs"]}
    assert invoker_verbs == {"get", "list", "watch"}
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 4
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
