"""The code store as a real process on a local port: uploads, digests, limits, tokens."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from kubelambda.store.tokens import read_token
from tests.unit.ports import free_port

UPLOAD = "upload-secret"
SIGNING = "signing-secret"
LIMIT = 64 * 1024


class Reply(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class Store:
    def __init__(self, port: int, root: Path) -> None:
        self.port = port
        self.root = root

    def call(
        self, method: str, path: str, body: bytes | None = None, token: str | None = UPLOAD
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        reply = Reply(response.status, response.read())
        conn.close()
        return reply


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    port = free_port()
    env = {
        **os.environ,
        "KUBELAMBDA_STORE_DIR": str(tmp_path),
        "KUBELAMBDA_STORE_PORT": str(port),
        "KUBELAMBDA_STORE_UPLOAD_TOKEN": UPLOAD,
        "KUBELAMBDA_STORE_SIGNING_KEY": SIGNING,
        "KUBELAMBDA_STORE_MAX_BYTES": str(LIMIT),
    }
    proc = subprocess.Popen([sys.executable, "-m", "kubelambda.store"], env=env)
    running = Store(port, tmp_path)
    deadline = time.monotonic() + 20
    while True:
        try:
            if running.call("GET", "/healthz", token=None).status == 200:
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    yield running
    proc.terminate()
    proc.wait(10)


def test_put_get_roundtrip_is_content_addressed(store: Store) -> None:
    package = zip_bytes({"app.py": b"def handler(e, c):\n    return 1\n"})
    sha = hashlib.sha256(package).hexdigest()
    created = store.call("PUT", f"/v1/blobs/{sha}", package)
    assert (created.status, created.json()) == (201, {"sha256": sha, "size": len(package)})
    assert store.call("PUT", f"/v1/blobs/{sha}", package).status == 200
    assert store.call("GET", f"/v1/blobs/{sha}") == Reply(200, package)
    assert store.call("GET", "/v1/blobs").json() == [{"sha256": sha, "size": len(package)}]
    assert not list((store.root / "incoming").iterdir())


def test_post_computes_the_digest(store: Store) -> None:
    package = zip_bytes({"a.txt": b"a"})
    reply = store.call("POST", "/v1/blobs", package)
    assert reply.status == 201
    assert reply.json()["sha256"] == hashlib.sha256(package).hexdigest()


def test_read_token_grants_one_blob_only(store: Store) -> None:
    one, two = zip_bytes({"1": b"1"}), zip_bytes({"2": b"2"})
    sha_one, sha_two = (hashlib.sha256(p).hexdigest() for p in (one, two))
    store.call("PUT", f"/v1/blobs/{sha_one}", one)
    store.call("PUT", f"/v1/blobs/{sha_two}", two)
    token = read_token(SIGNING, sha_one)
    assert store.call("GET", f"/v1/blobs/{sha_one}", token=token) == Reply(200, one)
    assert store.call("HEAD", f"/v1/blobs/{sha_one}", token=token).status == 200
    assert store.call("GET", f"/v1/blobs/{sha_two}", token=token).status == 401
    assert store.call("GET", f"/v1/blobs/{sha_one}", token=None).status == 401
    # A read token is not an upload token.
    assert store.call("PUT", f"/v1/blobs/{sha_one}", one, token=token).status == 401
    assert store.call("GET", "/v1/blobs", token=token).status == 401


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("0" * 64, zip_bytes({"x": b"x"}), 400, "sha256 mismatch"),
        ("ABC", zip_bytes({"x": b"x"}), 400, "lowercase hex SHA-256"),
        (None, b"not a zip at all", 400, "not a zip archive"),
        (None, b"", 400, "empty body"),
        (None, b"x" * (LIMIT + 1), 413, "limit"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    store: Store, name: str | None, body: bytes, status: int, message: str
) -> None:
    path = f"/v1/blobs/{name}" if name else "/v1/blobs"
    reply = store.call("PUT" if name else "POST", path, body)
    assert reply.status == status
    assert message in reply.json()["message"]
    assert store.call("GET", "/v1/blobs").json() == []
    assert not list((store.root / "incoming").iterdir())


def test_missing_blob_and_delete(store: Store) -> None:
    package = zip_bytes({"x": b"x"})
    sha = hashlib.sha256(package).hexdigest()
    assert store.call("GET", f"/v1/blobs/{sha}").status == 404
    store.call("PUT", f"/v1/blobs/{sha}", package)
    assert store.call("DELETE", f"/v1/blobs/{sha}", token=read_token(SIGNING, sha)).status == 401
    assert store.call("DELETE", f"/v1/blobs/{sha}").status == 204
    assert store.call("GET", f"/v1/blobs/{sha}").status == 404


def test_every_error_is_json(store: Store) -> None:
    """Those aiohttp makes up too: an unknown path or method, a request it cannot parse."""
    for method, path, status in (("GET", "/nowhere", 404), ("PATCH", "/v1/blobs", 405)):
        reply = store.call(method, path)
        assert reply.status == status
        assert isinstance(reply.json()["message"], str)
    with socket.create_connection(("127.0.0.1", store.port), timeout=10) as conn:
        conn.sendall(b"GARBAGE\r\n\r\n")
        head, _, body = conn.makefile("rb").read().partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"message": "Invalid method encountered"}
