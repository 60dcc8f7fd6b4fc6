"""Kubernetes API access for the data plane: a list+watch loop and a small aiohttp client.

The gateway (its routing table) and the invoker (its Function directory) keep in-memory
copies of resources with ``ResourceWatch``; this module imports neither, so both may use it.

One loop per resource, all namespaces: list (paged), hand the whole list to the sink, then
watch from the list's resourceVersion with bookmarks, so a reconnect resumes where it left off.
410 Gone (the resourceVersion is too old), as an HTTP status or an ERROR event, means list
again. Any other failure reconnects after an exponential backoff with jitter. Talking to the
API server is a small ``KubeApi`` protocol so the loop is tested without a cluster; the real
one (``HttpKubeApi``) is aiohttp with the pod's service account, or a kubeconfig.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_PAGE = 500
WATCH_TIMEOUT_S = 300  # server-side end of one watch request; it is then renewed
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class WatchedResource:
    kind: str
    path: str
    label_selector: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Gone(Exception):
    """The resourceVersion is too old: list again."""


class KubeApi(Protocol):
    async def list(self, path: str, params: Mapping[str, str]) -> JsonObject:
        """One page of a list call; raises ``ApiError``."""

    def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[JsonObject]:
        """The events of one watch call, until the server ends it; raises ``ApiError``."""


class WatchSink(Protocol):
    """Where a ``ResourceWatch`` keeps what it lists and watches (the gateway's routing table,
    the invoker's Function directory)."""

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Everything of ``kind`` after a (re-)list: objects not listed are gone."""

    def apply(self, kind: str, event: Mapping[str, Any]) -> None:
        """One ADDED, MODIFIED or DELETED watch event (``type`` and ``object``) of ``kind``."""


class ResourceWatch:
    def __init__(
        self,
        api: KubeApi,
        resource: WatchedResource,
        sink: WatchSink,
        on_synced: Callable[[str], None] = lambda kind: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self._resource = resource
        self._sink = sink
        self._on_synced = on_synced
        self._sleep = sleep
        self.resource_version: str | None = None

    def _params(self) -> dict[str, str]:
        selector = self._resource.label_selector
        return {"labelSelector": selector} if selector else {}

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                await self.watch_once()
                backoff = BACKOFF_MIN_S
            except Gone:
                log.info("%s: resourceVersion too old, listing again", self._resource.kind)
                self.resource_version = None
            except Exception as exc:
                # ValueError: a garbled response; the stream is retried like a dropped one.
                if isinstance(exc, (ApiError, aiohttp.ClientError, TimeoutError, ValueError)):
                    log.warning(
                        "%s watch failed (%s); retrying in %.1f s",
                        self._resource.kind,
                        exc,
                        backoff,
                    )
                else:
                    # A bug (in a sink, say) must not leave the watcher silently stale for good:
                    # list everything again after the pause.
                    log.exception("%s watch: unexpected error; listing again", self._resource.kind)
                    self.resource_version = None
                await self._sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def relist(self) -> None:
        items: list[JsonObject] = []
        params = self._params() | {"limit": str(LIST_PAGE)}
        while True:
            try:
                page = await self._api.list(self._resource.path, params)
            except ApiError as exc:
                if exc.status == 410:  # the continue token expired: start the list over
                    items.clear()
                    params.pop("continue", None)
                    continue
                raise
            items.extend(page.get("items") or ())
            metadata = page.get("metadata") or {}
            if not metadata.get("continue"):
                break
            params["continue"] = metadata["continue"]
        self._sink.replace(self._resource.kind, items)
        self.resource_version = str(metadata.get("resourceVersion") or "") or None
        log.info("%s: listed %d", self._resource.kind, len(items))
        self._on_synced(self._resource.kind)

    async def watch_once(self) -> None:
        params = self._params() | {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        try:
            async for event in self._api.watch(self._resource.path, params):
                self.handle(event)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone from exc
            raise

    def handle(self, event: Mapping[str, Any]) -> None:
        """One watch event: applied to the sink; the resourceVersion moves on."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone
            raise ApiError(int(code or 500), str(obj.get("message") or "watch error"))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._sink.apply(self._resource.kind, event)
        if version:
            self.resource_version = str(version)


# --- talking to the API server --------------------------------------------------------------


@dataclass(frozen=True)
class KubeConnection:
    server: str  # https://host:port
    ssl: ssl.SSLContext | bool
    token: str | None = None
    token_file: Path | None = None  # re-read on every call: service account tokens rotate

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster(env: Mapping[str, str]) -> KubeConnection | None:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    if ":" in host:
        host = f"[{host}]"
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    return KubeConnection(
        f"https://{host}:{port}", context, token_file=SERVICE_ACCOUNT_DIR / "token"
    )


def _load_data(context: ssl.SSLContext, cert: str | None, key: str | None) -> None:
    """A client certificate given as kubeconfig *-data fields (ssl wants files)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = Path(tmp) / name
            path.write_bytes(base64.b64decode(data or ""))
            paths.append(str(path))
        context.load_cert_chain(paths[0], paths[1])


def from_kubeconfig(path: str) -> KubeConnection:
    """The current context of a kubeconfig: token or client certificate auth (no exec plugins)."""
    config = yaml.safe_load(Path(path).read_text())
    base = Path(path).parent

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in config.get(section) or ():
            if entry.get("name") == name:
                return dict(entry.get(section[:-1]) or {})
        raise ValueError(f"{path}: no {section[:-1]} named {name!r}")

    context = named("contexts", config.get("current-context", ""))
    cluster = named("clusters", context.get("cluster", ""))
    user = named("users", context.get("user", "")) if context.get("user") else {}

    def file(value: str) -> str:
        return str(base / value)

    ssl_context: ssl.SSLContext | bool
    if cluster.get("insecure-skip-tls-verify"):
        ssl_context = False
    else:
        ssl_context = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
            ssl_context.load_verify_locations(cadata=ca)
        elif cluster.get("certificate-authority"):
            ssl_context.load_verify_locations(cafile=file(cluster["certificate-authority"]))
        if user.get("client-certificate-data"):
            _load_data(ssl_context, user["client-certificate-data"], user.get("client-key-data"))
        elif user.get("client-certificate"):
            ssl_context.load_cert_chain(
                file(user["client-certificate"]), file(user.get("client-key", ""))
            )
    token_file = user.get("tokenFile")
    return KubeConnection(
        str(cluster["server"]).rstrip("/"),
        ssl_context,
        token=user.get("token"),
        token_file=Path(file(token_file)) if token_file else None,
    )


def connection_from_env(
    kubeconfig: str | None, env: Mapping[str, str] = os.environ
) -> KubeConnection:
    """In-cluster service account, else the kubeconfig (``--kubeconfig`` / ``KUBECONFIG``)."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    connection = in_cluster(env)
    if connection is None:
        raise ValueError("not in a cluster and no kubeconfig given (--kubeconfig or KUBECONFIG)")
    return connection


class HttpKubeApi:
    def __init__(self, connection: KubeConnection, session: aiohttp.ClientSession) -> None:
        self._connection = connection
        self._session = session

    @contextlib.asynccontextmanager
    async def _request(
        self, path: str, params: Mapping[str, str], timeout: aiohttp.ClientTimeout
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET that answered 200; any other status raises ``ApiError``."""
        async with self._session.get(
            self._connection.server + path,
            params=params,
            headers=self._connection.headers(),
            ssl=self._connection.ssl,
            timeout=timeout,
        ) as response:
            if response.status != 200:
                raise ApiError(response.status, await response.text())
            yield response

    async def list(self, path: str, params: Mapping[str, str]) -> JsonObject:
        return await self.get(path, params)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        """One object (or list page); raises ``ApiError`` (404: there is none)."""
        async with self._request(path, params or {}, aiohttp.ClientTimeout(total=60)) as response:
            result: JsonObject = await response.json()
            return result

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret's data (base64 values), None when there is no such Secret."""
        try:
            secret = await self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        data = secret.get("data")
        return dict(data) if isinstance(data, dict) else {}

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[JsonObject]:
        # No event for longer than the server-side timeout means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30)
        async with self._request(path, params, timeout) as response:
            # Lines can be large (a Function with inline code): split them here rather than
            # with readline(), which has a line-length limit.
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
