"""Inline code and layers, mounted file by file, read-only, into pods.

A pod carries its inline files in its own annotations, read by downward API volumes, up to
``ANNOTATED_FILES_BUDGET`` bytes: the kubelet then starts it without fetching any other
object. (A ConfigMap volume of a pod just bound to the node can be refused by the API server's
node authorizer, which has not seen the binding yet; the kubelet then waits a second and
retries: +1.5 s on one cold start in five here.) Inline layers are stored as immutable
ConfigMaps, which files past the budget are mounted from. A function's own inline code (at most
64 KiB) always fits, so it needs no ConfigMap.

ConfigMap keys cannot hold '/', so each file is stored under a generated key and the
``kubelambda.io/paths`` annotation maps keys back to relative paths. Layers are merged in order
at /opt: the operator resolves "later layer wins" itself by mounting only the winning file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubelambda.resources.names import DOMAIN, MANAGED_BY, PATHS_ANNOTATION

# On a layer version's ConfigMap: the zip package or image it stands for (JSON); absent for
# inline content, whose files are the ConfigMap's data.
CONTENT_ANNOTATION = f"{DOMAIN}/content"

# Everything under these prefixes (and a top-level `bootstrap`) is made executable, so custom
# runtimes and /opt/bin tools run; other files are read-only data.
EXECUTABLE_PREFIXES = ("bin/", "bootstrap")
EXECUTABLE_MODE = 0o555
DATA_MODE = 0o444

FILES_ANNOTATION_PREFIX = f"files.{DOMAIN}/"
# Of the 256 KiB Kubernetes allows for all of a pod's annotations.
ANNOTATED_FILES_BUDGET = 192 * 1024


@dataclass
class AnnotationBudget:
    """Bytes of inline files one pod may still carry in its annotations."""

    left: int = ANNOTATED_FILES_BUDGET


def files_sha256(files: Mapping[str, str]) -> str:
    """Content hash of a set of files, independent of insertion order."""
    canonical = json.dumps(sorted(files.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_key(index: int) -> str:
    return f"f{index:03d}"


def files_config_map(
    name: str, files: Mapping[str, str], labels: Mapping[str, str], owner: Mapping[str, Any]
) -> dict[str, Any]:
    """An immutable ConfigMap holding ``files`` (path -> content)."""
    paths = sorted(files)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {**labels, **MANAGED_BY},
            "annotations": {
                PATHS_ANNOTATION: json.dumps({file_key(i): p for i, p in enumerate(paths)})
            },
            "ownerReferences": [dict(owner)],
        },
        "immutable": True,
        "data": {file_key(i): files[p] for i, p in enumerate(paths)},
    }


@dataclass(frozen=True)
class FileSet:
    """Inline files: key -> path mapping, and the ConfigMap holding them under those keys."""

    config_map: str
    paths: Mapping[str, str]
    contents: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Path -> content, when at hand (pods carry them in annotations; a warm-pool pod is sent
    them: it cannot mount anything after it started)."""
    stored: bool = True
    """Whether the ConfigMap exists; a function's own code is only ever annotated."""

    @classmethod
    def from_files(cls, config_map: str, files: Mapping[str, str]) -> FileSet:
        """Files that have no ConfigMap (``config_map`` names them in messages)."""
        paths = {file_key(i): p for i, p in enumerate(sorted(files))}
        return cls(config_map, paths, dict(files), stored=False)

    @classmethod
    def from_config_map(cls, config_map: Mapping[str, Any]) -> FileSet:
        metadata = config_map["metadata"]
        paths: dict[str, str] = json.loads(metadata["annotations"][PATHS_ANNOTATION])
        data = config_map.get("data") or {}
        contents = {path: data[key] for key, path in paths.items() if key in data}
        return cls(metadata["name"], paths, contents if len(contents) == len(paths) else {})


def file_mode(path: str) -> int:
    return EXECUTABLE_MODE if path.startswith(EXECUTABLE_PREFIXES) else DATA_MODE


def files_volume(
    name: str, file_set: FileSet, items: Sequence[Mapping[str, Any]], budget: AnnotationBudget
) -> tuple[dict[str, Any], dict[str, str]]:
    """A volume with ``items`` (key, path, mode) of ``file_set``, and the annotations it reads.

    From the pod's annotations while the files are at hand and fit what is left of the pod's
    ``budget``, else from the set's ConfigMap."""
    complete = len(file_set.contents) == len(file_set.paths)
    size = (
        sum(len(file_set.contents[file_set.paths[i["key"]]].encode()) for i in items)
        if complete
        else 0
    )
    if complete and size <= budget.left:
        budget.left -= size
        annotations = {}
        fields = []
        for item in items:
            annotation = f"{FILES_ANNOTATION_PREFIX}{name}.{item['key']}"
            annotations[annotation] = file_set.contents[file_set.paths[item["key"]]]
            field_path = f"metadata.annotations['{annotation}']"
            fields.append({"path": item["path"], "fieldRef": {"fieldPath": field_path}})
            if "mode" in item:
                fields[-1]["mode"] = item["mode"]
        return {"name": name, "downwardAPI": {"items": fields}}, annotations
    if not file_set.stored:
        raise ValueError(f"{file_set.config_map}: inline files past the pod's annotation budget")
    return {"name": name, "configMap": {"name": file_set.config_map, "items": list(items)}}, {}


@dataclass(frozen=True)
class FileMounts:
    """Volumes, one read-only subPath mount per file, and the pod annotations they read."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    annotations: dict[str, str] = field(default_factory=dict)


def file_mounts(
    file_sets: Sequence[FileSet], root: str, volume_prefix: str, budget: AnnotationBudget
) -> FileMounts:
    """Mounts every file of ``file_sets`` at ``root``/path; a later set's file wins a path.

    One subPath mount per file gives the function plain files. (A whole ConfigMap volume is
    built from timestamped symlinks, "app.js -> ..data/app.js", and Node.js resolves symlinks:
    functions would see /var/task/..2026_01_01.../app.js in __filename and stack traces.)
    """
    winner: dict[str, tuple[int, str]] = {}
    for index, file_set in enumerate(file_sets):
        for key, path in file_set.paths.items():
            winner[path] = (index, key)
    items: dict[int, list[dict[str, Any]]] = {}
    mounts = []
    for path, (index, key) in sorted(winner.items()):
        items.setdefault(index, []).append({"key": key, "path": key, "mode": file_mode(path)})
        mounts.append(
            {
                "name": f"{volume_prefix}-{index}",
                "mountPath": f"{root}/{path}",
                "subPath": key,
                "readOnly": True,
            }
        )
    volumes = []
    annotations: dict[str, str] = {}
    for index, index_items in sorted(items.items()):
        volume, read = files_volume(
            f"{volume_prefix}-{index}", file_sets[index], index_items, budget
        )
        volumes.append(volume)
        annotations |= read
    return FileMounts(volumes, mounts, annotations)


def config_maps_in_use(pod_specs: Sequence[Mapping[str, Any]]) -> set[str]:
    """Names of the ConfigMaps these pod specs mount as volumes."""
    return {
        volume["configMap"]["name"]
        for pod_spec in pod_specs
        for volume in pod_spec.get("volumes") or []
        if "configMap" in volume
    }


@dataclass(frozen=True)
class ZipPackage:
    """A zip package fetched by the pod's unpack init container and checked against sha256."""

    sha256: str
    url: str
    token: str | None
    """Read token for the code store (None for a plain URL)."""
    what: str
    """How errors name it, e.g. ``code`` or ``layer tools version 2``."""


@dataclass(frozen=True)
class ImageContent:
    """A layer shipped as a container image: its /opt is copied into the pod's /opt."""

    image: str
    what: str


Content = FileSet | ZipPackage | ImageContent
UNPACK_LIMIT_BYTES = 250 * 1024 * 1024
UNPACK_COMMAND = "/var/runtime/bin/kubelambda-unpack"  # in every runtime image
# Room for Lambda's 250 MB of unzipped code and layers, with filesystem overhead.
UNPACKED_DIR_SIZE = "300Mi"
UNPACK_MEMORY = "192Mi"  # a 50 MB package is held in memory while it is checked


@dataclass(frozen=True)
class UnpackedFiles:
    """Code and layers copied into emptyDirs by init containers, mounted read-only."""

    volumes: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    annotations: dict[str, str] = field(default_factory=dict)


def needs_unpack(code: Content | None, layers: Sequence[Content]) -> bool:
    """Inline-only functions get their files mounted directly: no init container, faster."""
    return not all(isinstance(c, FileSet) for c in (*([code] if code else []), *layers))


def unpacked_files(
    code: Content | None,
    layers: Sequence[Content],
    *,
    unpack_image: str,
    security_context: Mapping[str, Any],
    task_root: str,
    layers_root: str,
    budget: AnnotationBudget,
) -> UnpackedFiles:
    """Init containers that fill /var/task and /opt in order (later layers win).

    Consecutive zip and inline sources share one unpack container (the runtime image running
    ``kubelambda.agent.unpack``); each image layer is copied by a container of its own image,
    which therefore needs ``cp``.
    """
    volumes: list[dict[str, Any]] = [
        {"name": "task", "emptyDir": {"sizeLimit": UNPACKED_DIR_SIZE}},
        {"name": "opt", "emptyDir": {"sizeLimit": UNPACKED_DIR_SIZE}},
    ]
    targets = [
        {"name": "task", "mountPath": task_root},
        {"name": "opt", "mountPath": layers_root},
    ]
    init_containers: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    annotations: dict[str, str] = {}

    def flush() -> None:
        if not steps:
            return
        plan = {
            "limitBytes": UNPACK_LIMIT_BYTES,
            "roots": [task_root, layers_root],
            "steps": list(steps),
        }
        init_containers.append(
            {
                "name": f"unpack-{len(init_containers)}",
                "image": unpack_image,
                "imagePullPolicy": "IfNotPresent",
                "command": [UNPACK_COMMAND],
                "env": [{"name": "KUBELAMBDA_UNPACK", "value": json.dumps(plan)}],
                "resources": {"limits": {"memory": UNPACK_MEMORY}},
                "securityContext": dict(security_context),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": targets + list(sources),
            }
        )
        steps.clear()
        sources.clear()

    entries = [(task_root, code)] if code else []
    entries += [(layers_root, layer) for layer in layers]
    for index, (target, content) in enumerate(entries):
        if isinstance(content, ImageContent):
            flush()
            init_containers.append(
                {
                    "name": f"layer-{index}",
                    "image": content.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["cp", "-R", f"{layers_root}/.", "/kubelambda/opt/"],
                    "securityContext": dict(security_context),
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [{"name": "opt", "mountPath": "/kubelambda/opt"}],
                }
            )
        elif isinstance(content, ZipPackage):
            package = {"url": content.url, "sha256": content.sha256}
            if content.token:
                package["token"] = content.token
            steps.append({"target": target, "zip": package, "what": content.what})
        else:
            source_dir = f"/kubelambda/src/{index}"
            items = [{"key": key, "path": key} for key in sorted(content.paths)]
            volume, read = files_volume(f"src-{index}", content, items, budget)
            volumes.append(volume)
            annotations |= read
            sources.append({"name": f"src-{index}", "mountPath": source_dir, "readOnly": True})
            steps.append(
                {
                    "target": target,
                    "files": {"dir": source_dir, "paths": dict(content.paths)},
                    "what": content.config_map,
                }
            )
    flush()
    read_only = [{**mount, "readOnly": True} for mount in targets]
    return UnpackedFiles(volumes, init_containers, read_only, annotations)
