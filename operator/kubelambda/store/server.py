"""The code store's HTTP server (aiohttp: it is not on the invocation hot path).

Every error it answers is ``{"message": ...}`` JSON, those aiohttp makes up too
(``kubelambda.jsonweb``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import signal
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kubelambda.jsonweb import JsonApiServer
from kubelambda.store.tokens import SHA256_RE, allows_read

log = logging.getLogger(__name__)

LAMBDA_ZIP_LIMIT = 50 * 1024 * 1024
CHUNK = 256 * 1024


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class StoreConfig:
    root: Path
    port: int
    upload_token: str
    signing_key: str
    max_bytes: int = LAMBDA_ZIP_LIMIT

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreConfig:
        upload_token = environ.get("KUBELAMBDA_STORE_UPLOAD_TOKEN", "")
        signing_key = environ.get("KUBELAMBDA_STORE_SIGNING_KEY", "")
        if not upload_token or not signing_key:
            raise ConfigError(
                "KUBELAMBDA_STORE_UPLOAD_TOKEN and KUBELAMBDA_STORE_SIGNING_KEY are required"
            )
        return cls(
            root=Path(environ.get("KUBELAMBDA_STORE_DIR") or "/data"),
            port=int(environ.get("KUBELAMBDA_STORE_PORT") or 8080),
            upload_token=upload_token,
            signing_key=signing_key,
            max_bytes=int(environ.get("KUBELAMBDA_STORE_MAX_BYTES") or LAMBDA_ZIP_LIMIT),
        )


def error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class UploadRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BlobStore:
    """Blobs at <root>/blobs/<first two hex digits>/<sha256>; uploads staged in <root>/incoming."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.blobs = config.root / "blobs"
        self.incoming = config.root / "incoming"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads interrupted by a crash are never referenced: drop them.
        for stale in self.incoming.iterdir():
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def bearer(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def is_admin(self, request: web.Request) -> bool:
        token = self.bearer(request)
        return bool(token) and hmac.compare_digest(_raw(token), _raw(self.config.upload_token))

    def may_read(self, request: web.Request, sha256: str) -> bool:
        token = self.bearer(request)
        return self.is_admin(request) or (
            bool(token) and allows_read(self.config.signing_key, sha256, token)
        )

    async def receive(self, request: web.Request) -> tuple[Path, str, int]:
        """Stream the body into a staging file; returns (file, its sha256, its size)."""
        limit = self.config.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise UploadRejected(413, f"package is {request.content_length} bytes; limit {limit}")
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.incoming)
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise UploadRejected(413, f"package is over the {limit}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise UploadRejected(400, "empty body: send the zip archive as the request body")
            if not await asyncio.to_thread(zipfile.is_zipfile, staged):
                raise UploadRejected(400, "the package is not a zip archive")
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged, digest.hexdigest(), size

    async def put(self, request: web.Request, expected: str | None) -> web.Response:
        if not self.is_admin(request):
            return error(401, "upload needs the store's upload token (Authorization: Bearer ...)")
        try:
            staged, sha256, size = await self.receive(request)
        except UploadRejected as rejected:
            return error(rejected.status, str(rejected))
        if expected is not None and sha256 != expected:
            staged.unlink(missing_ok=True)
            return error(400, f"sha256 mismatch: the URL names {expected}, the body is {sha256}")
        target = self.path(sha256)
        existed = target.exists()
        if existed:
            staged.unlink(missing_ok=True)
        else:
            target.parent.mkdir(exist_ok=True)
            staged.chmod(0o444)
            os.replace(staged, target)
            log.info("stored %s (%d bytes)", sha256, size)
        return web.json_response({"sha256": sha256, "size": size}, status=200 if existed else 201)

    async def handle_put(self, request: web.Request) -> web.Response:
        sha256 = request.match_info["sha256"]
        if not SHA256_RE.fullmatch(sha256):
            return error(400, "the blob name must be a lowercase hex SHA-256")
        return await self.put(request, sha256)

    async def handle_post(self, request: web.Request) -> web.Response:
        return await self.put(request, None)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        if not SHA256_RE.fullmatch(sha256):
            return error(400, "the blob name must be a lowercase hex SHA-256")
        if not self.may_read(request, sha256):
            return error(401, "reading a blob needs the upload token or that blob's read token")
        path = self.path(sha256)
        if not path.exists():
            return error(404, f"no package with sha256 {sha256} in the code store")
        return web.FileResponse(path, headers={"Content-Type": "application/zip"})

    async def handle_list(self, request: web.Request) -> web.Response:
        if not self.is_admin(request):
            return error(401, "listing needs the store's upload token")
        blobs = [
            {"sha256": path.name, "size": path.stat().st_size}
            for path in sorted(self.blobs.glob("??/*"))
        ]
        return web.json_response(blobs)

    async def handle_delete(self, request: web.Request) -> web.Response:
        if not self.is_admin(request):
            return error(401, "deleting needs the store's upload token")
        sha256 = request.match_info["sha256"]
        if not SHA256_RE.fullmatch(sha256):
            return error(400, "the blob name must be a lowercase hex SHA-256")
        path = self.path(sha256)
        if not path.exists():
            return error(404, f"no package with sha256 {sha256} in the code store")
        path.unlink()
        return web.Response(status=204)


def _raw(text: str) -> bytes:
    """A header value as the bytes it came as: compare_digest refuses non-ASCII strings, and
    aiohttp keeps undecodable bytes as surrogates."""
    return text.encode("utf-8", "surrogateescape")


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(config: StoreConfig) -> web.Application:
    store = BlobStore(config)
    app = web.Application()
    app.router.add_put("/v1/blobs/{sha256}", store.handle_put)
    app.router.add_post("/v1/blobs", store.handle_post)
    # add_get also registers HEAD.
    app.router.add_get("/v1/blobs/{sha256}", store.handle_get)
    app.router.add_get("/v1/blobs", store.handle_list)
    app.router.add_delete("/v1/blobs/{sha256}", store.handle_delete)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(config: StoreConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = JsonApiServer(build_app(config))
    await server.start(None, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format=json.dumps({"level": "%(levelname)s", "msg": "%(message)s"})
    )
    asyncio.run(serve(StoreConfig.from_env(os.environ)))
