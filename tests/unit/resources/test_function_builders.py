"""Table tests of the pure builders: FunctionSpec in, Kubernetes objects out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubelambda.api import FunctionSpec
from kubelambda.autoscaler.policy import ScalingPolicy
from kubelambda.autoscaler.tokens import announce_token
from kubelambda.resources.code import FileSet, ImageContent, ZipPackage
from kubelambda.resources.function import (
    Workload,
    cpu_millicores,
    function_deployment,
    function_env,
    function_service,
    snapshot_sha256,
    version_revision,
    version_snapshot,
    version_spec,
)
from kubelambda.resources.names import SCALING_ANNOTATION

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
    inline = FileSet.from_files("code", function_spec.code.inline or {})
    fields: dict[str, Any] = {"code": None if function_spec.code.image else inline} | extra
    return Workload(
        function="hello",
        version=version,
        spec=function_spec,
        image=function_spec.code.image or "kubelambda/runtime-python3.11:dev",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:hello",
        owner=OWNER,
        **fields,
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
    ("fields", "memory", "tmp_limit", "memory_limit", "grace"),
    [
        ({}, "128Mi", "512Mi", "704Mi", 8),
        (
            {"memoryMB": 1024, "ephemeralStorageMB": 2048, "timeoutSeconds": 60},
            "1024Mi",
            "2048Mi",
            "3136Mi",
            65,
        ),
    ],
)
def test_resources_tmp_and_grace(
    fields: dict[str, Any], memory: str, tmp_limit: str, memory_limit: str, grace: int
) -> None:
    """/tmp is a tmpfs of ephemeralStorageMB charged to the container, so the limit has room
    for it; the agent holds the runtime itself to memoryMB."""
    pod = pod_spec(function_deployment(workload(spec(**fields))))
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"memory": memory_limit}
    assert resources["requests"]["memory"] == memory
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"] == {"medium": "Memory", "sizeLimit": tmp_limit}
    assert pod["terminationGracePeriodSeconds"] == grace


@pytest.mark.parametrize(
    ("code", "mounts"),
    [
        (INLINE, {"/tmp": None, "/var/task/app.py": True}),
        ({"image": "example/fn:1"}, {}),
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
    found = {
        m["mountPath"]: m.get("readOnly") for m in pod["containers"][0].get("volumeMounts", [])
    }
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


def test_inline_code_travels_in_the_pod_annotations() -> None:
    """No ConfigMap for the kubelet to fetch: a pod just bound may not be allowed to yet."""
    deployment = function_deployment(workload(spec()))
    pod = pod_spec(deployment)
    annotation = "files.kubelambda.io/code-0.f000"
    template_annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert template_annotations == {annotation: INLINE["inline"]["app.py"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["code-0"] == {
        "name": "code-0",
        "downwardAPI": {
            "items": [
                {
                    "path": "f000",
                    "fieldRef": {"fieldPath": f"metadata.annotations['{annotation}']"},
                    "mode": 0o444,
                }
            ]
        },
    }
    assert not [v for v in pod["volumes"] if "configMap" in v]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/var/task/app.py"] == {
        "name": "code-0",
        "mountPath": "/var/task/app.py",
        "subPath": "f000",
        "readOnly": True,
    }


def test_layers_past_the_annotation_budget_are_mounted_from_their_config_maps() -> None:
    big = "#" * (100 * 1024)
    layers = (
        FileSet("layer-a-v1", {"f000": "python/a.py"}, {"python/a.py": big}),
        FileSet("layer-b-v1", {"f000": "python/b.py"}, {"python/b.py": big}),
        FileSet("layer-c-v1", {"f000": "python/c.py"}),  # contents not at hand
    )
    deployment = function_deployment(workload(spec(), layers=layers))
    annotated = deployment["spec"]["template"]["metadata"]["annotations"]
    assert sorted(annotated) == [
        "files.kubelambda.io/code-0.f000",
        "files.kubelambda.io/layer-0.f000",
    ]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert "downwardAPI" in volumes["layer-0"]
    assert volumes["layer-1"]["configMap"]["name"] == "layer-b-v1"
    assert volumes["layer-2"]["configMap"]["name"] == "layer-c-v1"


def test_code_that_has_no_config_map_must_fit_the_annotations() -> None:
    code = FileSet.from_files("code", {"app.py": "#" * (200 * 1024)})
    with pytest.raises(ValueError, match="annotation budget"):
        function_deployment(workload(spec(), code=code))


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


ZIP = ZipPackage("a" * 64, "http://store/v1/blobs/" + "a" * 64, "tok", "code")


def unpack_plans(pod: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [
        json.loads(c["env"][0]["value"])["steps"]
        for c in pod["initContainers"]
        if c["name"].startswith("unpack")
    ]


def test_zip_code_is_unpacked_by_an_init_container_and_mounted_read_only() -> None:
    pod = pod_spec(function_deployment(workload(spec(), code=ZIP)))
    (init,) = pod["initContainers"]
    assert init["image"] == "kubelambda/runtime-python3.11:dev"
    assert init["command"] == ["/var/runtime/bin/kubelambda-unpack"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert unpack_plans(pod) == [
        [
            {
                "target": "/var/task",
                "zip": {"url": ZIP.url, "sha256": ZIP.sha256, "token": "tok"},
                "what": "code",
            }
        ]
    ]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/var/task"]["readOnly"] is True
    assert mounts["/opt"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/task"]["name"]]


def test_layers_keep_their_order_across_inline_zip_and_image_content() -> None:
    """Runs of zip/inline sources share an unpack container; an image layer splits them, so
    a later layer always lands after (and over) an earlier one."""
    layers = (
        ZipPackage("b" * 64, "http://example/b.zip", None, "layer b version 1"),
        FileSet("layer-c-v1", {"f000": "bin/tool"}),
        ImageContent("example/layer-d:1", "layer d version 1"),
        ZipPackage("e" * 64, "http://example/e.zip", None, "layer e version 3"),
    )
    pod = pod_spec(function_deployment(workload(spec(), code=ZIP, layers=layers)))
    assert [c["name"] for c in pod["initContainers"]] == ["unpack-0", "layer-3", "unpack-2"]
    first, second = unpack_plans(pod)
    assert [(s["target"], s.get("what")) for s in first] == [
        ("/var/task", "code"),
        ("/opt", "layer b version 1"),
        ("/opt", "layer-c-v1"),
    ]
    assert first[2]["files"] == {"dir": "/kubelambda/src/2", "paths": {"f000": "bin/tool"}}
    assert [s["what"] for s in second] == ["layer e version 3"]
    copy = pod["initContainers"][1]
    assert copy["image"] == "example/layer-d:1"
    assert copy["command"] == ["cp", "-R", "/opt/.", "/kubelambda/opt/"]
    source_mounts = [m["name"] for m in pod["initContainers"][0]["volumeMounts"]]
    assert source_mounts == ["task", "opt", "src-2"]


def test_inline_code_next_to_a_zip_layer_is_unpacked_from_the_annotations() -> None:
    layers = (ZipPackage("b" * 64, "http://example/b.zip", None, "layer b version 1"),)
    deployment = function_deployment(workload(spec(), layers=layers))
    pod = pod_spec(deployment)
    (plan,) = unpack_plans(pod)
    assert plan[0] == {
        "target": "/var/task",
        "files": {"dir": "/kubelambda/src/0", "paths": {"f000": "app.py"}},
        "what": "code",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    (item,) = volumes["src-0"]["downwardAPI"]["items"]
    assert item["path"] == "f000"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "files.kubelambda.io/src-0.f000": INLINE["inline"]["app.py"]
    }


def test_image_function_runs_its_own_entrypoint_next_to_the_agent() -> None:
    function_spec = FunctionSpec.model_validate(
        {"code": {"image": "example/fn:1"}, "environment": {"variables": {"MODE": "x"}}}
    )
    pod = pod_spec(
        function_deployment(
            workload(function_spec, agent_image="kubelambda/runtime-python3.11:dev")
        )
    )
    assert pod["shareProcessNamespace"] is True
    agent, function = pod["containers"]
    assert (agent["name"], agent["image"]) == ("agent", "kubelambda/runtime-python3.11:dev")
    # The function's container starts once the agent's Runtime API listens.
    assert agent["lifecycle"]["postStart"]["exec"]["command"] == [
        "/var/runtime/bin/kubelambda-wait-agent"
    ]
    assert "command" not in function
    assert "args" not in function
    assert function["image"] == "example/fn:1"
    agent_env = {e["name"]: e.get("value") for e in agent["env"]}
    assert agent_env["KUBELAMBDA_RUNTIME"] == "external"
    assert "MODE" not in agent_env
    function_env_ = {e["name"]: e.get("value") for e in function["env"]}
    assert function_env_["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert function_env_["MODE"] == "x"
    # The image keeps its own search paths.
    assert "PATH" not in function_env_
    assert function["securityContext"]["readOnlyRootFilesystem"] is True


# --- scaling -----------------------------------------------------------------------------------


def scaling_of(deployment: dict[str, Any]) -> ScalingPolicy:
    return ScalingPolicy.from_json(deployment["metadata"]["annotations"][SCALING_ANNOTATION])


@pytest.mark.parametrize(
    ("fields", "version", "provisioned", "expected"),
    [
        ({}, "$LATEST", 0, ScalingPolicy()),
        (
            {
                "concurrency": {"perInstance": 4, "reserved": 10},
                "scaling": {"minInstances": 1, "idleSeconds": 30, "lingerSeconds": 5},
            },
            "$LATEST",
            0,
            ScalingPolicy(4, 1, 3, 30.0, 5.0),
        ),
        ({"scaling": {"maxInstances": 5}}, "$LATEST", 0, ScalingPolicy(max_replicas=5)),
        ({"concurrency": {"reserved": 0}}, "$LATEST", 0, ScalingPolicy(max_replicas=0)),
        # A published version's minimum comes from its aliases' provisioned concurrency...
        ({"concurrency": {"perInstance": 2}}, "3", 5, ScalingPolicy(2, 3)),
        # ...never past the reserved cap.
        ({"concurrency": {"reserved": 2}}, "3", 5, ScalingPolicy(1, 2, 2)),
        # minInstances is the $LATEST setting.
        ({"scaling": {"minInstances": 2}}, "3", 0, ScalingPolicy()),
    ],
)
def test_scaling_policy_on_the_deployment(
    fields: dict[str, Any], version: str, provisioned: int, expected: ScalingPolicy
) -> None:
    deployment = function_deployment(
        workload(spec(**fields), version, provisioned_concurrency=provisioned)
    )
    assert scaling_of(deployment) == expected


@pytest.mark.parametrize(
    ("replicas", "fields", "expected"),
    [(None, {}, 1), (None, {"scaling": {"minInstances": 3}}, 3), (0, {}, 0), (7, {}, 7)],
)
def test_replicas_start_at_one_then_belong_to_the_autoscaler(
    replicas: int | None, fields: dict[str, Any], expected: int
) -> None:
    deployment = function_deployment(workload(spec(**fields), replicas=replicas))
    assert deployment["spec"]["replicas"] == expected


@pytest.mark.parametrize(
    ("version", "provisioned", "fields", "expected"),
    [
        ("$LATEST", 0, {}, "on-demand"),
        ("$LATEST", 0, {"scaling": {"minInstances": 1}}, "provisioned-concurrency"),
        ("2", 2, {}, "provisioned-concurrency"),
        ("2", 0, {}, "on-demand"),
    ],
)
def test_initialization_type(
    version: str, provisioned: int, fields: dict[str, Any], expected: str
) -> None:
    env = function_env(workload(spec(**fields), version, provisioned_concurrency=provisioned))
    assert {"name": "AWS_LAMBDA_INITIALIZATION_TYPE", "value": expected} in env


def test_pods_announce_themselves_with_a_token_of_their_identity() -> None:
    env = function_env(
        workload(
            spec(),
            "$LATEST",
            namespace="team",
            announce_url="http://kubelambda-autoscaler.kubelambda-system.svc:8082",
            signing_key="key",
        )
    )
    values = {e["name"]: e.get("value") for e in env}
    assert values["KUBELAMBDA_ANNOUNCE_URL"].endswith(":8082")
    assert values["KUBELAMBDA_ANNOUNCE_TOKEN"] == announce_token("key", "team", "hello", "$LATEST")
    sources = {e["name"]: e.get("valueFrom") for e in env}
    assert sources["KUBELAMBDA_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert sources["KUBELAMBDA_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Without a signing key (no code store Secret) pods do not announce.
    plain = function_env(workload(spec(), namespace="team", announce_url="http://a:8082"))
    assert "KUBELAMBDA_ANNOUNCE_URL" not in {e["name"] for e in plain}


def test_a_version_keeps_its_code_but_takes_function_level_settings() -> None:
    published = spec(memoryMB=256, concurrency={"reserved": 3})
    snapshot = version_snapshot(published)
    now = spec(memoryMB=512, concurrency={"reserved": 7}, scaling={"idleSeconds": 5})
    frozen = version_spec(now, snapshot)
    assert frozen.memory_mb == 256
    assert frozen.concurrency.reserved == 7
    assert frozen.scaling.idle_seconds == 5
