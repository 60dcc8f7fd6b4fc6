"""The scale-from-zero hook.

When an invocation finds no ready pod for its version, the gateway calls ``Waker.wake`` and
holds the request (bounded) until a pod appears in the version's EndpointSlices. ``wake`` is
called for every such request and must return at once; implementations deduplicate and do
their I/O in the background. The operator-side implementation (ask for replicas) comes later;
until then scaling from zero relies on the operator's own decisions.
"""

from __future__ import annotations

from typing import Protocol


class Waker(Protocol):
    def wake(self, namespace: str, function: str, version: str) -> None: ...


class NoopWaker:
    def wake(self, namespace: str, function: str, version: str) -> None:
        pass
