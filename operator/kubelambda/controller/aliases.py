"""An Alias's status: Ready when its function exists and every version it names is published."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubelambda.controller import kube
from kubelambda.controller.reporting import now
from kubelambda.resources.names import FUNCTION_LABEL, LATEST
from kubelambda.resources.status import READY, Observation


def alias_problem(
    spec: Mapping[str, Any], function: Mapping[str, Any] | None, published: set[str]
) -> str | None:
    """Why the alias cannot route yet, or None."""
    if function is None:
        return f"function {spec.get('function')} does not exist"
    wanted = {str(spec.get("version"))}
    additional = (spec.get("routing") or {}).get("additionalVersion")
    if additional:
        wanted.add(str(additional))
    missing = sorted(wanted - published - {LATEST})
    if missing:
        return f"version {', '.join(missing)} of {spec.get('function')} is not published"
    return None


def update_alias_status(body: Mapping[str, Any]) -> None:
    metadata, spec = body["metadata"], body.get("spec") or {}
    namespace = metadata["namespace"]
    function = kube.get(kube.GROUP_VERSION, "Function", str(spec.get("function")), namespace)
    revisions = kube.list_objects(
        "apps/v1", "ControllerRevision", namespace, {FUNCTION_LABEL: str(spec.get("function"))}
    )
    problem = alias_problem(spec, function, {str(r["revision"]) for r in revisions})
    observation = Observation(
        (body.get("status") or {}).get("conditions") or [], metadata.get("generation"), now()
    )
    ready = observation.condition(
        READY,
        ok=problem is None,
        reason="VersionsPublished" if problem is None else "VersionNotFound",
        message=problem or "",
    )
    kube.patch_status(
        "Alias",
        metadata["name"],
        namespace,
        {"observedGeneration": observation.generation, "conditions": observation.merged(ready)},
    )
