"""Table tests of the warm pool's builders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubelambda.api import FunctionSpec
from kubelambda.resources.code import FileSet, ImageContent, ZipPackage
from kubelambda.resources.function import Workload, function_deployment
from kubelambda.resources.pool import (
    POOL_LABEL,
    POOL_STATE_LABEL,
    SPECIALIZATION_ANNOTATION,
    SPECIALIZED_LABEL,
    PoolAnnotationError,
    adopted_pod_patch,
    parse_pool_annotation,
    pool_deployment,
    pool_token,
    specialization,
    with_specialization,
)

OWNER = {
    "apiVersion": "kubelambda.io/v1alpha1",
    "kind": "Function",
    "metadata": {"name": "hello", "uid": "0000-1111"},
}
APP = "def handler(event, context):\n    return event\n"
CODE = FileSet.from_files("code", {"app.py": APP})


def spec(**fields: Any) -> FunctionSpec:
    return FunctionSpec.model_validate(
        {"runtime": "python3.11", "handler": "app.handler", "code": {"inline": {"app.py": APP}}}
        | fields
    )


def workload(function_spec: FunctionSpec, **extra: Any) -> Workload:
    fields: dict[str, Any] = {"code": CODE} | extra
    return Workload(
        function="hello",
        version="$LATEST",
        spec=function_spec,
        image="kubelambda/runtime-python3.11:dev",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:hello",
        owner=OWNER,
        namespace="team-a",
        announce_url="http://autoscaler:8082",
        signing_key="k",
        **fields,
    )


@pytest.mark.parametrize(
    ("annotation", "sizes"),
    [
        ("", {}),
        ("python3.11=2", {"python3.11": 2}),
        (" python3.11 = 1 , nodejs18=0,", {"python3.11": 1, "nodejs18": 0}),
    ],
)
def test_pool_annotation(annotation: str, sizes: dict[str, int]) -> None:
    assert parse_pool_annotation(annotation) == sizes


@pytest.mark.parametrize(
    ("annotation", "complaint"),
    [
        ("python3.9=1", "unknown runtime 'python3.9'"),
        ("python3.11", "must be runtime=size"),
        ("python3.11=-1", "must be runtime=size"),
        ("python3.11=many", "must be runtime=size"),
        ("python3.11=21", "size 0 to 20"),
    ],
)
def test_bad_pool_annotations_say_why(annotation: str, complaint: str) -> None:
    with pytest.raises(PoolAnnotationError, match=complaint):
        parse_pool_annotation(annotation)


def test_pool_pods_are_locked_down_default_sized_functions_without_a_function() -> None:
    deployment = pool_deployment("python3.11", 2, "kubelambda/runtime-python3.11:dev", "t0k")
    assert deployment["metadata"]["name"] == "kubelambda-pool-python3-11"
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {POOL_LABEL: "python3-11", POOL_STATE_LABEL: "idle"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"].items() >= selector.items()
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBELAMBDA_POOL_TOKEN"]["value"] == "t0k"
    assert "AWS_LAMBDA_FUNCTION_NAME" not in env
    assert env["KUBELAMBDA_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The agent unpacks where it can write; the function sees the same files read-only.
    assert mounts["/var/task"] == {"name": "task", "mountPath": "/var/task", "readOnly": True}
    assert mounts["/opt"] == {"name": "opt", "mountPath": "/opt", "readOnly": True}
    assert mounts["/kubelambda/pool/task"]["name"] == "task"
    assert mounts["/kubelambda/pool/opt"]["name"] == "opt"
    assert not mounts["/tmp"].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert container["resources"]["requests"]["memory"] == "128Mi"


def test_pool_tokens_differ_per_namespace_and_key() -> None:
    tokens = {pool_token(k, ns) for k in ("k1", "k2") for ns in ("a", "b")}
    assert len(tokens) == 4


def test_specialization_carries_the_function_environment_and_inline_code() -> None:
    plan = specialization(workload(spec(environment={"variables": {"GREETING": "hi"}})))
    assert plan is not None
    assert plan["pool"] == "python3.11"
    env = plan["request"]["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "hello"
    assert env["_HANDLER"] == "app.handler"
    assert env["GREETING"] == "hi"
    assert env["KUBELAMBDA_ANNOUNCE_TOKEN"]
    # The pool pod has its own downward-API variables.
    assert "KUBELAMBDA_POD_IP" not in env
    unpack = plan["request"]["unpack"]
    assert unpack["roots"] == ["/kubelambda/pool/task", "/kubelambda/pool/opt"]
    assert unpack["steps"] == [
        {"target": "/kubelambda/pool/task", "inline": {"app.py": APP}, "what": "code"}
    ]


def test_specialization_fetches_zip_code_and_layers_in_order() -> None:
    code = ZipPackage("ab" * 32, "http://store/blobs/ab", "tok", "code")
    layer = ZipPackage("cd" * 32, "http://store/blobs/cd", None, "layer tools version 1")
    plan = specialization(workload(spec(), code=code, layers=[layer, CODE]))
    assert plan is not None
    steps = plan["request"]["unpack"]["steps"]
    assert [s["target"] for s in steps] == [
        "/kubelambda/pool/task",
        "/kubelambda/pool/opt",
        "/kubelambda/pool/opt",
    ]
    assert steps[0]["zip"] == {"url": "http://store/blobs/ab", "sha256": "ab" * 32, "token": "tok"}
    assert steps[1]["zip"] == {"url": "http://store/blobs/cd", "sha256": "cd" * 32}


@pytest.mark.parametrize(
    ("why", "function_spec", "extra"),
    [
        ("larger than the pool's pods", spec(memoryMB=256), {}),
        ("a larger /tmp", spec(ephemeralStorageMB=1024), {}),
        (
            "variables from Secrets",
            spec(
                environment={
                    "fromSecrets": [{"name": "KEY", "secretKeyRef": {"name": "s", "key": "k"}}]
                }
            ),
            {},
        ),
        ("an image layer", spec(), {"layers": [ImageContent("tools:1", "layer tools")]}),
        ("inline files not at hand", spec(), {"code": FileSet("fn-hello-code-abc", {"f": "a"})}),
        ("an image function", spec(runtime=None, handler=None, code={"image": "x:1"}), {}),
    ],
)
def test_versions_no_pool_pod_can_become(
    why: str, function_spec: FunctionSpec, extra: dict[str, Any]
) -> None:
    assert specialization(workload(function_spec, **extra)) is None, why


def test_large_inline_code_stays_out_of_the_annotation() -> None:
    big = FileSet("fn-hello-code-big", {"f000": "app.py"}, {"app.py": "#" * 70_000})
    assert specialization(workload(spec(), code=big)) is None


def test_the_hash_follows_code_and_configuration() -> None:
    def plan_hash(**fields: Any) -> str:
        plan = specialization(workload(spec(**fields)))
        assert plan is not None
        return str(plan["hash"])

    assert plan_hash() == plan_hash()
    assert plan_hash() != plan_hash(timeoutSeconds=10)
    assert plan_hash() != plan_hash(environment={"variables": {"MODE": "1"}})


def test_a_deployment_carries_its_specialization_in_an_annotation() -> None:
    target = workload(spec())
    deployment = with_specialization(function_deployment(target), target)
    annotation = json.loads(deployment["metadata"]["annotations"][SPECIALIZATION_ANNOTATION])
    assert annotation == specialization(target)
    # The pod template is untouched: adding the pool rolls no pod.
    assert deployment["spec"] == function_deployment(target)["spec"]
    image_target = workload(spec(memoryMB=256))
    plain = with_specialization(function_deployment(image_target), image_target)
    assert SPECIALIZATION_ANNOTATION not in plain["metadata"]["annotations"]


def test_an_adopted_pod_leaves_its_pool_and_joins_its_version() -> None:
    labels = {"kubelambda.io/function": "hello", "kubelambda.io/version": "latest"}
    patch = adopted_pod_patch(labels, "abc123", "fn-hello-latest", "uid-1")
    assert patch["metadata"]["labels"] == {
        **labels,
        POOL_LABEL: None,
        POOL_STATE_LABEL: None,
        "pod-template-hash": None,
        SPECIALIZED_LABEL: "abc123",
    }
    (owner,) = patch["metadata"]["ownerReferences"]
    # Not a controller reference: no ReplicaSet may count it or delete it as surplus.
    assert owner == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fn-hello-latest",
        "uid": "uid-1",
    }
