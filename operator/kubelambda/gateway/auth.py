"""Who may call: the Invoke API asks an ``Authenticator`` before anything else.

``AcceptAll`` lets every call through (tests, and ``KUBELAMBDA_GATEWAY_SIGV4=off``);
``access.AccessKeyAuthenticator`` checks SigV4 signatures against each namespace's keys.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from kubelambda.gateway.httpserver import Request, Response

Verdict = Response | None | Coroutine[Any, Any, Response | None]
"""None lets the call through; a Response refuses it (403 and friends); a coroutine decides
once what it needs was read (the first call of a namespace)."""


class Authenticator(Protocol):
    def authenticate(self, request: Request, namespace: str) -> Verdict: ...


class AcceptAll:
    def authenticate(self, request: Request, namespace: str) -> Verdict:
        return None
