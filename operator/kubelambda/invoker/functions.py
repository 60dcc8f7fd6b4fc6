"""What the invoker knows of each Function: reserved concurrency, timeout and async config.

``ApiDirectory`` lists Functions (all namespaces) through the API server every few seconds:
async settings change rarely and a late change only affects events not yet delivered, so a
periodic list is enough and far simpler than a watch. A Function whose spec cannot be read
keeps its last known settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from kubelambda.api.function import AsyncConfig, Destination
from kubelambda.gateway.watch import ApiError, KubeApi

log = logging.getLogger(__name__)

FUNCTIONS_PATH = "/apis/kubelambda.io/v1alpha1/functions"
LIST_PAGE = 500
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


def settings_from_spec(spec: Mapping[str, Any]) -> FunctionSettings:
    """Raises ``ValidationError``/``ValueError`` for a spec the API server should have refused."""
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
    )


class ApiDirectory:
    def __init__(self, api: KubeApi, interval_s: float = 10.0) -> None:
        self._api = api
        self._interval_s = interval_s
        self._functions: dict[FunctionKey, FunctionSettings] = {}
        self.synced = asyncio.Event()

    def get(self, namespace: str, function: str) -> FunctionSettings | None:
        return self._functions.get((namespace, function))

    def keys(self) -> Iterable[FunctionKey]:
        return list(self._functions)

    async def refresh(self) -> None:
        items: list[dict[str, Any]] = []
        params = {"limit": str(LIST_PAGE)}
        while True:
            page = await self._api.list(FUNCTIONS_PATH, params)
            items.extend(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params["continue"] = token
        functions: dict[FunctionKey, FunctionSettings] = {}
        for item in items:
            metadata = item.get("metadata") or {}
            key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
            try:
                functions[key] = settings_from_spec(item.get("spec") or {})
            except (ValidationError, ValueError, TypeError) as exc:
                log.warning("function %s/%s: unreadable spec (%s)", *key, exc)
                if key in self._functions:
                    functions[key] = self._functions[key]
        self._functions = functions
        self.synced.set()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (TimeoutError, ApiError, aiohttp.ClientError, ValueError) as exc:
                log.warning("listing functions failed: %s", exc)
            await asyncio.sleep(self._interval_s)
