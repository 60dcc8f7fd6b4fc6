"""Installing, upgrading and removing the platform with Helm and with the kubectl bundle.

These tests uninstall the platform, so conftest orders this module last; the final test
reinstalls it with Helm.
"""

from __future__ import annotations

import json
import secrets
import subprocess

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.kube import (
    PLATFORM_NAMESPACE,
    KubectlError,
    apply,
    get,
    kubectl,
    wait_for_condition,
    wait_until,
)
from tests.e2e.test_operator import function

BUNDLE = str(REPO_ROOT / "deploy" / "kubelambda.yaml")
CLUSTER_OBJECTS = [
    ("clusterrole", "kubelambda-operator"),
    ("clusterrolebinding", "kubelambda-operator"),
    ("clusterrole", "kubelambda-gateway"),
    ("clusterrolebinding", "kubelambda-gateway"),
    ("clusterrole", "kubelambda-invoker"),
    ("clusterrolebinding", "kubelambda-invoker"),
]


def helm(*args: str) -> str:
    result = subprocess.run(["helm", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def exists(kind: str, name: str, namespace: str | None = None) -> bool:
    try:
        get(kind, name, namespace)
    except KubectlError:
        return False
    return True


def operator_env() -> dict[str, str]:
    deployment = get("deployment", "kubelambda-operator", PLATFORM_NAMESPACE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def wait_operator_ready() -> None:
    kubectl(
        "rollout",
        "status",
        "deployment/kubelambda-operator",
        "-n",
        PLATFORM_NAMESPACE,
        "--timeout=180s",
        timeout=200,
    )


def test_helm_upgrade_keeps_functions_serving(namespace: str) -> None:
    apply(function("survivor"), namespace)
    wait_for_condition("function", "survivor", namespace)
    helm(
        "upgrade",
        "kubelambda",
        str(REPO_ROOT / "charts" / "kubelambda"),
        "-n",
        PLATFORM_NAMESPACE,
        "--reuse-values",
        "--set",
        "operator.logLevel=debug",
        "--wait",
    )
    wait_operator_ready()
    assert operator_env()["KUBELAMBDA_LOG_LEVEL"] == "debug"
    history = json.loads(helm("history", "kubelambda", "-n", PLATFORM_NAMESPACE, "-o", "json"))
    assert history[-1]["status"] == "deployed"
    # The new operator still reconciles: a change to the function rolls out.
    apply(function("survivor", memoryMB=192), namespace)
    wait_until(
        lambda: (
            get("deployment", "fn-survivor-latest", namespace)["spec"]["template"]["spec"][
                "containers"
            ][0]["resources"]["requests"]["memory"]
            == "192Mi"
        ),
        60,
        "the upgraded operator to apply the new memory size",
    )


def test_helm_uninstall_removes_the_platform_but_keeps_user_objects(namespace: str) -> None:
    apply(function("kept"), namespace)
    wait_for_condition("function", "kept", namespace)
    helm("uninstall", "kubelambda", "-n", PLATFORM_NAMESPACE, "--wait")
    assert not exists("deployment", "kubelambda-operator", PLATFORM_NAMESPACE)
    assert not exists("serviceaccount", "kubelambda-operator", PLATFORM_NAMESPACE)
    for kind, name in CLUSTER_OBJECTS:
        assert not exists(kind, name)
    # CRDs carry helm.sh/resource-policy: keep, so users' functions survive an uninstall.
    assert exists("crd", "functions.kubelambda.io")
    assert exists("function", "kept", namespace)


def test_kubectl_bundle_installs_and_removes_cleanly(namespace: str) -> None:
    # The steps the bundle's header gives: the store's tokens first, then the bundle.
    if not exists("namespace", PLATFORM_NAMESPACE):
        kubectl("create", "namespace", PLATFORM_NAMESPACE)
    kubectl(
        "-n",
        PLATFORM_NAMESPACE,
        "create",
        "secret",
        "generic",
        "kubelambda-store",
        f"--from-literal=uploadToken={secrets.token_hex(20)}",
        f"--from-literal=signingKey={secrets.token_hex(20)}",
    )
    kubectl(
        "-n",
        PLATFORM_NAMESPACE,
        "create",
        "secret",
        "generic",
        "kubelambda-invoker",
        f"--from-literal=adminToken={secrets.token_hex(20)}",
        f"--from-literal=internalToken={secrets.token_hex(20)}",
    )
    kubectl("apply", "--server-side", "--force-conflicts", "-f", BUNDLE)
    wait_operator_ready()
    apply(function("bundled"), namespace)
    wait_for_condition("function", "bundled", namespace)
    kubectl("delete", "-f", BUNDLE, "--wait=true", timeout=300)
    assert not exists("crd", "functions.kubelambda.io")
    assert not exists("namespace", PLATFORM_NAMESPACE)
    for kind, name in CLUSTER_OBJECTS:
        assert not exists(kind, name)


def test_helm_install_from_scratch() -> None:
    helm(
        "install",
        "kubelambda",
        str(REPO_ROOT / "charts" / "kubelambda"),
        "-n",
        PLATFORM_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    )
    wait_operator_ready()
    assert exists("crd", "functions.kubelambda.io")
    kubectl("wait", "--for=condition=Established", "crd/functions.kubelambda.io", "--timeout=60s")
