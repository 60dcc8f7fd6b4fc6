"""Function versions -> Deployment, Service and ControllerRevision dicts."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubelambda.api import FunctionSpec
from kubelambda.autoscaler.policy import ScalingPolicy, instances_for
from kubelambda.autoscaler.tokens import announce_token
from kubelambda.resources.code import (
    AnnotationBudget,
    Content,
    FileSet,
    file_mounts,
    needs_unpack,
    unpacked_files,
)
from kubelambda.resources.names import (
    FUNCTION_LABEL,
    LATEST,
    MANAGED_BY,
    SCALING_ANNOTATION,
    SNAPSHOT_HASH_ANNOTATION,
    VERSION_LABEL,
    revision_name,
    version_slug,
    workload_labels,
    workload_name,
)

INVOKE_PORT = 8080
RUNTIME_API_PORT = 9001
RUNTIME_USER = 10001
# On top of memoryMB and the memory-backed /tmp: the agent itself (about 22 MB RSS) and slack.
# The agent, not the kernel, holds the runtime to memoryMB (it kills it past that).
AGENT_MEMORY_MB = 64
WAIT_FOR_AGENT_COMMAND = "/var/runtime/bin/kubelambda-wait-agent"  # in every runtime image
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


def version_spec(function_spec: FunctionSpec, snapshot: Mapping[str, Any]) -> FunctionSpec:
    """A published version's spec: its frozen code and configuration, with the function-level
    settings (concurrency, scaling, async) as they are now, as on Lambda."""
    function_level = function_spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude=set(VERSIONED_FIELDS)
    )
    return FunctionSpec.model_validate({**function_level, **snapshot})


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
    replicas: int | None = None
    """The Deployment's current count (the autoscaler's); None for a new Deployment, which
    starts with one instance, or its minimum."""
    code: Content | None = None
    """Inline files or a zip package (None for image functions)."""
    layers: Sequence[Content] = field(default_factory=tuple)
    """Layer contents in the order the spec lists them."""
    region: str = "us-east-1"
    agent_image: str = ""
    """Image of the agent sidecar of image functions (the Python runtime image)."""
    provisioned_concurrency: int = 0
    """Concurrency the aliases of this (published) version keep initialized."""
    namespace: str = ""
    announce_url: str = ""
    """The autoscaler, which new pods tell when they are ready; empty: they do not."""
    signing_key: str = ""
    """Key of the pods' announcement tokens."""

    @property
    def is_image(self) -> bool:
        return self.spec.code.image is not None

    @property
    def initialization_type(self) -> str:
        """AWS_LAMBDA_INITIALIZATION_TYPE of the version's instances."""
        provisioned = self.provisioned_concurrency or (
            self.version == LATEST and self.spec.scaling.min_instances
        )
        return "provisioned-concurrency" if provisioned else "on-demand"

    @property
    def scaling_policy(self) -> ScalingPolicy:
        """What the autoscaler may do with this version (written on its Deployment)."""
        spec = self.spec
        per_instance = spec.concurrency.per_instance
        if self.version == LATEST:
            minimum = spec.scaling.min_instances
        else:
            minimum = instances_for(self.provisioned_concurrency, per_instance)
        caps = [spec.scaling.max_instances]
        if spec.concurrency.reserved is not None:
            caps.append(instances_for(spec.concurrency.reserved, per_instance))
        cap = min((c for c in caps if c is not None), default=None)
        return ScalingPolicy(
            per_instance=per_instance,
            min_replicas=minimum if cap is None else min(minimum, cap),
            max_replicas=cap,
            idle_seconds=spec.scaling.idle_seconds,
            linger_seconds=spec.scaling.linger_seconds,
        )


def cpu_millicores(memory_mb: int) -> int:
    return math.ceil(memory_mb * 1000 / MEMORY_MB_PER_VCPU)


def function_env(workload: Workload) -> list[dict[str, Any]]:
    """The agent's configuration, then the function's own variables (secrets by reference)."""
    spec = workload.spec
    platform = {
        "AWS_LAMBDA_FUNCTION_NAME": workload.function,
        "AWS_LAMBDA_FUNCTION_VERSION": workload.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": workload.initialization_type,
        "AWS_REGION": workload.region,
        "KUBELAMBDA_TIMEOUT_SECONDS": str(spec.timeout_seconds),
        "KUBELAMBDA_CONCURRENCY": str(spec.concurrency.per_instance),
        "KUBELAMBDA_FUNCTION_ARN": workload.function_arn,
        "KUBELAMBDA_INVOKE_PORT": str(INVOKE_PORT),
    }
    if spec.runtime is None:
        # The image runs its own entrypoint in the "function" container next to the agent.
        platform["KUBELAMBDA_RUNTIME"] = "external"
        platform["KUBELAMBDA_RUNTIME_API_PORT"] = str(RUNTIME_API_PORT)
    else:
        platform["KUBELAMBDA_RUNTIME"] = spec.runtime.value
    if spec.handler is not None:
        platform["_HANDLER"] = spec.handler
    if workload.announce_url and workload.signing_key and workload.namespace:
        platform["KUBELAMBDA_ANNOUNCE_URL"] = workload.announce_url
        platform["KUBELAMBDA_ANNOUNCE_TOKEN"] = announce_token(
            workload.signing_key, workload.namespace, workload.function, workload.version
        )
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in platform.items()]
    if "KUBELAMBDA_ANNOUNCE_URL" in platform:
        env += pod_address_env()
    # An image's runtime gets the function's variables in its own container.
    return env if workload.is_image else env + function_variables(spec)


def pod_address_env() -> list[dict[str, Any]]:
    """The namespace and IP a pod announces itself with (downward API)."""
    return [
        {
            "name": "KUBELAMBDA_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "KUBELAMBDA_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def image_runtime_env(workload: Workload) -> list[dict[str, Any]]:
    """Lambda's environment for an image's own runtime; its PATH and friends stay the image's."""
    spec = workload.spec
    lambda_env = {
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{RUNTIME_API_PORT}",
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "AWS_LAMBDA_FUNCTION_NAME": workload.function,
        "AWS_LAMBDA_FUNCTION_VERSION": workload.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_INITIALIZATION_TYPE": workload.initialization_type,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{workload.function}",
        "AWS_REGION": workload.region,
        "AWS_DEFAULT_REGION": workload.region,
        "TZ": ":UTC",
    }
    if spec.handler is not None:
        lambda_env["_HANDLER"] = spec.handler
    return [{"name": k, "value": v} for k, v in lambda_env.items()] + function_variables(spec)


def function_variables(spec: FunctionSpec) -> list[dict[str, Any]]:
    """The function's own variables, secrets by reference."""
    env: list[dict[str, Any]] = []
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


@dataclass(frozen=True)
class PodFiles:
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    annotations: dict[str, str]  # inline files the volumes read from the pod's annotations


def pod_files(workload: Workload) -> PodFiles:
    """/tmp, code at /var/task and layers at /opt (read-only).

    /tmp is memory-backed: the kernel sizes the tmpfs to ephemeralStorageMB, so a function that
    fills it gets ENOSPC, as on Lambda, instead of the kubelet evicting the pod.
    Inline-only code and layers are mounted file by file (from the pod's annotations, or the
    layers' ConfigMaps); zip packages and image layers are unpacked into emptyDirs by init
    containers. The function's code comes first, so its files always fit the annotations.
    """
    volumes = [tmp_volume(workload.spec.ephemeral_storage_mb)]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    budget = AnnotationBudget()
    if needs_unpack(workload.code, workload.layers):
        unpacked = unpacked_files(
            workload.code,
            workload.layers,
            unpack_image=workload.image,
            security_context=LOCKED_DOWN,
            task_root=TASK_ROOT,
            layers_root=LAYERS_ROOT,
            budget=budget,
        )
        return PodFiles(
            volumes + unpacked.volumes,
            mounts + unpacked.mounts,
            unpacked.init_containers,
            unpacked.annotations,
        )
    inline = [c for c in [workload.code, *workload.layers] if isinstance(c, FileSet)]
    code = file_mounts(inline[:1] if workload.code else [], TASK_ROOT, "code", budget)
    layers = file_mounts(inline[1:] if workload.code else inline, LAYERS_ROOT, "layer", budget)
    return PodFiles(
        volumes + code.volumes + layers.volumes,
        mounts + code.mounts + layers.mounts,
        [],
        code.annotations | layers.annotations,
    )


def tmp_volume(ephemeral_storage_mb: int) -> dict[str, Any]:
    """/tmp as a tmpfs of ephemeralStorageMB."""
    return {
        "name": "tmp",
        "emptyDir": {"medium": "Memory", "sizeLimit": f"{ephemeral_storage_mb}Mi"},
    }


def memory_limit_mb(spec: FunctionSpec) -> int:
    """memoryMB for the runtime, the /tmp tmpfs (charged to the container) and the agent."""
    return spec.memory_mb + spec.ephemeral_storage_mb + AGENT_MEMORY_MB


def readiness_probe() -> dict[str, Any]:
    """The agent answers /healthz once the runtime has initialised: ready means warm."""
    return {
        "httpGet": {"path": "/healthz", "port": "invoke"},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }


def runtime_resources(memory_mb: int, limit_mb: int) -> dict[str, Any]:
    """CPU requested in proportion to memory, but not capped: a CFS quota of a few dozen
    millicores would stretch a cold start to seconds."""
    return {
        "requests": {"cpu": f"{cpu_millicores(memory_mb)}m", "memory": f"{memory_mb}Mi"},
        "limits": {"memory": f"{limit_mb}Mi"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_USER,
        "runAsGroup": RUNTIME_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def agent_container(workload: Workload, image: str) -> dict[str, Any]:
    spec = workload.spec
    return {
        "name": "agent" if workload.is_image else "function",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": function_env(workload),
        "ports": [{"name": "invoke", "containerPort": INVOKE_PORT}],
        "readinessProbe": readiness_probe(),
        "resources": runtime_resources(spec.memory_mb, memory_limit_mb(spec)),
        "securityContext": LOCKED_DOWN,
    }


def containers(workload: Workload, files: PodFiles) -> list[dict[str, Any]]:
    """The agent runs the runtime itself; an image function's runtime is its own container."""
    if not workload.is_image:
        return [{**agent_container(workload, workload.image), "volumeMounts": files.mounts}]
    agent = agent_container(workload, workload.agent_image)
    # Listed first, the agent starts first; the kubelet starts the next container only once
    # this hook returns, i.e. once the Runtime API listens.
    agent["lifecycle"] = {"postStart": {"exec": {"command": [WAIT_FOR_AGENT_COMMAND]}}}
    agent["resources"] = {
        "requests": {"cpu": "10m", "memory": f"{AGENT_MEMORY_MB // 2}Mi"},
        "limits": {"memory": f"{AGENT_MEMORY_MB}Mi"},
    }
    spec = workload.spec
    function = {
        "name": "function",
        "image": workload.image,
        "imagePullPolicy": "IfNotPresent",
        "env": image_runtime_env(workload),
        "resources": runtime_resources(spec.memory_mb, spec.memory_mb + spec.ephemeral_storage_mb),
        "securityContext": LOCKED_DOWN,
        "volumeMounts": files.mounts,
    }
    return [agent, function]


def function_deployment(workload: Workload) -> dict[str, Any]:
    """The Deployment running one version of a function."""
    spec = workload.spec
    name = workload_name(workload.function, workload.version)
    labels = workload_labels(workload.function, workload.version)
    files = pod_files(workload)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Let an in-flight invocation finish (the agent drains on SIGTERM).
        "terminationGracePeriodSeconds": spec.timeout_seconds + 5,
        "securityContext": pod_security_context(),
        "containers": containers(workload, files),
        "volumes": files.volumes,
    }
    if files.init_containers:
        pod_spec["initContainers"] = files.init_containers
    if workload.is_image:
        # The agent stops a timed-out image runtime by signalling its processes (same UID).
        pod_spec["shareProcessNamespace"] = True
    template_metadata: dict[str, Any] = {"labels": labels}
    if files.annotations:
        template_metadata["annotations"] = files.annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {SCALING_ANNOTATION: workload.scaling_policy.to_json()},
            "ownerReferences": [owner_reference(workload.owner)],
        },
        "spec": {
            "replicas": (
                workload.replicas
                if workload.replicas is not None
                else max(1, workload.scaling_policy.min_replicas)
            ),
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
            # Nothing rolls back, and each old ReplicaSet holds a copy of the inline code.
            "revisionHistoryLimit": 1,
            "template": {"metadata": template_metadata, "spec": pod_spec},
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
