"""Function versions -> Deployment, Service and ControllerRevision dicts."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubelambda.api import FunctionSpec
from kubelambda.resources.code import FileMounts, FileSet, file_mounts
from kubelambda.resources.names import (
    FUNCTION_LABEL,
    MANAGED_BY,
    SNAPSHOT_HASH_ANNOTATION,
    VERSION_LABEL,
    revision_name,
    version_slug,
    workload_labels,
    workload_name,
)

INVOKE_PORT = 8080
RUNTIME_USER = 10001
# Lambda allocates CPU in proportion to memory: 1,769 MB buys one full vCPU.
MEMORY_MB_PER_VCPU = 1769
# Fields of a spec that make up a version, as on Lambda; reserved concurrency, scaling, async
# settings and `publish` belong to the function as a whole and never create a version.
VERSIONED_FIELDS = frozenset(
    {
        "runtime",
        "handler",
        "code",
        "layers",
        "memory_mb",
        "timeout_seconds",
        "ephemeral_storage_mb",
        "environment",
        "description",
    }
)
TASK_ROOT = "/var/task"
LAYERS_ROOT = "/opt"


def version_snapshot(spec: FunctionSpec) -> dict[str, Any]:
    """The part of ``spec`` a published version freezes, as JSON-ready camelCase data."""
    return spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, include=set(VERSIONED_FIELDS)
    )


def snapshot_sha256(snapshot: Mapping[str, Any]) -> str:
    canonical = json.dumps(snapshot, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Owner reference to a kubelambda object (its body), so deleting it deletes its children."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }


def version_revision(
    function: str, version: int, snapshot: Mapping[str, Any], owner: Mapping[str, Any]
) -> dict[str, Any]:
    """A ControllerRevision that stores published version ``version`` immutably."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision_name(function, version),
            "labels": {
                FUNCTION_LABEL: function,
                VERSION_LABEL: version_slug(str(version)),
                **MANAGED_BY,
            },
            "annotations": {SNAPSHOT_HASH_ANNOTATION: snapshot_sha256(snapshot)},
            "ownerReferences": [owner_reference(owner)],
        },
        "revision": version,
        "data": dict(snapshot),
    }


@dataclass(frozen=True)
class Workload:
    """Everything a function version's pods are built from."""

    function: str
    version: str
    """``$LATEST`` or a published version number."""
    spec: FunctionSpec
    image: str
    """Runtime image, or the function's own image for code.image functions."""
    function_arn: str
    owner: Mapping[str, Any]
    replicas: int = 1
    code: FileSet | None = None
    """Inline code (None for image functions)."""
    layers: Sequence[FileSet] = field(default_factory=tuple)
    """Layer contents in the order the spec lists them."""
    region: str = "us-east-1"


def cpu_millicores(memory_mb: int) -> int:
    return math.ceil(memory_mb * 1000 / MEMORY_MB_PER_VCPU)


def function_env(workload: Workload) -> list[dict[str, Any]]:
    """The agent's configuration, then the function's own variables (secrets by reference)."""
    spec = workload.spec
    platform = {
        "AWS_LAMBDA_FUNCTION_NAME": workload.function,
        "AWS_LAMBDA_FUNCTION_VERSION": workload.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": workload.region,
        "KUBELAMBDA_TIMEOUT_SECONDS": str(spec.timeout_seconds),
        "KUBELAMBDA_CONCURRENCY": str(spec.concurrency.per_instance),
        "KUBELAMBDA_FUNCTION_ARN": workload.function_arn,
        "KUBELAMBDA_INVOKE_PORT": str(INVOKE_PORT),
    }
    if spec.runtime is None:
        platform["KUBELAMBDA_RUNTIME"] = "image"
    else:
        platform["KUBELAMBDA_RUNTIME"] = spec.runtime.value
    if spec.handler is not None:
        platform["_HANDLER"] = spec.handler
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in platform.items()]
    environment = spec.environment
    if environment is not None:
        variables = environment.variables or {}
        env += [{"name": k, "value": v} for k, v in sorted(variables.items())]
        env += [
            {
                "name": secret.name,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": secret.secret_key_ref.name,
                        "key": secret.secret_key_ref.key,
                    }
                },
            }
            for secret in environment.from_secrets
        ]
    return env


LOCKED_DOWN = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def pod_files(workload: Workload) -> FileMounts:
    """A sized /tmp; code at /var/task and layers at /opt, file by file and read-only."""
    tmp = FileMounts(
        [{"name": "tmp", "emptyDir": {"sizeLimit": f"{workload.spec.ephemeral_storage_mb}Mi"}}],
        [{"name": "tmp", "mountPath": "/tmp"}],
    )
    code = file_mounts([workload.code] if workload.code else [], TASK_ROOT, "code")
    layers = file_mounts(workload.layers, LAYERS_ROOT, "layer")
    return FileMounts(
        tmp.volumes + code.volumes + layers.volumes, tmp.mounts + code.mounts + layers.mounts
    )


def function_deployment(workload: Workload) -> dict[str, Any]:
    """The Deployment running one version of a function."""
    spec = workload.spec
    name = workload_name(workload.function, workload.version)
    labels = workload_labels(workload.function, workload.version)
    files = pod_files(workload)
    memory = f"{spec.memory_mb}Mi"
    container = {
        "name": "function",
        "image": workload.image,
        "imagePullPolicy": "IfNotPresent",
        "env": function_env(workload),
        "ports": [{"name": "invoke", "containerPort": INVOKE_PORT}],
        # The agent answers /healthz once the runtime has initialised: ready means warm.
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "invoke"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        # CPU requested in proportion to memory, but not capped: a CFS quota of a few dozen
        # millicores would stretch a cold start to seconds.
        "resources": {
            "requests": {"cpu": f"{cpu_millicores(spec.memory_mb)}m", "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": LOCKED_DOWN,
        "volumeMounts": files.mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "ownerReferences": [owner_reference(workload.owner)],
        },
        "spec": {
            "replicas": workload.replicas,
            "selector": {
                "matchLabels": {
                    FUNCTION_LABEL: workload.function,
                    VERSION_LABEL: version_slug(workload.version),
                }
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # Let an in-flight invocation finish (the agent drains on SIGTERM).
                    "terminationGracePeriodSeconds": spec.timeout_seconds + 5,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUNTIME_USER,
                        "runAsGroup": RUNTIME_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": files.volumes,
                },
            },
        },
    }


def function_service(function: str, version: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """A ClusterIP Service in front of one version's pods (the agent's invoke port)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workload_name(function, version),
            "labels": workload_labels(function, version),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "selector": {FUNCTION_LABEL: function, VERSION_LABEL: version_slug(version)},
            "ports": [{"name": "invoke", "port": INVOKE_PORT, "targetPort": "invoke"}],
        },
    }


def function_arn(region: str, function: str) -> str:
    return f"arn:aws:lambda:{region}:000000000000:function:{function}"
