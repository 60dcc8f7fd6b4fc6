"""What the invoker knows of each Function: reserved concurrency, timeout, async config and
schedules, kept current by a list+watch of ``functions.kubelambda.io`` in all namespaces.

``ApiDirectory.run`` is the list+watch loop the gateway uses too (``kubelambda.kubeapi``), with
the directory as its sink, so a change of a Function reaches the invoker as soon as the API
server sends it. Listeners (the worker reconciler, the scheduler) are called whenever some
function's settings changed; status-only updates of Functions change nothing here and call
nobody. A Function whose spec cannot be read keeps its last known settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from kubelambda.api.function import AsyncConfig, Destination
from kubelambda.api.schedule import Schedule, check_unique_names
from kubelambda.kubeapi import KubeApi, ResourceWatch, WatchedResource

log = logging.getLogger(__name__)

FUNCTIONS = WatchedResource("Function", "/apis/kubelambda.io/v1alpha1/functions")
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
    """The functions the API server has; ``run`` keeps them current (a ``WatchSink``)."""

    def __init__(
        self, api: KubeApi, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self._functions: dict[FunctionKey, FunctionSettings] = {}
        self._listeners: list[Callable[[], None]] = []
        self.synced = asyncio.Event()
        self._watch = ResourceWatch(api, FUNCTIONS, self, sleep=sleep)

    async def run(self) -> None:
        await self._watch.run()

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

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """A (re-)list: functions not listed are gone; from the first one on, ``synced``."""
        functions: dict[FunctionKey, FunctionSettings] = {}
        for obj in objects:
            settings = self._read(obj)
            if settings is not None:
                functions[function_key(obj)] = settings
        if functions != self._functions:
            self._functions = functions
            self._changed()
        self.synced.set()

    def apply(self, kind: str, event: Mapping[str, Any]) -> None:
        """One ADDED, MODIFIED or DELETED event; listeners only hear of changed settings."""
        obj = event.get("object") or {}
        key = function_key(obj)
        before = self._functions.get(key)
        if event.get("type") == "DELETED":
            self._functions.pop(key, None)
        else:
            settings = self._read(obj)
            if settings is not None:
                self._functions[key] = settings
        if self._functions.get(key) != before:
            self._changed()
