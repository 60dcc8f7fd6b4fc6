"""What the invoker knows of each Function: reserved concurrency, timeout, async config and
schedules, kept current by a list+watch of ``functions.kubelambda.io`` in all namespaces.

``ApiDirectory.run`` lists (paged), then watches from the list's resourceVersion with bookmarks
and a server-side timeout, renewing the watch where the last one ended, so a change of a
Function reaches the invoker as soon as the API server sends it. 410 Gone (the
resourceVersion is too old, as an HTTP status or an ERROR event) means list again; any other
failure reconnects after an exponential backoff with jitter. Listeners (the worker reconciler,
the scheduler) are called whenever some function's settings changed; status-only updates of
Functions change nothing here and call nobody. A Function whose spec cannot be read keeps its
last known settings.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from pydantic import TypeAdapter, ValidationError

from kubelambda.api.function import AsyncConfig, Destination
from kubelambda.api.schedule import Schedule, check_unique_names
from kubelambda.gateway.watch import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    LIST_PAGE,
    WATCH_TIMEOUT_S,
    ApiError,
    Gone,
    JsonObject,
    KubeApi,
)

log = logging.getLogger(__name__)

FUNCTIONS_PATH = "/apis/kubelambda.io/v1alpha1/functions"
MAX_TIMEOUT_S = 900

FunctionKey = tuple[str, str]


@dataclass(frozen=True)
class FunctionSettings:
    reserved: int | None = None
    timeout_s: int = 3
    max_retries: int = 2
    max_age_s: int = 21600
    on_success: Destination | None = None
    on_failure: Destination | None = None
    uid: str = ""  # metadata.uid: tells a re-created function's schedules from the old ones'
    schedules: tuple[Schedule, ...] = ()


# For events whose Function the invoker does not know (deleted, or not listed yet): Lambda's
# defaults, and the longest timeout so a slow invocation is not cut short.
UNKNOWN_FUNCTION = FunctionSettings(timeout_s=MAX_TIMEOUT_S)


class FunctionDirectory(Protocol):
    def get(self, namespace: str, function: str) -> FunctionSettings | None: ...

    def keys(self) -> Iterable[FunctionKey]: ...


@dataclass
class StaticDirectory:
    """A fixed set of functions (tests, and runs without an API server)."""

    functions: dict[FunctionKey, FunctionSettings] = field(default_factory=dict)

    def get(self, namespace: str, function: str) -> FunctionSettings | None:
        return self.functions.get((namespace, function))

    def keys(self) -> Iterable[FunctionKey]:
        return list(self.functions)


_SCHEDULES = TypeAdapter(tuple[Schedule, ...])


def function_key(obj: Mapping[str, Any]) -> FunctionKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def settings_from_spec(spec: Mapping[str, Any], uid: str) -> FunctionSettings:
    """Raises ``ValidationError``/``ValueError`` for a spec the API server should have refused.

    Only the fields the invoker uses are read, so a newer CRD with fields this invoker does not
    know yet still works.
    """
    async_config = AsyncConfig.model_validate(spec.get("async") or {})
    concurrency = spec.get("concurrency") or {}
    reserved = concurrency.get("reserved")
    return FunctionSettings(
        reserved=None if reserved is None else int(reserved),
        timeout_s=int(spec.get("timeoutSeconds") or 3),
        max_retries=async_config.maximum_retry_attempts,
        max_age_s=async_config.maximum_event_age_seconds,
        on_success=async_config.on_success,
        on_failure=async_config.on_failure,
        uid=uid,
        schedules=check_unique_names(_SCHEDULES.validate_python(spec.get("schedules") or ())),
    )


class ApiDirectory:
    def __init__(
        self, api: KubeApi, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self._api = api
        self._sleep = sleep
        self._functions: dict[FunctionKey, FunctionSettings] = {}
        self._listeners: list[Callable[[], None]] = []
        self.resource_version: str | None = None
        self.synced = asyncio.Event()

    def get(self, namespace: str, function: str) -> FunctionSettings | None:
        return self._functions.get((namespace, function))

    def keys(self) -> Iterable[FunctionKey]:
        return list(self._functions)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of some function's settings."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _read(self, obj: Mapping[str, Any]) -> FunctionSettings | None:
        """The object's settings; its last known ones (or None) when its spec is unreadable."""
        key = function_key(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        try:
            return settings_from_spec(obj.get("spec") or {}, uid)
        except (ValidationError, ValueError, TypeError) as exc:
            log.warning("function %s/%s: unreadable spec (%s)", *key, exc)
            return self._functions.get(key)

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                await self.watch_once()
                backoff = BACKOFF_MIN_S
            except Gone:
                log.info("functions: resourceVersion too old, listing again")
                self.resource_version = None
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # ValueError: a garbled response; retried like a dropped connection.
                log.warning("watching functions failed (%s); retrying in %.1f s", exc, backoff)
                await self._sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def relist(self) -> None:
        items: list[JsonObject] = []
        params = {"limit": str(LIST_PAGE)}
        while True:
            try:
                page = await self._api.list(FUNCTIONS_PATH, params)
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
        functions: dict[FunctionKey, FunctionSettings] = {}
        for item in items:
            settings = self._read(item)
            if settings is not None:
                functions[function_key(item)] = settings
        self.resource_version = str(metadata.get("resourceVersion") or "") or None
        log.info("functions: listed %d", len(items))
        if functions != self._functions:
            self._functions = functions
            self._changed()
        self.synced.set()

    async def watch_once(self) -> None:
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        try:
            async for event in self._api.watch(FUNCTIONS_PATH, params):
                self.handle(event)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone from exc
            raise

    def handle(self, event: Mapping[str, Any]) -> None:
        """One watch event: applied to the functions; the resourceVersion moves on."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone
            raise ApiError(int(code or 500), str(obj.get("message") or "watch error"))
        key = function_key(obj)
        before = self._functions.get(key)
        if kind == "DELETED":
            self._functions.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            settings = self._read(obj)
            if settings is not None:
                self._functions[key] = settings
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if self._functions.get(key) != before:
            self._changed()
