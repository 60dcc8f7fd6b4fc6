"""Inline code and layers as immutable ConfigMaps, mounted file by file, read-only, into pods.

ConfigMap keys cannot hold '/', so each file is stored under a generated key and the
``kubelambda.io/paths`` annotation maps keys back to relative paths. Layers are merged in order
at /opt: the operator resolves "later layer wins" itself by mounting only the winning file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class FileMounts:
    """ConfigMap volumes and one read-only subPath mount per file."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def file_mounts(file_sets: Sequence[FileSet], root: str, volume_prefix: str) -> FileMounts:
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
    volumes = [
        {
            "name": f"{volume_prefix}-{index}",
            "configMap": {"name": file_sets[index].config_map, "items": index_items},
        }
        for index, index_items in sorted(items.items())
    ]
    return FileMounts(volumes, mounts)
