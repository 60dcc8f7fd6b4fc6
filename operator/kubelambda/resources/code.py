"""Inline code and layers as immutable ConfigMaps, projected read-only into function pods.

ConfigMap keys cannot hold '/', so each file is stored under a generated key and the
``kubelambda.io/paths`` annotation maps keys back to relative paths. Layers are merged in order
into one projected volume at /opt: the operator resolves "later layer wins" itself, because the
API server rejects a projected volume that names one path twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubelambda.resources.names import MANAGED_BY, PATHS_ANNOTATION

# Everything under these prefixes (and a top-level `bootstrap`) is made executable, so custom
# runtimes and /opt/bin tools run; other files are read-only data.
EXECUTABLE_PREFIXES = ("bin/", "bootstrap")
EXECUTABLE_MODE = 0o555
DATA_MODE = 0o444


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
    """Files of one ConfigMap: its name and key -> path mapping (from the paths annotation)."""

    config_map: str
    paths: Mapping[str, str]

    @classmethod
    def from_config_map(cls, config_map: Mapping[str, Any]) -> FileSet:
        metadata = config_map["metadata"]
        return cls(metadata["name"], json.loads(metadata["annotations"][PATHS_ANNOTATION]))


def file_mode(path: str) -> int:
    return EXECUTABLE_MODE if path.startswith(EXECUTABLE_PREFIXES) else DATA_MODE


def projected_sources(file_sets: Iterable[FileSet]) -> list[dict[str, Any]]:
    """Projected-volume sources for ``file_sets`` in order; a later set's file wins a path."""
    winner: dict[str, tuple[str, str]] = {}
    for file_set in file_sets:
        for key, path in file_set.paths.items():
            winner[path] = (file_set.config_map, key)
    items_by_map: dict[str, list[dict[str, Any]]] = {}
    for path, (config_map, key) in sorted(winner.items()):
        items_by_map.setdefault(config_map, []).append(
            {"key": key, "path": path, "mode": file_mode(path)}
        )
    return [
        {"configMap": {"name": config_map, "items": items}}
        for config_map, items in items_by_map.items()
    ]
