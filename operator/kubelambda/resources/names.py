"""Predictable names and labels of the objects the operator owns.

Predictable names make every create idempotent: a retried or duplicated reconcile hits 409 or
patches the same object, never a twin.
"""

from __future__ import annotations

LATEST = "$LATEST"
DOMAIN = "kubelambda.io"
FUNCTION_LABEL = f"{DOMAIN}/function"
VERSION_LABEL = f"{DOMAIN}/version"
LAYER_LABEL = f"{DOMAIN}/layer"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubelambda"}
SNAPSHOT_HASH_ANNOTATION = f"{DOMAIN}/snapshot-sha256"
PATHS_ANNOTATION = f"{DOMAIN}/paths"
# A function version's ScalingPolicy (JSON) on its Deployment: all the autoscaler reads.
SCALING_ANNOTATION = f"{DOMAIN}/scaling"


def version_slug(version: str) -> str:
    """``$LATEST`` -> ``latest``, ``7`` -> ``v7``: the version as a DNS-label fragment."""
    return "latest" if version == LATEST else f"v{version}"


def version_from_slug(slug: str) -> str | None:
    """Inverse of ``version_slug``: ``latest`` -> ``$LATEST``, ``v7`` -> ``7``; None otherwise."""
    if slug == "latest":
        return LATEST
    if slug.startswith("v") and slug[1:].isdigit():
        return slug[1:]
    return None


def workload_name(function: str, version: str) -> str:
    """Deployment and Service of one function version, e.g. ``fn-hello-v3``."""
    return f"fn-{function}-{version_slug(version)}"


def revision_name(function: str, version: int) -> str:
    """ControllerRevision holding published version ``version``."""
    return f"fn-{function}-r{version}"


def layer_config_map_name(layer: str, version: int) -> str:
    """ConfigMap holding one immutable Layer version."""
    return f"layer-{layer}-v{version}"


def workload_labels(function: str, version: str) -> dict[str, str]:
    return {
        FUNCTION_LABEL: function,
        VERSION_LABEL: version_slug(version),
        COMPONENT_LABEL: "function",
        **MANAGED_BY,
    }
