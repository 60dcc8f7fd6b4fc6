"""Reconcile a Layer: each new content becomes an immutable, numbered version (a ConfigMap)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubelambda.api import LayerSpec
from kubelambda.api.code import CodeSource
from kubelambda.controller import kube
from kubelambda.controller.config import OperatorConfig
from kubelambda.controller.reporting import now, validation_message
from kubelambda.controller.store import PackageUnavailable, package
from kubelambda.resources.code import (
    CONTENT_ANNOTATION,
    Content,
    FileSet,
    ImageContent,
    files_config_map,
    files_sha256,
)
from kubelambda.resources.function import owner_reference
from kubelambda.resources.names import (
    LAYER_LABEL,
    SNAPSHOT_HASH_ANNOTATION,
    VERSION_LABEL,
    layer_config_map_name,
)
from kubelambda.resources.status import READY, Observation


def remote_content(source: CodeSource) -> dict[str, object] | None:
    """What a zip or image layer version records instead of files (None for inline)."""
    if source.zip is not None:
        return {"zip": source.zip.model_dump(mode="json", exclude_none=True)}
    if source.image is not None:
        return {"image": source.image}
    return None


def content_digest(source: CodeSource) -> str:
    """Identity of a layer's content: a change publishes a new version."""
    if source.inline is not None:
        return files_sha256(source.inline)
    canonical = json.dumps(remote_content(source), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def code_sha256(config_map: Mapping[str, Any]) -> str | None:
    """Lambda's CodeSha256 of a version: the package's digest (none for image content)."""
    remote = config_map["metadata"]["annotations"].get(CONTENT_ANNOTATION)
    if remote is None:
        return content_hash(config_map)
    zip_source = json.loads(remote).get("zip")
    return str(zip_source["sha256"]) if zip_source else None


def version_status(number: int, config_map: Mapping[str, Any]) -> dict[str, Any]:
    digest = code_sha256(config_map)
    return {"version": number} | ({"codeSha256": digest} if digest else {})


def layer_content(
    config: OperatorConfig, config_map: Mapping[str, Any], layer: str, version: int
) -> Content:
    """One layer version as a pod consumes it."""
    what = f"layer {layer} version {version}"
    remote = config_map["metadata"]["annotations"].get(CONTENT_ANNOTATION)
    if remote is None:
        return FileSet.from_config_map(config_map)
    content = json.loads(remote)
    if "image" in content:
        return ImageContent(str(content["image"]), what)
    zip_source = content["zip"]
    return package(config, zip_source["sha256"], zip_source.get("url"), what)


def layer_versions(namespace: str, layer: str) -> dict[int, dict[str, Any]]:
    config_maps = kube.list_objects("v1", "ConfigMap", namespace, {LAYER_LABEL: layer})
    return {
        int(cm["metadata"]["labels"][VERSION_LABEL].removeprefix("v")): cm for cm in config_maps
    }


def content_hash(config_map: Mapping[str, Any]) -> str:
    return str(config_map["metadata"]["annotations"][SNAPSHOT_HASH_ANNOTATION])


def reconcile_layer(body: Mapping[str, Any], config: OperatorConfig) -> None:
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
    content = spec.content
    zip_source = content.zip
    if zip_source is not None and zip_source.url is None:
        # Publish only what a pod can fetch: the package must be in the code store.
        try:
            package(config, zip_source.sha256, None, f"layer {layer}")
        except PackageUnavailable as problem:
            not_ready(problem.reason, str(problem))
            return

    versions = layer_versions(namespace, layer)
    digest = content_digest(content)
    latest = max(versions, default=0)
    if not latest or content_hash(versions[latest]) != digest:
        latest += 1
        config_map = files_config_map(
            layer_config_map_name(layer, latest),
            content.inline or {},
            {LAYER_LABEL: layer, VERSION_LABEL: f"v{latest}"},
            owner_reference(body),
        )
        annotations = config_map["metadata"]["annotations"]
        annotations[SNAPSHOT_HASH_ANNOTATION] = digest
        remote = remote_content(content)
        if remote is not None:
            annotations[CONTENT_ANNOTATION] = json.dumps(remote, sort_keys=True)
        kube.create(config_map, namespace)
        versions[latest] = config_map

    ready = observation.condition(READY, ok=True, reason="Published", message=f"version {latest}")
    status = {
        "observedGeneration": observation.generation,
        "conditions": observation.merged(ready),
        "latestVersion": latest,
        "versions": [version_status(n, cm) for n, cm in sorted(versions.items())],
    }
    kube.patch_status("Layer", layer, namespace, status)
