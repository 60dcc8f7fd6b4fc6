"""Who may call: the hook where SigV4 verification will go.

boto3 and the AWS CLI sign every call with SigV4 (service ``lambda``). Verifying signatures
needs access keys the platform does not manage yet, so for now every caller is accepted;
an ``Authenticator`` that checks ``Authorization`` against known keys replaces ``AcceptAll``.
"""

from __future__ import annotations

from typing import Protocol

from kubelambda.gateway.httpserver import Request, Response


class Authenticator(Protocol):
    def authenticate(self, request: Request, namespace: str) -> Response | None:
        """None to let the request through, else the error answer (403 and friends)."""


class AcceptAll:
    def authenticate(self, request: Request, namespace: str) -> Response | None:
        return None
