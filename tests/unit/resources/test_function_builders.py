"""Table tests of the pure builders: FunctionSpec in, Kubernetes objects out."""

from __future__ import annotations

from typing import Any

import pytest

from kubelambda.api import FunctionSpec
from kubelambda.resources.code import FileSet
from kubelambda.resources.function import (
    Workload,
    cpu_millicores,
    function_deployment,
    function_env,
    function_service,
    snapshot_sha256,
    version_revision,
    version_snapshot,
)

OWNER = {
    "apiVersion": "kubelambda.io/v1alpha1",
    "kind": "Function",
    "metadata": {"name": "hello", "uid": "0000-1111"},
}
INLINE = {"inline": {"app.py": "def handler(event, context):\n    return event\n"}}


def spec(**fields: Any) -> FunctionSpec:
    return FunctionSpec.model_validate(
        {"runtime": "python3.11", "handler": "app.handler", "code": INLINE} | fields
    )


def workload(function_spec: FunctionSpec, version: str = "$LATEST", **extra: Any) -> Workload:
    return Workload(
        function="hello",
        version=version,
        spec=function_spec,
        image="kubelambda/runtime-python3.11:dev",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:hello",
        owner=OWNER,
        code=None if function_spec.code.image else FileSet("fn-hello-code-abc", {"f000": "app.py"}),
        **extra,
    )


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("memory_mb", "millicores"), [(128, 73), (1769, 1000), (3538, 2000), (10240, 5789)]
)
def test_cpu_is_proportional_to_memory(memory_mb: int, millicores: int) -> None:
    assert cpu_millicores(memory_mb) == millicores


@pytest.mark.parametrize(
    ("version", "name", "version_label"),
    [("$LATEST", "fn-hello-latest", "latest"), ("3", "fn-hello-v3", "v3")],
)
def test_deployment_names_and_selectors(version: str, name: str, version_label: str) -> None:
    deployment = function_deployment(workload(spec(), version))
    assert deployment["metadata"]["name"] == name
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"kubelambda.io/function": "hello", "kubelambda.io/version": version_label}
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "0000-1111"
    service = function_service("hello", version, OWNER)
    assert service["metadata"]["name"] == name
    assert service["spec"]["selector"] == selector


def test_pod_is_locked_down() -> None:
    pod = pod_spec(function_deployment(workload(spec())))
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]["securityContext"]
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize(
    ("fields", "memory", "tmp_limit", "grace"),
    [
        ({}, "128Mi", "512Mi", 8),
        (
            {"memoryMB": 1024, "ephemeralStorageMB": 2048, "timeoutSeconds": 60},
            "1024Mi",
            "2048Mi",
            65,
        ),
    ],
)
def test_resources_tmp_and_grace(
    fields: dict[str, Any], memory: str, tmp_limit: str, grace: int
) -> None:
    pod = pod_spec(function_deployment(workload(spec(**fields))))
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"memory": memory}
    assert resources["requests"]["memory"] == memory
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == tmp_limit
    assert pod["terminationGracePeriodSeconds"] == grace


@pytest.mark.parametrize(
    ("code", "mounts"),
    [
        (INLINE, {"/tmp": None, "/var/task/app.py": True}),
        ({"image": "example/fn:1"}, {"/tmp": None}),
    ],
)
def test_code_is_mounted_read_only(code: dict[str, Any], mounts: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"code": code}
    if "image" in code:
        fields |= {"runtime": None, "handler": None}
    function_spec = FunctionSpec.model_validate(
        {
            k: v
            for k, v in ({"runtime": "python3.11", "handler": "app.handler"} | fields).items()
            if v
        }
    )
    pod = pod_spec(function_deployment(workload(function_spec)))
    found = {m["mountPath"]: m.get("readOnly") for m in pod["containers"][0]["volumeMounts"]}
    assert found == mounts


def test_layers_mount_at_opt_file_by_file_later_layer_wins() -> None:
    layers = (
        FileSet("layer-a-v1", {"f000": "python/lib.py", "f001": "bin/tool"}),
        FileSet("layer-b-v2", {"f000": "python/lib.py"}),
    )
    pod = pod_spec(function_deployment(workload(spec(), layers=layers)))
    volumes = {v["name"]: v["configMap"] for v in pod["volumes"] if "configMap" in v}
    mounts = {
        m["mountPath"]: (volumes[m["name"]]["name"], m["subPath"], m["readOnly"])
        for m in pod["containers"][0]["volumeMounts"]
        if m["mountPath"].startswith("/opt/")
    }
    assert mounts == {
        "/opt/python/lib.py": ("layer-b-v2", "f000", True),
        "/opt/bin/tool": ("layer-a-v1", "f001", True),
    }
    modes = {
        (cm["name"], item["key"]): item["mode"] for cm in volumes.values() for item in cm["items"]
    }
    assert modes[("layer-a-v1", "f001")] == 0o555
    assert modes[("layer-b-v2", "f000")] == 0o444
    # The losing copy of python/lib.py is not mounted at all.
    assert ("layer-a-v1", "f000") not in modes


def test_environment_platform_user_and_secret_variables() -> None:
    function_spec = spec(
        environment={
            "variables": {"GREETING": "hi"},
            "fromSecrets": [{"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}],
        },
        memoryMB=256,
    )
    env = {e["name"]: e for e in function_env(workload(function_spec, "2"))}
    assert env["AWS_LAMBDA_FUNCTION_VERSION"]["value"] == "2"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]["value"] == "256"
    assert env["_HANDLER"]["value"] == "app.handler"
    assert env["KUBELAMBDA_RUNTIME"]["value"] == "python3.11"
    assert env["GREETING"]["value"] == "hi"
    assert env["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "token"}}


@pytest.mark.parametrize(
    ("change", "new_version"),
    [
        ({"memoryMB": 256}, True),
        ({"handler": "app.other"}, True),
        ({"concurrency": {"reserved": 5}}, False),
        ({"publish": True}, False),
        ({"async": {"maximumRetryAttempts": 0}}, False),
    ],
)
def test_only_code_and_config_make_a_new_version(change: dict[str, Any], new_version: bool) -> None:
    before = snapshot_sha256(version_snapshot(spec()))
    after = snapshot_sha256(version_snapshot(spec(**change)))
    assert (before != after) is new_version


def test_revision_round_trips_the_snapshot() -> None:
    snapshot = version_snapshot(spec(memoryMB=512))
    revision = version_revision("hello", 4, snapshot, OWNER)
    assert revision["metadata"]["name"] == "fn-hello-r4"
    assert revision["revision"] == 4
    assert FunctionSpec.model_validate(revision["data"]).memory_mb == 512
