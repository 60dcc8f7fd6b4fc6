"""Who may call the Invoke API: SigV4 signatures checked against each namespace's access keys.

boto3 and the AWS CLI sign every call with SigV4. A namespace that holds a Secret named
``ACCESS_KEYS_SECRET`` accepts only calls signed with one of its keys (data key: the access
key id; value: the secret access key), as an AWS account accepts only its own IAM keys. With
``mode`` ``required`` a namespace without that Secret accepts no call at all; with
``namespaces`` (the default) it accepts unsigned and signed calls alike, as before keys were
held anywhere; ``off`` skips all of this.

The platform's own callers (the invoker delivering async events and function destinations)
present the internal token instead of a signature.

Keys are read through the API server on a namespace's first call and kept for ``KEYS_TTL_S``
(a rotated key takes effect within that time); the read happens off the hot path afterwards.
A read that fails keeps the previous keys while there are any; with none, the call is refused
(503): a namespace's keys are never skipped because the API server was slow.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

from kubelambda.gateway.apiauth import ReadSecret
from kubelambda.gateway.auth import Verdict
from kubelambda.gateway.httpserver import Request, Response
from kubelambda.gateway.invoke import new_request_id, service_error
from kubelambda.gateway.sigv4 import SigV4Verifier

log = logging.getLogger(__name__)

ACCESS_KEYS_SECRET = "kubelambda-access-keys"
INTERNAL_TOKEN_HEADER = b"x-kubelambda-internal-token"
KEYS_TTL_S = 10.0
KEYS_READ_TIMEOUT_S = 5.0


class _Keys(NamedTuple):
    keys: Mapping[str, str] | None
    """Access key id -> secret access key; None: the namespace holds no keys."""
    expires: float
    unreadable: bool = False


def _decode(data: Mapping[str, Any]) -> dict[str, str]:
    keys = {}
    for access_key_id, value in data.items():
        try:
            secret = base64.b64decode(str(value), validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            continue
        if secret:
            keys[str(access_key_id)] = secret
    return keys


class AccessKeyAuthenticator:
    def __init__(
        self,
        read_secret: ReadSecret,
        clock: Callable[[], float],
        internal_token: str = "",
        mode: str = "namespaces",
        has_functions: Callable[[str], bool] = lambda namespace: True,
    ) -> None:
        self._read_secret = read_secret
        self._has_functions = has_functions
        self._clock = clock
        self._internal_token = internal_token.encode()
        self._required = mode == "required"
        self._cache: dict[str, _Keys] = {}
        self._reading: dict[str, asyncio.Future[_Keys]] = {}
        self._verifiers: dict[str, SigV4Verifier] = {}

    def authenticate(self, request: Request, namespace: str) -> Verdict:
        token = request.headers.get(INTERNAL_TOKEN_HEADER)
        if (
            token is not None
            and self._internal_token
            and hmac.compare_digest(token, self._internal_token)
        ):
            return None
        entry = self._cache.get(namespace)
        if entry is None:
            if not self._has_functions(namespace):
                # Nothing to call there: no Secret read, no cache entry for a made-up name.
                return self._verdict(_Keys(None, 0.0), request, namespace)
            return self._after_reading(request, namespace)
        if entry.expires <= self._clock():
            self._refresh(namespace)  # in the background: this call uses the keys at hand
        return self._verdict(entry, request, namespace)

    async def _after_reading(self, request: Request, namespace: str) -> Response | None:
        entry = await asyncio.shield(self._refresh(namespace))
        return self._verdict(entry, request, namespace)

    def _verdict(self, entry: _Keys, request: Request, namespace: str) -> Response | None:
        if entry.keys is not None:
            return self._verifier(namespace).authenticate(request, namespace)
        if entry.unreadable:
            return service_error(
                503, "ServiceException", "The access keys could not be read.", new_request_id()
            )
        if self._required:
            return service_error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                new_request_id(),
            )
        return None

    def _verifier(self, namespace: str) -> SigV4Verifier:
        """One per namespace, for good: it caches signing keys, and reads the namespace's
        current keys on each call."""
        verifier = self._verifiers.get(namespace)
        if verifier is None:
            verifier = self._verifiers[namespace] = SigV4Verifier(partial(self._keys_of, namespace))
        return verifier

    def _keys_of(self, namespace: str) -> Mapping[str, str]:
        entry = self._cache.get(namespace)
        return entry.keys if entry is not None and entry.keys is not None else {}

    def _refresh(self, namespace: str) -> asyncio.Future[_Keys]:
        pending = self._reading.get(namespace)
        if pending is None:
            pending = asyncio.ensure_future(self._read(namespace))
            self._reading[namespace] = pending
            pending.add_done_callback(lambda _: self._reading.pop(namespace, None))
        return pending

    async def _read(self, namespace: str) -> _Keys:
        try:
            async with asyncio.timeout(KEYS_READ_TIMEOUT_S):
                data = await self._read_secret(namespace, ACCESS_KEYS_SECRET)
        except Exception as exc:
            log.warning("access keys of %s could not be read: %s", namespace, exc)
            stale = self._cache.get(namespace)
            keys = stale.keys if stale is not None else None
            entry = _Keys(keys, self._clock() + KEYS_TTL_S, unreadable=keys is None)
        else:
            entry = _Keys(None if data is None else _decode(data), self._clock() + KEYS_TTL_S)
        self._cache[namespace] = entry
        return entry
