"""The operator on the real cluster: Function -> pods, versions, aliases, errors, restarts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.kube import (
    PLATFORM_NAMESPACE,
    apply,
    condition_status,
    function_pod_url,
    get,
    invoke,
    kubectl,
    names,
    platform_pods,
    wait_for_condition,
    wait_until,
)

EXAMPLE = yaml.safe_load(Path(REPO_ROOT / "examples" / "hello-python.yaml").read_text())
ECHO_CODE = {
    "app.py": "import os\n\ndef handler(event, context):\n"
    "    return {'event': event, 'version': context.function_version,"
    " 'memory': context.memory_limit_in_mb, 'greeting': os.environ.get('GREETING')}\n"
}


def function(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"inline": ECHO_CODE}}
        | spec,
    }


def owned(namespace: str, name: str) -> dict[str, list[str]]:
    selector = f"kubelambda.io/function={name}"
    return {
        kind: names(kind, namespace, selector)
        for kind in ("deployments", "services", "configmaps", "controllerrevisions")
    }


def test_example_function_becomes_ready_and_answers(namespace: str) -> None:
    apply(EXAMPLE, namespace)
    body = wait_for_condition("function", "hello-python", namespace)
    assert condition_status(body, "Configured") == "True"
    assert body["status"]["replicas"] == {"desired": 1, "ready": 1}
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    status, headers, payload = invoke(
        function_pod_url("hello-python", namespace), b'{"name": "e2e"}'
    )
    assert status == 200, payload
    assert headers["X-Amz-Executed-Version"] == "$LATEST"
    assert json.loads(json.loads(payload)["body"])["message"] == "hello, e2e"
    table = kubectl("get", "functions", "-n", namespace)
    assert table.split("\n")[0].split()[:4] == ["NAME", "READY", "VERSION", "REPLICAS"]
    assert "True" in table.split("\n")[1]


def test_function_pod_is_locked_down(namespace: str) -> None:
    apply(function("locked", memoryMB=256, ephemeralStorageMB=1024), namespace)
    wait_for_condition("function", "locked", namespace)
    pod = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", "kubelambda.io/function=locked", "-o", "json")
    )["items"][0]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not any(
        m["mountPath"].startswith("/var/run/secrets") for m in spec["containers"][0]["volumeMounts"]
    )
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # memoryMB + the tmpfs /tmp + the agent's 64 MiB; the agent holds the runtime to memoryMB.
    assert container["resources"]["limits"]["memory"] == "1344Mi"
    assert container["resources"]["requests"]["memory"] == "256Mi"
    assert container["resources"]["requests"]["cpu"] == "145m"
    code_mounts = [m for m in container["volumeMounts"] if m["mountPath"].startswith("/var/task/")]
    assert [m["mountPath"] for m in code_mounts] == ["/var/task/app.py"]
    assert all(m["readOnly"] is True for m in code_mounts)
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    # The kernel sizes the tmpfs itself: writes past it fail with ENOSPC.
    mounts = kubectl("exec", "-n", namespace, pod["metadata"]["name"], "--", "cat", "/proc/mounts")
    tmp_mount = next(line for line in mounts.splitlines() if line.split()[1] == "/tmp")
    assert tmp_mount.split()[2] == "tmpfs"
    assert "size=1048576k" in tmp_mount
    # The running process really is unprivileged: uid 10001, no capabilities.
    status_lines = kubectl(
        "exec", "-n", namespace, pod["metadata"]["name"], "--", "cat", "/proc/1/status"
    )
    fields = dict(line.split(":", 1) for line in status_lines.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == "10001"
    assert int(fields["CapEff"].strip(), 16) == 0


def test_environment_and_secret_reach_the_function(namespace: str) -> None:
    kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=token=s3cret")
    code = {
        "app.py": "import os\ndef handler(event, context):\n"
        "    return [os.environ['GREETING'], os.environ['TOKEN']]\n"
    }
    apply(
        function(
            "env",
            code={"inline": code},
            environment={
                "variables": {"GREETING": "hi"},
                "fromSecrets": [
                    {"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}
                ],
            },
        ),
        namespace,
    )
    wait_for_condition("function", "env", namespace)
    status, _, payload = invoke(function_pod_url("env", namespace))
    assert (status, json.loads(payload)) == (200, ["hi", "s3cret"])


def test_versions_are_published_and_kept_while_an_alias_uses_them(namespace: str) -> None:
    apply(function("versioned", publish=True), namespace)
    body = wait_for_condition("function", "versioned", namespace)
    assert body["status"]["latestVersion"] == 1
    alias = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Alias",
        "metadata": {"name": "versioned-prod"},
        "spec": {"function": "versioned", "name": "prod", "version": "1"},
    }
    apply(alias, namespace)
    wait_for_condition("alias", "versioned-prod", namespace, timeout=60)
    wait_until(
        lambda: "fn-versioned-v1" in names("deployments", namespace, "kubelambda.io/function"),
        60,
        "the Deployment of version 1",
    )

    # A new spec publishes version 2; $LATEST follows it; version 1 keeps its own pods.
    apply(function("versioned", publish=True, memoryMB=256), namespace)
    wait_until(
        lambda: get("function", "versioned", namespace)["status"]["latestVersion"] == 2,
        60,
        "version 2",
    )
    wait_for_condition("function", "versioned", namespace)
    _, _, v1_payload = invoke(function_pod_url("versioned", namespace, "v1"))
    assert json.loads(v1_payload)["memory"] == "128"
    assert json.loads(v1_payload)["version"] == "1"
    wait_until(
        lambda: json.loads(invoke(function_pod_url("versioned", namespace))[2])["memory"] == "256",
        90,
        "$LATEST to roll out with 256 MB",
    )

    # Re-applying the same spec publishes nothing new.
    apply(function("versioned", publish=True, memoryMB=256), namespace)
    revisions = names("controllerrevisions", namespace, "kubelambda.io/function=versioned")
    assert revisions == ["fn-versioned-r1", "fn-versioned-r2"]

    # Once no alias uses version 1, its Deployment and Service go.
    kubectl("delete", "alias", "versioned-prod", "-n", namespace)
    wait_until(
        lambda: owned(namespace, "versioned")["deployments"] == ["fn-versioned-latest"],
        60,
        "version 1's Deployment to be removed",
    )
    assert owned(namespace, "versioned")["services"] == ["fn-versioned-latest"]


def test_inline_code_travels_in_the_pods_and_new_code_rolls_out(namespace: str) -> None:
    """No ConfigMap holds inline code: each pod carries its files in its annotations, so the
    kubelet starts it without fetching another object."""
    warm = {"scaling": {"minInstances": 1}}
    for round_ in range(2):
        code = {"app.py": f"def handler(event, context):\n    return {round_}\n"}
        apply(function("recoded", code={"inline": code}, **warm), namespace)
        wait_until(
            lambda round_=round_: (
                invoke(function_pod_url("recoded", namespace))[2] == str(round_).encode()
            ),
            90,
            f"code round {round_} to roll out",
        )
        template = get("deployment", "fn-recoded-latest", namespace)["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "files.kubelambda.io/code-0.f000": code["app.py"]
        }
        assert not [v for v in template["spec"]["volumes"] if "configMap" in v]
    assert owned(namespace, "recoded")["configmaps"] == []


def test_missing_layer_is_reported_then_resolved_without_crash_loop(namespace: str) -> None:
    restarts_before = operator_restarts()
    apply(function("layered", layers=[{"name": "shared", "version": 1}]), namespace)
    body = wait_until(
        lambda: (
            (b := get("function", "layered", namespace))
            and condition_status(b, "Configured") == "False"
            and b
        ),
        60,
        "the LayerNotFound condition",
    )
    configured = next(c for c in body["status"]["conditions"] if c["type"] == "Configured")
    assert configured["reason"] == "LayerNotFound"
    assert "layer shared version 1" in configured["message"]
    assert condition_status(body, "Ready") == "False"

    layer = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Layer",
        "metadata": {"name": "shared"},
        "spec": {"content": {"inline": {"python/shared.py": "VALUE = 42\n"}}},
    }
    apply(layer, namespace)
    wait_for_condition("layer", "shared", namespace)
    wait_for_condition("function", "layered", namespace, timeout=90)
    assert operator_restarts() == restarts_before


def operator_restarts() -> int:
    pods = platform_pods("operator")
    return sum(s["restartCount"] for p in pods for s in p["status"].get("containerStatuses", []))


def test_operator_killed_mid_reconcile_converges_without_duplicates(namespace: str) -> None:
    count = 8
    apply([function(f"burst-{i}", publish=True) for i in range(count)], namespace)
    # Kill the operator while it works through the burst; its replacement must finish the job.
    kubectl(
        "delete",
        "pod",
        "-n",
        PLATFORM_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=operator",
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    for i in range(count):
        wait_for_condition("function", f"burst-{i}", namespace, timeout=180)
    for i in range(count):
        # Both status writers (reconcile and readiness) keep their conditions.
        assert condition_status(get("function", f"burst-{i}", namespace), "Configured") == "True"
        children = owned(namespace, f"burst-{i}")
        assert children["deployments"] == [f"fn-burst-{i}-latest"]
        assert children["services"] == [f"fn-burst-{i}-latest"]
        assert children["configmaps"] == []  # inline code travels in the pods
        assert children["controllerrevisions"] == [f"fn-burst-{i}-r1"]
        pods = names("pods", namespace, f"kubelambda.io/function=burst-{i}")
        assert len(pods) == 1


def test_deleting_a_function_removes_everything_it_owns(namespace: str) -> None:
    apply(function("doomed", publish=True), namespace)
    wait_for_condition("function", "doomed", namespace)
    children = owned(namespace, "doomed")
    assert all(children[kind] for kind in ("deployments", "services", "controllerrevisions"))
    kubectl("delete", "function", "doomed", "-n", namespace)
    wait_until(
        lambda: (
            not any(owned(namespace, "doomed").values())
            and not names("pods", namespace, "kubelambda.io/function=doomed")
        ),
        90,
        "garbage collection of the function's objects",
    )


def test_invalid_specs_never_reach_the_operator(namespace: str) -> None:
    bad = copy.deepcopy(function("toolarge", memoryMB=20000))
    with pytest.raises(Exception, match=r"memoryMB"):
        apply(bad, namespace)
