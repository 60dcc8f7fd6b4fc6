"""Reconcile a Layer: each new content becomes an immutable, numbered version (a ConfigMap)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubelambda.api import LayerSpec
from kubelambda.controller import kube
from kubelambda.controller.functions import now, validation_message
from kubelambda.resources.code import files_config_map, files_sha256
from kubelambda.resources.function import owner_reference
from kubelambda.resources.names import (
    LAYER_LABEL,
    SNAPSHOT_HASH_ANNOTATION,
    VERSION_LABEL,
    layer_config_map_name,
)
from kubelambda.resources.status import READY, Observation


def layer_versions(namespace: str, layer: str) -> dict[int, dict[str, Any]]:
    config_maps = kube.list_objects("v1", "ConfigMap", namespace, {LAYER_LABEL: layer})
    return {
        int(cm["metadata"]["labels"][VERSION_LABEL].removeprefix("v")): cm for cm in config_maps
    }


def content_hash(config_map: Mapping[str, Any]) -> str:
    return str(config_map["metadata"]["annotations"][SNAPSHOT_HASH_ANNOTATION])


def reconcile_layer(body: Mapping[str, Any]) -> None:
    metadata = body["metadata"]
    namespace, layer = metadata["namespace"], metadata["name"]
    observation = Observation(
        (body.get("status") or {}).get("conditions") or [], metadata.get("generation"), now()
    )

    def not_ready(reason: str, message: str) -> None:
        ready = observation.condition(READY, ok=False, reason=reason, message=message)
        kube.patch_status("Layer", layer, namespace, {"conditions": observation.merged(ready)})

    try:
        spec = LayerSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        not_ready("InvalidSpec", validation_message(error))
        return
    files = spec.content.inline
    if files is None:
        not_ready("ContentSourceUnsupported", "only inline layer content is supported so far")
        return

    versions = layer_versions(namespace, layer)
    digest = files_sha256(files)
    latest = max(versions, default=0)
    if not latest or content_hash(versions[latest]) != digest:
        latest += 1
        config_map = files_config_map(
            layer_config_map_name(layer, latest),
            files,
            {LAYER_LABEL: layer, VERSION_LABEL: f"v{latest}"},
            owner_reference(body),
        )
        config_map["metadata"]["annotations"][SNAPSHOT_HASH_ANNOTATION] = digest
        kube.create(config_map, namespace)
        versions[latest] = config_map

    ready = observation.condition(READY, ok=True, reason="Published", message=f"version {latest}")
    status = {
        "observedGeneration": observation.generation,
        "conditions": observation.merged(ready),
        "latestVersion": latest,
        "versions": [
            {"version": n, "codeSha256": content_hash(cm)} for n, cm in sorted(versions.items())
        ],
    }
    kube.patch_status("Layer", layer, namespace, status)
