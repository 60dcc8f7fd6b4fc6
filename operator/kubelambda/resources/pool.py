"""The warm pool: generic pods of a runtime, waiting for a function's code (pure builders).

A namespace asks for a pool with an annotation, e.g. ``kubelambda.io/warm-pool: python3.11=2``.
The operator keeps that many pods of the runtime's image running there, their agents in pool
mode: initialised, with no function yet. When a version with no instance is woken, the
autoscaler posts one of them the version's environment and code (``specialization``), then
labels it as an instance of the version: the pool's ReplicaSet no longer selects it (and
starts a replacement), the version's Service does, and its owner becomes the version's
Deployment. The pod serves until the version scales down or its code or configuration
changes.

A version can be specialised only when a pool pod could have been its own pod: a managed
runtime, the pool's size (memory and /tmp), code and layers the agent can fetch or be sent
(zip packages, inline files), and no variables from Secrets (the operator does not read
Secrets; the kubelet gives them to normal pods).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from kubelambda.api import Runtime
from kubelambda.resources.code import (
    UNPACK_LIMIT_BYTES,
    UNPACKED_DIR_SIZE,
    FileSet,
    ZipPackage,
)
from kubelambda.resources.function import (
    AGENT_MEMORY_MB,
    INVOKE_PORT,
    LAYERS_ROOT,
    LOCKED_DOWN,
    TASK_ROOT,
    Workload,
    function_env,
    pod_address_env,
    pod_security_context,
    readiness_probe,
    runtime_resources,
    tmp_volume,
)
from kubelambda.resources.names import COMPONENT_LABEL, DOMAIN, MANAGED_BY

POOL_ANNOTATION = f"{DOMAIN}/warm-pool"
"""On a Namespace: ``runtime=size`` pairs separated by commas."""
POOL_LABEL = f"{DOMAIN}/pool"
"""A pool pod's runtime (as a label value, e.g. ``python3-11``)."""
POOL_STATE_LABEL = f"{DOMAIN}/pool-state"
IDLE = "idle"
"""Waiting in the pool (the pool Deployment selects only these)."""
SPECIALIZED_LABEL = f"{DOMAIN}/specialized"
"""On a pod adopted by a version: the hash of what it was specialised with."""
SPECIALIZATION_ANNOTATION = f"{DOMAIN}/specialization"
"""On a version's Deployment: what to send a pool pod to make it an instance of the version."""

# Where a pool pod's agent writes what it then serves read-only at /var/task and /opt.
POOL_DIR = "/kubelambda/pool"
UNPACK_DIRS = {TASK_ROOT: f"{POOL_DIR}/task", LAYERS_ROOT: f"{POOL_DIR}/opt"}
POOL_MEMORY_MB = 128
POOL_EPHEMERAL_STORAGE_MB = 512
# Pool pods take functions of any timeout: an adopted pod drains its last invocation on
# SIGTERM, bounded by Lambda's longest timeout.
POOL_TERMINATION_GRACE_S = 900 + 5
MAX_POOL_SIZE = 20
# Annotations share 256 KB per object: larger inline code is left to the Deployment.
MAX_SPECIALIZATION_BYTES = 64 * 1024


class PoolAnnotationError(ValueError):
    """The namespace's warm-pool annotation cannot be read; the message says why."""


def pool_slug(runtime: str) -> str:
    """``python3.11`` -> ``python3-11``: a runtime as a label value and name fragment."""
    return runtime.replace(".", "-")


def pool_name(runtime: str) -> str:
    return f"kubelambda-pool-{pool_slug(runtime)}"


def parse_pool_annotation(value: str) -> dict[str, int]:
    """``python3.11=2,nodejs18=1`` -> runtime -> pool size."""
    sizes: dict[str, int] = {}
    known = [runtime.value for runtime in Runtime]
    for entry in filter(None, (part.strip() for part in value.split(","))):
        runtime, sep, raw_size = (s.strip() for s in entry.partition("="))
        if runtime not in known:
            raise PoolAnnotationError(
                f"{POOL_ANNOTATION}: unknown runtime {runtime!r} (one of {', '.join(known)})"
            )
        if not sep or not raw_size.isdigit() or int(raw_size) > MAX_POOL_SIZE:
            raise PoolAnnotationError(
                f"{POOL_ANNOTATION}: {entry!r} must be runtime=size, size 0 to {MAX_POOL_SIZE}"
            )
        sizes[runtime] = int(raw_size)
    return sizes


def pool_token(signing_key: str, namespace: str) -> str:
    """What the autoscaler presents to a namespace's pool pods to specialise them."""
    message = f"pool:{namespace}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def pool_deployment(runtime: str, size: int, image: str, token: str) -> dict[str, Any]:
    """The pool of one runtime in one namespace: pods of a default-sized function, minus the
    function. /var/task and /opt are empty until the agent is specialised."""
    labels = {
        POOL_LABEL: pool_slug(runtime),
        POOL_STATE_LABEL: IDLE,
        COMPONENT_LABEL: "warm-pool",
        **MANAGED_BY,
    }
    memory_limit = POOL_MEMORY_MB + POOL_EPHEMERAL_STORAGE_MB + AGENT_MEMORY_MB
    container = {
        "name": "function",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "KUBELAMBDA_POOL_TOKEN", "value": token},
            # The agent writes nowhere else, whatever a specialisation asks.
            {"name": "KUBELAMBDA_POOL_DIR", "value": POOL_DIR},
            {"name": "KUBELAMBDA_INVOKE_PORT", "value": str(INVOKE_PORT)},
            *pod_address_env(),
        ],
        "ports": [{"name": "invoke", "containerPort": INVOKE_PORT}],
        # In the pool, ready means waiting for a function; once specialised, that its runtime
        # has initialised (the same probe as a function pod's).
        "readinessProbe": readiness_probe(),
        "resources": runtime_resources(POOL_MEMORY_MB, memory_limit),
        "securityContext": LOCKED_DOWN,
        # Each code volume twice: writable where the agent unpacks, read-only where the
        # function finds it (as in a function pod, writing there fails with EROFS).
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "task", "mountPath": UNPACK_DIRS[TASK_ROOT]},
            {"name": "opt", "mountPath": UNPACK_DIRS[LAYERS_ROOT]},
            {"name": "task", "mountPath": TASK_ROOT, "readOnly": True},
            {"name": "opt", "mountPath": LAYERS_ROOT, "readOnly": True},
            # What it was specialised as: a restarted agent comes back as that function.
            {"name": "state", "mountPath": f"{POOL_DIR}/state"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": pool_name(runtime), "labels": labels},
        "spec": {
            "replicas": size,
            "selector": {"matchLabels": {POOL_LABEL: pool_slug(runtime), POOL_STATE_LABEL: IDLE}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": POOL_TERMINATION_GRACE_S,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [
                        tmp_volume(POOL_EPHEMERAL_STORAGE_MB),
                        {"name": "task", "emptyDir": {"sizeLimit": UNPACKED_DIR_SIZE}},
                        {"name": "opt", "emptyDir": {"sizeLimit": UNPACKED_DIR_SIZE}},
                        {"name": "state", "emptyDir": {"sizeLimit": "1Mi"}},
                    ],
                },
            },
        },
    }


def specialization(workload: Workload) -> dict[str, Any] | None:
    """What a pool pod is sent to become an instance of ``workload``: ``{"pool": runtime,
    "hash": ..., "request": {"env": ..., "unpack": ...}}``; None if no pool pod can be one."""
    spec = workload.spec
    if spec.runtime is None or workload.is_image:
        return None
    if (spec.memory_mb, spec.ephemeral_storage_mb) != (POOL_MEMORY_MB, POOL_EPHEMERAL_STORAGE_MB):
        return None
    if spec.environment is not None and spec.environment.from_secrets:
        return None
    sources = [(TASK_ROOT, workload.code)] if workload.code is not None else []
    sources += [(LAYERS_ROOT, layer) for layer in workload.layers]
    steps: list[dict[str, Any]] = []
    for target, content in sources:
        if isinstance(content, ZipPackage):
            package = {"url": content.url, "sha256": content.sha256}
            if content.token:
                package["token"] = content.token
            steps.append({"target": UNPACK_DIRS[target], "zip": package, "what": content.what})
        elif isinstance(content, FileSet) and content.contents:
            inline = dict(content.contents)
            steps.append(
                {"target": UNPACK_DIRS[target], "inline": inline, "what": content.config_map}
            )
        else:
            return None  # an image layer: only an init container of its image can copy it
    # The pool pod has the downward-API variables (namespace, pod IP) already.
    env = {item["name"]: item["value"] for item in function_env(workload) if "value" in item}
    request = {
        "env": env,
        "unpack": {
            "limitBytes": UNPACK_LIMIT_BYTES,
            "roots": [UNPACK_DIRS[TASK_ROOT], UNPACK_DIRS[LAYERS_ROOT]],
            "steps": steps,
        },
    }
    encoded = json.dumps(request, sort_keys=True, separators=(",", ":"))
    if len(encoded) > MAX_SPECIALIZATION_BYTES:
        return None
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:16]
    return {"pool": spec.runtime.value, "hash": digest, "request": request}


def with_specialization(deployment: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """``deployment`` annotated with its version's specialization, when it has one."""
    plan = specialization(workload)
    if plan is None:
        return deployment
    metadata = deployment["metadata"]
    annotations = {**metadata.get("annotations", {}), SPECIALIZATION_ANNOTATION: json.dumps(plan)}
    return {**deployment, "metadata": {**metadata, "annotations": annotations}}


def adopted_pod_patch(
    version_labels: Mapping[str, str], plan_hash: str, deployment_name: str, deployment_uid: str
) -> dict[str, Any]:
    """Merge patch making a specialised pool pod an instance of a version: its labels (the
    version's Service selects it; no pool or ReplicaSet does) and its owner (the version's
    Deployment, so it goes when the version goes)."""
    labels: dict[str, str | None] = {
        **version_labels,
        POOL_LABEL: None,
        POOL_STATE_LABEL: None,
        "pod-template-hash": None,
        SPECIALIZED_LABEL: plan_hash,
    }
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment_name,
        "uid": deployment_uid,
    }
    return {"metadata": {"labels": labels, "ownerReferences": [owner]}}
