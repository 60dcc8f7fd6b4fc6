"""Zip packages for e2e functions, uploaded to the platform's code store over HTTP."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

from tests.e2e.kube import PLATFORM_NAMESPACE, get

STORE = "kubelambda-store"


def zip_files(files: Mapping[str, str | bytes], modes: Mapping[str, int] | None = None) -> bytes:
    """A zip of path -> content; ``modes`` gives Unix modes (e.g. 0o755 for a bootstrap)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            info = zipfile.ZipInfo(path)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | (modes or {}).get(path, 0o644)) << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def store_address() -> str:
    service = get("service", STORE, PLATFORM_NAMESPACE)
    return str(service["spec"]["clusterIP"])


def upload_token() -> str:
    secret = get("secret", STORE, PLATFORM_NAMESPACE)
    return base64.b64decode(secret["data"]["uploadToken"]).decode()


def put(package: bytes, sha256: str | None = None) -> tuple[int, Any]:
    """PUT /v1/blobs/<sha256> with the upload token: (status, JSON answer)."""
    digest = sha256 or hashlib.sha256(package).hexdigest()
    conn = http.client.HTTPConnection(store_address(), 8080, timeout=60)
    try:
        conn.request(
            "PUT",
            f"/v1/blobs/{digest}",
            body=package,
            headers={"Authorization": f"Bearer {upload_token()}"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def upload(package: bytes) -> str:
    """Stores ``package``; returns its sha256, what code.zip.sha256 names."""
    status, answer = put(package)
    assert status in (200, 201), answer
    return str(answer["sha256"])
