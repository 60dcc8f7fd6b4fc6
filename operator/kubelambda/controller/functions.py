"""Reconcile a Function: versions, code, per-version Deployments and Services, status.

Everything is derived from the cluster each time (ControllerRevisions are the record of
published versions), so a reconcile interrupted anywhere is finished by the next one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubelambda.api import FunctionSpec
from kubelambda.controller import kube
from kubelambda.controller.config import OperatorConfig
from kubelambda.controller.layers import layer_content
from kubelambda.controller.reporting import now, validation_message
from kubelambda.controller.store import PackageUnavailable, package
from kubelambda.resources.code import (
    Content,
    FileSet,
    config_maps_in_use,
)
from kubelambda.resources.function import (
    Workload,
    function_arn,
    function_deployment,
    function_service,
    snapshot_sha256,
    version_revision,
    version_snapshot,
    version_spec,
)
from kubelambda.resources.names import (
    FUNCTION_LABEL,
    LATEST,
    SNAPSHOT_HASH_ANNOTATION,
    VERSION_LABEL,
    layer_config_map_name,
    version_slug,
    workload_name,
)
from kubelambda.resources.pool import with_specialization
from kubelambda.resources.status import (
    CONFIGURED,
    Observation,
    deployment_rollout,
    pod_problem,
    ready_condition,
)

log = logging.getLogger(__name__)
# Two writers of Function status, each server-side applying only what it owns: the reconcile
# (everything) and the Deployment watch (Ready and replicas). Separate field managers keep the
# watch from erasing the reconcile's Configured condition.
RECONCILE_MANAGER = "kubelambda-operator"
READINESS_MANAGER = "kubelambda-operator-readiness"


class NotReadyYet(Exception):
    """A dependency (e.g. a Layer version) is missing; retry later. The message says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def aliased_versions(namespace: str, function: str) -> dict[str, int]:
    """Published versions that some Alias of ``function`` points to (their pods must stay),
    with the concurrency the aliases provision on each (split by routing weight)."""
    versions: dict[str, int] = {}
    for alias in kube.list_objects(kube.GROUP_VERSION, "Alias", namespace, {}):
        spec = alias.get("spec") or {}
        if spec.get("function") != function:
            continue
        provisioned = int(spec.get("provisionedConcurrency") or 0)
        routing = spec.get("routing") or {}
        additional = routing.get("additionalVersion")
        weight = float(routing.get("weight") or 0.0) if additional else 0.0
        extra = math.ceil(provisioned * weight)
        version = str(spec.get("version"))
        versions[version] = versions.get(version, 0) + provisioned - extra
        if additional:
            versions[str(additional)] = versions.get(str(additional), 0) + extra
    versions.pop(LATEST, None)
    return versions


@dataclass
class FunctionReconcile:
    """One pass over one Function."""

    body: Mapping[str, Any]
    config: OperatorConfig
    observation: Observation = field(init=False)
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        status = self.body.get("status") or {}
        self.observation = Observation(
            status.get("conditions") or [], self.body["metadata"].get("generation"), now()
        )

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def run(self) -> None:
        """Bring children and status in line with the spec. Raises NotReadyYet to retry later."""
        try:
            spec = FunctionSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as error:
            # Invalid input never becomes a crash loop: report it and wait for a new spec.
            self.not_configured("InvalidSpec", validation_message(error))
            return
        self.versions = self.published_versions()
        try:
            self.publish_if_changed(spec)
            latest = self.deploy(LATEST, spec)
            aliased = aliased_versions(self.namespace, self.name)
            wanted = {v: n for v, n in aliased.items() if v.isdigit() and int(v) in self.versions}
            for version in sorted(wanted, key=int):
                frozen = version_spec(spec, self.versions[int(version)]["data"])
                self.deploy(version, frozen, wanted[version])
            self.remove_unused_workloads({LATEST, *wanted})
            remove_unused_code(self.namespace, self.name)
        except NotReadyYet as problem:
            self.not_configured(problem.reason, str(problem))
            raise
        configured = self.observation.condition(CONFIGURED, ok=True, reason="Reconciled")
        self.write_status(configured, latest)

    def published_versions(self) -> dict[int, dict[str, Any]]:
        """Version number -> its ControllerRevision."""
        revisions = kube.list_objects(
            "apps/v1", "ControllerRevision", self.namespace, {FUNCTION_LABEL: self.name}
        )
        return {int(r["revision"]): r for r in revisions}

    def publish_if_changed(self, spec: FunctionSpec) -> None:
        """With spec.publish, freeze code+config as version N+1 unless version N already is it."""
        if not spec.publish:
            return
        snapshot = version_snapshot(spec)
        latest = max(self.versions, default=0)
        if latest and self.snapshot_hash(latest) == snapshot_sha256(snapshot):
            return
        revision = version_revision(self.name, latest + 1, snapshot, self.body)
        if kube.create(revision, self.namespace):
            log.info("published %s/%s version %d", self.namespace, self.name, latest + 1)
        self.versions[latest + 1] = revision

    def snapshot_hash(self, version: int) -> str:
        return str(self.versions[version]["metadata"]["annotations"][SNAPSHOT_HASH_ANNOTATION])

    def ensure_code(self, spec: FunctionSpec) -> Content | None:
        """The zip package or the inline files; None for image functions."""
        if spec.code.image is not None:
            return None
        if spec.code.zip is not None:
            try:
                return package(self.config, spec.code.zip.sha256, spec.code.zip.url, "code")
            except PackageUnavailable as problem:
                raise NotReadyYet(problem.reason, str(problem)) from None
        assert spec.code.inline is not None  # exactly one source, by validation
        # Pods carry inline code in their annotations: no ConfigMap to create.
        return FileSet.from_files("code", spec.code.inline)

    def resolve_layers(self, spec: FunctionSpec) -> list[Content]:
        layers = []
        for ref in spec.layers:
            name = layer_config_map_name(ref.name, ref.version)
            config_map = kube.get("v1", "ConfigMap", name, self.namespace)
            if config_map is None:
                raise NotReadyYet(
                    "LayerNotFound", f"layer {ref.name} version {ref.version} does not exist"
                )
            try:
                layers.append(layer_content(self.config, config_map, ref.name, ref.version))
            except PackageUnavailable as problem:
                raise NotReadyYet(problem.reason, str(problem)) from None
        return layers

    def deploy(self, version: str, spec: FunctionSpec, provisioned: int = 0) -> dict[str, Any]:
        """Apply the Deployment and Service of one version; returns the Deployment as applied.

        Replicas belong to the autoscaler once the Deployment exists: the apply repeats the
        current count (so it never resets it); a new Deployment starts with one instance or
        its minimum, and scales to zero when left idle."""
        name = workload_name(self.name, version)
        existing = kube.get("apps/v1", "Deployment", name, self.namespace)
        runtime_image = self.config.runtime_images[spec.runtime.value] if spec.runtime else ""
        workload = Workload(
            function=self.name,
            version=version,
            spec=spec,
            image=spec.code.image or runtime_image,
            function_arn=function_arn(self.config.region, self.name),
            owner=self.body,
            replicas=int(existing["spec"].get("replicas") or 0) if existing else None,
            code=self.ensure_code(spec),
            layers=self.resolve_layers(spec),
            region=self.config.region,
            agent_image=self.config.agent_image,
            provisioned_concurrency=provisioned,
            namespace=self.namespace,
            announce_url=self.config.autoscaler_url,
            signing_key=self.config.store_signing_key,
        )
        deployment = kube.apply(
            with_specialization(function_deployment(workload), workload), self.namespace
        )
        kube.apply(function_service(self.name, version, self.body), self.namespace)
        return deployment

    def remove_unused_workloads(self, keep: set[str]) -> None:
        """Delete Deployments/Services of versions no alias uses any more ($LATEST stays)."""
        keep_slugs = {version_slug(v) for v in keep}
        for deployment in kube.list_objects(
            "apps/v1", "Deployment", self.namespace, {FUNCTION_LABEL: self.name}
        ):
            if deployment["metadata"]["labels"].get(VERSION_LABEL) not in keep_slugs:
                name = deployment["metadata"]["name"]
                log.info("removing %s/%s: no alias uses it", self.namespace, name)
                kube.delete("apps/v1", "Deployment", name, self.namespace)
                kube.delete("v1", "Service", name, self.namespace)

    def not_configured(self, reason: str, message: str) -> None:
        configured = self.observation.condition(
            CONFIGURED, ok=False, reason=reason, message=message
        )
        self.write_status(configured, None)

    def write_status(self, configured: Mapping[str, Any], latest: Mapping[str, Any] | None) -> None:
        observation = self.observation.with_updates(configured)
        conditions = observation.merged(ready_condition(observation, latest))
        status: dict[str, Any] = {
            "observedGeneration": self.observation.generation,
            "conditions": conditions,
            "latestVersion": max(self.versions, default=0),
            "versions": [{"version": LATEST}]
            + [
                {
                    "version": str(number),
                    "revision": revision["metadata"]["name"],
                    "codeSha256": self.snapshot_hash(number),
                }
                for number, revision in sorted(self.versions.items())
            ],
        }
        if latest is not None:
            status["replicas"] = replicas_status(latest)
            status["url"] = f"http://{workload_name(self.name, LATEST)}.{self.namespace}.svc:8080"
        kube.apply_status("Function", self.name, self.namespace, status, RECONCILE_MANAGER)


def reconcile_function(body: Mapping[str, Any], config: OperatorConfig) -> None:
    FunctionReconcile(body, config).run()


def replicas_status(deployment: Mapping[str, Any]) -> dict[str, int]:
    status = deployment.get("status") or {}
    return {
        "desired": int(deployment.get("spec", {}).get("replicas") or 0),
        "ready": int(status.get("readyReplicas") or 0),
    }


def refresh_readiness(
    namespace: str, function: str, latest_deployment: Mapping[str, Any] | None
) -> None:
    """Recompute Ready and replicas after the $LATEST Deployment changed."""
    body = kube.get(kube.GROUP_VERSION, "Function", function, namespace)
    if body is None:
        return
    status = body.get("status") or {}
    observation = Observation(
        status.get("conditions") or [], status.get("observedGeneration"), now()
    )
    problem = None
    if not deployment_rollout(latest_deployment)[2]:
        problem = latest_pod_problem(namespace, function)
    update: dict[str, Any] = {
        "conditions": [ready_condition(observation, latest_deployment, problem)]
    }
    if latest_deployment is not None:
        update["replicas"] = replicas_status(latest_deployment)
    kube.apply_status("Function", function, namespace, update, READINESS_MANAGER)


def latest_pod_problem(namespace: str, function: str) -> tuple[str, str] | None:
    """Why a $LATEST pod cannot start, if one says so."""
    pods = kube.list_objects(
        "v1", "Pod", namespace, {FUNCTION_LABEL: function, VERSION_LABEL: version_slug(LATEST)}
    )
    return next(filter(None, map(pod_problem, pods)), None)


def remove_unused_code(namespace: str, function: str) -> None:
    """Delete the function's inline-code ConfigMaps that no Deployment of the function and no
    remaining pod (e.g. of a finishing rollout) mounts: releases before pods carried their
    code in annotations stored code in ConfigMaps. Runs after each reconcile and whenever a
    function pod goes away."""
    selector = {FUNCTION_LABEL: function}
    deployments = kube.list_objects("apps/v1", "Deployment", namespace, selector)
    pods = kube.list_objects("v1", "Pod", namespace, selector)
    in_use = config_maps_in_use(
        [d["spec"]["template"]["spec"] for d in deployments] + [pod["spec"] for pod in pods]
    )
    for config_map in kube.list_objects("v1", "ConfigMap", namespace, selector):
        name = config_map["metadata"]["name"]
        if name not in in_use:
            log.info("removing %s/%s: superseded code", namespace, name)
            kube.delete("v1", "ConfigMap", name, namespace)
