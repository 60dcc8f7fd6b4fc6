"""API keys from Secrets, and the cache of Lambda authorizer decisions.

API keys: the route names a Secret in its namespace; every entry of its ``data`` is one API
key, its value an accepted ``x-api-key`` and its name the key's id (what usage plans count
by). The gateway reads the Secret through the API server on first use and keeps it for
``SECRET_TTL_S`` (so a rotated key takes effect within that time); a read that fails keeps the
previous keys while there are any, and a missing Secret accepts no key. Reads need ``get`` on
``secrets`` (only the Secrets routes name are ever read).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

SECRET_TTL_S = 30.0
SECRET_READ_TIMEOUT_S = 5.0
MAX_AUTHORIZER_ENTRIES = 10_000

# (namespace, name) -> the Secret's data (base64 values), None when there is no such Secret.
ReadSecret = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class _Keys(NamedTuple):
    values: tuple[tuple[str, bytes], ...]  # (key id, key)
    expires: float


class ApiKeys:
    def __init__(self, read_secret: ReadSecret, clock: Callable[[], float]) -> None:
        self._read_secret = read_secret
        self._clock = clock
        self._cache: dict[tuple[str, str], _Keys] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[_Keys]] = {}

    async def key_id(self, namespace: str, secret: str, key: bytes | None) -> str | None:
        """The id of the Secret's entry holding ``key``; None when no entry does."""
        if not key:
            return None
        entry = self._cache.get((namespace, secret))
        if entry is None or entry.expires <= self._clock():
            entry = await self._refresh((namespace, secret))
        # Every key compared in constant time, so timing tells nothing about any of them.
        found = None
        for key_id, value in entry.values:
            if hmac.compare_digest(value, key):
                found = key_id
        return found

    async def _refresh(self, ref: tuple[str, str]) -> _Keys:
        pending = self._reading.get(ref)
        if pending is None:
            pending = asyncio.ensure_future(self._read(ref))
            self._reading[ref] = pending
            pending.add_done_callback(lambda _: self._reading.pop(ref, None))
        return await asyncio.shield(pending)

    async def _read(self, ref: tuple[str, str]) -> _Keys:
        namespace, name = ref
        try:
            async with asyncio.timeout(SECRET_READ_TIMEOUT_S):
                data = await self._read_secret(namespace, name)
        except Exception as exc:
            log.warning("API keys: reading Secret %s/%s failed: %s", namespace, name, exc)
            stale = self._cache.get(ref)
            values = stale.values if stale is not None else ()
        else:
            if data is None:
                log.warning("API keys: no Secret %s/%s: every key is refused", namespace, name)
            values = tuple(_decode(data or {}))
        entry = self._cache[ref] = _Keys(values, self._clock() + SECRET_TTL_S)
        return entry


def _decode(data: dict[str, Any]) -> list[tuple[str, bytes]]:
    keys = []
    for key_id, value in data.items():
        try:
            key = base64.b64decode(str(value), validate=True).strip()
        except binascii.Error:
            continue
        if key:
            keys.append((str(key_id), key))
    return keys


class Decision(NamedTuple):
    authorized: bool
    context: dict[str, Any]


class AuthorizerCache:
    """Lambda authorizer decisions by identity, each for its route's cacheTtlSeconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, Decision]] = {}

    def get(self, key: Hashable) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: Hashable, decision: Decision, ttl_s: float) -> None:
        now = self._clock()
        if len(self._entries) >= MAX_AUTHORIZER_ENTRIES:
            for stale in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[stale]
            if len(self._entries) >= MAX_AUTHORIZER_ENTRIES:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries[key] = (now + ttl_s, decision)
