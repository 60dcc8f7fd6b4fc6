"""AWS Signature Version 4 on Invoke API calls, verified as Lambda verifies it.

boto3, the AWS CLI and every AWS SDK sign each call: an ``Authorization: AWS4-HMAC-SHA256
Credential=<key id>/<yyyymmdd>/<region>/<service>/aws4_request, SignedHeaders=..., Signature=...``
header, an HMAC-SHA256 over the canonical request (method, path, query, the signed headers, the
body's SHA-256) under a key derived from the secret access key, the date, region and service.
``SigV4Verifier`` recomputes that signature exactly as botocore's ``SigV4Auth`` computes it and
lets a call through only if it matches, so a namespace's functions answer only the holders of
its keys, with unchanged clients.

What is checked, in order (each refusal is the Lambda service error AWS gives for it, 403):

- an ``Authorization`` header is present (``MissingAuthenticationTokenException``); signatures
  in the query string (presigned URLs) are not supported;
- it is well formed: the algorithm, ``Credential``, ``SignedHeaders``, ``Signature``, an
  ``X-Amz-Date`` in ISO 8601 basic format, ``host`` and ``x-amz-date`` among the signed headers
  (``IncompleteSignatureException``);
- the credential's scope: its date is ``X-Amz-Date``'s, its service is ``service``, it ends in
  ``aws4_request``; any region is accepted (``InvalidSignatureException``, as AWS words it);
- no ``X-Amz-Security-Token`` (only long-term keys are held) and a known access key id
  (``UnrecognizedClientException``);
- ``X-Amz-Date`` within ``max_skew_s`` of now, a replayed call expires
  (``InvalidSignatureException``);
- the signature itself, compared in constant time (``InvalidSignatureException``). The body is
  always hashed: an ``X-Amz-Content-SHA256`` header only stands for the body when it is the
  body's hash, so ``UNSIGNED-PAYLOAD`` and streaming payloads are refused. A body too large to
  be read (``Request.too_large``) cannot be checked: once key and date are good, it gets the
  Invoke API's 413 ``RequestEntityTooLargeException`` rather than a misleading 403.

The keys come from a callable, asked on every call (it may return an empty mapping): access key
id -> secret access key. The gateway feeds it from a Kubernetes Secret in the namespace (data
key: the access key id; value: the secret access key) and keeps it fresh (``access.py``).

Verification is pure and does no I/O. What calls share is kept in small bounded dicts: the
signing key derived per (secret, date, region), as the HMAC's ready inner and outer SHA-256
states, and the canonical forms of the paths and queries seen; so a call costs two SHA-256
(body and canonical request), one HMAC from those states and some byte string joins. The
Authorization header botocore writes is read without a regex; others take a slower path.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, unquote_to_bytes

from kubelambda.gateway.httpserver import Request, Response
from kubelambda.gateway.invoke import (
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    new_request_id,
    service_error,
)

if TYPE_CHECKING:
    from _hashlib import HASH

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = b"UNSIGNED-PAYLOAD"

MISSING_TOKEN = "Missing Authentication Token"
INVALID_TOKEN = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)

_AUTH_PREFIX = b"AWS4-HMAC-SHA256 Credential="
_AMZ_DATE_RE = re.compile(rb"\d{8}T\d{6}Z")
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_ECHO_LIMIT = 256  # characters of the Authorization header quoted back in an error
_KEY_CACHE_SIZE = 64
_CANONICAL_CACHE_SIZE = 256
# Query parameters of a signature in the URL (a presigned request).
_PRESIGNED = (b"X-Amz-Signature=", b"X-Amz-Algorithm=", b"X-Amz-Credential=")
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _text(value: bytes, limit: int = 64) -> str:
    """A piece of the request, quoted back in an error message."""
    text = value.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "..."


def _amz_time(epoch: float) -> str:
    return time.strftime(_AMZ_DATE_FORMAT, time.gmtime(epoch))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, and runs of slashes collapsed: botocore's
    ``normalize_url_path``, which AWS applies too."""
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and segments else ""
    return first + "/".join(segments) + last


def canonical_uri(raw_path: bytes) -> str:
    """The path as sent (already percent-encoded by the client), normalised and encoded once
    more, as botocore signs it for every service but S3: ``%3A`` becomes ``%253A``. Bytes
    outside ASCII are encoded as they came (the client signed the same bytes)."""
    path = _remove_dot_segments(raw_path.decode("latin-1"))
    return quote(path, safe="/~", encoding="latin-1")


def canonical_query(raw_query: bytes) -> str:
    """Each name and value decoded, then URI-encoded (unreserved characters kept), sorted by
    name and then value: what botocore builds from its own (already so encoded) URL, and what
    the other SDKs build from their parameters."""
    if not raw_query:
        return ""
    pairs = []
    for pair in raw_query.split(b"&"):
        name, _, value = pair.partition(b"=")
        pairs.append(
            (
                quote(unquote_to_bytes(name), safe="-_.~"),
                quote(unquote_to_bytes(value), safe="-_.~"),
            )
        )
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _header_value(value: bytes) -> bytes:
    """Trimmed, runs of whitespace made one space. A value outside ASCII is taken as botocore
    sends it (latin-1 on the wire) and signs it (UTF-8)."""
    if value.isascii():
        return b" ".join(value.split())
    return " ".join(value.decode("latin-1").split()).encode()


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _incomplete(message: str) -> _Refusal:
    return _Refusal(403, "IncompleteSignatureException", message)


def _invalid(message: str) -> _Refusal:
    return _Refusal(403, "InvalidSignatureException", message)


def _unrecognized() -> _Refusal:
    return _Refusal(403, "UnrecognizedClientException", INVALID_TOKEN)


def _parse_authorization(header: bytes) -> tuple[bytes, bytes, bytes]:
    """Credential, SignedHeaders and Signature of an ``Authorization`` header."""
    if header.startswith(_AUTH_PREFIX):  # botocore's exact layout, read without a regex
        parts = header.split(b", ")
        if (
            len(parts) == 3
            and parts[1].startswith(b"SignedHeaders=")
            and parts[2].startswith(b"Signature=")
        ):
            credential = parts[0][len(_AUTH_PREFIX) :]
            signed_headers = parts[1][14:]
            signature = parts[2][10:]
            if credential and signed_headers and signature:
                return credential, signed_headers, signature
    text = header.decode("latin-1")
    echo = _text(header, _ECHO_LIMIT)
    algorithm, _, rest = text.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(
            f"Unsupported Authorization type '{algorithm[:64]}': only {ALGORITHM} "
            "(AWS Signature Version 4) is accepted."
        )
    params: dict[str, str] = {}
    for raw_part in rest.split(","):
        part = raw_part.strip()
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise _incomplete(
                f"'{part[:64]}' not a valid key=value pair (missing equal-sign) in "
                f"Authorization header: '{echo}'."
            )
        params[name.strip()] = value.strip()
    found = {
        name: params.get(name, "").encode("latin-1")
        for name in ("Credential", "Signature", "SignedHeaders")
    }
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name, value in found.items()
        if not value
    ]
    if missing:
        raise _incomplete(" ".join(missing) + f" Authorization={echo}")
    return found["Credential"], found["SignedHeaders"], found["Signature"]


class _Claim(NamedTuple):
    access_key_id: str
    scope: bytes  # b"<yyyymmdd>/<region>/<service>/aws4_request"
    scope_date: bytes
    region: bytes
    amz_date: bytes
    signed_at: float
    signed_headers: bytes  # as signed: b"host;x-amz-date;..."
    signature: bytes


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of the request target; an absolute-form target (through a proxy) is
    taken from the path on."""
    if target[:1] != b"/":
        scheme_end = target.find(b"://")
        path_start = target.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
        target = target[path_start:] if path_start >= 0 else b"/"
    path, _, query = target.partition(b"?")
    return path, query


def _payload_hash(request: Request) -> bytes:
    """The body's SHA-256, always computed: an ``X-Amz-Content-SHA256`` header stands for the
    body only when it is its hash (any other hash makes the signature fail to match)."""
    if request.too_large:
        # The body was dropped unread: its signature cannot be checked, and the call cannot
        # be served. Answer what the Invoke API would (the key and date are good).
        event = request.headers.get(b"x-amz-invocation-type") == b"Event"
        limit = MAX_EVENT_BYTES if event else MAX_REQUEST_BYTES
        raise _Refusal(
            413,
            "RequestEntityTooLargeException",
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
        )
    payload_hash = hashlib.sha256(request.body).hexdigest().encode()
    claimed = request.headers.get(b"x-amz-content-sha256")
    if (
        claimed is not None
        and claimed != payload_hash
        and (claimed == UNSIGNED_PAYLOAD or claimed.startswith(b"STREAMING-"))
    ):
        raise _invalid(
            f"X-Amz-Content-SHA256 '{_text(claimed)}' is not accepted: "
            "the request body must be signed."
        )
    return payload_hash


class SigV4Verifier:
    """An ``Authenticator`` that accepts only calls SigV4-signed with one of ``keys()``."""

    def __init__(
        self,
        keys: Callable[[], Mapping[str, str]],
        service: str = "lambda",
        max_skew_s: float = 300.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._service = service
        self._service_bytes = service.encode()
        self._max_skew_s = max_skew_s
        self._skew_text = f"{max_skew_s / 60:g} min."
        self._now = now
        # (secret, date, region) -> the HMAC's inner and outer states for the signing key.
        self._signing_keys: dict[tuple[str, bytes, bytes], tuple[HASH, HASH]] = {}
        # Function paths and qualifiers repeat from call to call: their canonical forms too.
        self._uris: dict[bytes, bytes] = {}
        self._queries: dict[bytes, bytes] = {}
        self._last_date = (b"", 0.0)  # the last X-Amz-Date parsed (calls share the second)

    def authenticate(self, request: Request, namespace: str) -> Response | None:
        try:
            self._verify(request)
        except _Refusal as refusal:
            return service_error(refusal.status, refusal.code, refusal.message, new_request_id())
        return None

    def _verify(self, request: Request) -> None:
        headers = request.headers
        raw_path, raw_query = _split_target(request.url)
        if raw_query and any(marker in raw_query for marker in _PRESIGNED):
            raise _incomplete(
                "Signatures in the query string (presigned URLs) are not supported: "
                "sign the request with an Authorization header."
            )
        claim = self._claim(headers)
        if b"x-amz-security-token" in headers:
            raise _unrecognized()  # temporary credentials: only long-term keys are held
        secret = self._keys().get(claim.access_key_id)
        if secret is None:
            raise _unrecognized()
        self._check_clock(claim)
        payload_hash = _payload_hash(request)

        repeated = request.repeated
        lines = []
        for name in claim.signed_headers.split(b";"):
            if repeated is not None and name in repeated:
                value = b",".join([_header_value(v) for v in repeated[name]])
            else:
                value = _header_value(headers.get(name, b""))
            lines.append(b"%s:%s\n" % (name, value))
        canonical_request = b"\n".join(
            (
                request.method.upper(),
                self._canonical_uri(raw_path),
                self._canonical_query(raw_query),
                b"".join(lines),
                claim.signed_headers,
                payload_hash,
            )
        )
        string_to_sign = b"AWS4-HMAC-SHA256\n%s\n%s\n%s" % (
            claim.amz_date,
            claim.scope,
            hashlib.sha256(canonical_request).hexdigest().encode(),
        )
        inner, outer = self._signing_key(secret, claim.scope_date, claim.region)
        inner = inner.copy()
        inner.update(string_to_sign)
        outer = outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.hexdigest().encode(), claim.signature):
            raise _invalid(SIGNATURE_MISMATCH)

    def _claim(self, headers: Mapping[bytes, bytes]) -> _Claim:
        """What the Authorization and X-Amz-Date headers claim, checked for form and scope."""
        authorization = headers.get(b"authorization")
        if authorization is None:
            raise _Refusal(403, "MissingAuthenticationTokenException", MISSING_TOKEN)
        credential, signed_headers, signature = _parse_authorization(authorization)
        amz_date = headers.get(b"x-amz-date")
        if amz_date is None:
            raise _incomplete(
                "Authorization header requires existence of a 'X-Amz-Date' header. "
                f"Authorization={_text(authorization, _ECHO_LIMIT)}"
            )
        amz_date = amz_date.strip()
        signed_at = self._parse_date(amz_date)
        signed_names = signed_headers.split(b";")
        if b"host" not in signed_names:
            raise _incomplete("'Host' must be a 'SignedHeader' in the AWS Authorization.")
        if b"x-amz-date" not in signed_names:
            raise _incomplete("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")

        access_key_id, _, scope = credential.partition(b"/")
        parts = scope.split(b"/")
        if len(parts) != 4:
            raise _incomplete(
                "Credential must have exactly 5 slash-delimited elements, e.g. "
                f"keyid/date/region/service/term, got '{_text(credential, 128)}'"
            )
        scope_date, region, service, terminator = parts
        if scope_date != amz_date[:8]:
            raise _invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{_text(scope_date, 16)}' != '{_text(amz_date[:8])}', "
                f"from '{_text(amz_date)}'."
            )
        if not region:
            raise _invalid("Credential should be scoped to a valid region, not ''. ")
        if service != self._service_bytes:
            raise _invalid(f"Credential should be scoped to correct service: '{self._service}'. ")
        if terminator != b"aws4_request":
            raise _invalid(
                f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
                f"not '{_text(terminator, 32)}'."
            )
        return _Claim(
            access_key_id.decode("latin-1"),
            scope,
            scope_date,
            region,
            amz_date,
            signed_at,
            signed_headers,
            signature,
        )

    def _check_clock(self, claim: _Claim) -> None:
        now = self._now()
        skew = self._max_skew_s
        if claim.signed_at < now - skew:
            raise _invalid(
                f"Signature expired: {_text(claim.amz_date)} is now earlier than "
                f"{_amz_time(now - skew)} ({_amz_time(now)} - {self._skew_text})"
            )
        if claim.signed_at > now + skew:
            raise _invalid(
                f"Signature not yet current: {_text(claim.amz_date)} is still later than "
                f"{_amz_time(now + skew)} ({_amz_time(now)} + {self._skew_text})"
            )

    def _parse_date(self, amz_date: bytes) -> float:
        last, epoch = self._last_date
        if amz_date == last:
            return epoch
        invalid = _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{_text(amz_date, 32)}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
        if _AMZ_DATE_RE.fullmatch(amz_date) is None:
            raise invalid
        try:
            moment = datetime(
                int(amz_date[0:4]),
                int(amz_date[4:6]),
                int(amz_date[6:8]),
                int(amz_date[9:11]),
                int(amz_date[11:13]),
                int(amz_date[13:15]),
                tzinfo=UTC,
            )
        except ValueError:
            raise invalid from None
        epoch = moment.timestamp()
        self._last_date = (amz_date, epoch)
        return epoch

    def _signing_key(self, secret: str, date: bytes, region: bytes) -> tuple[HASH, HASH]:
        cache_key = (secret, date, region)
        states = self._signing_keys.get(cache_key)
        if states is None:
            key = hmac.digest(f"AWS4{secret}".encode(), date, "sha256")
            for part in (region, self._service_bytes, b"aws4_request"):
                key = hmac.digest(key, part, "sha256")
            block = key.ljust(64, b"\0")  # a SHA-256 key (32 bytes) fits one block
            states = (
                hashlib.sha256(block.translate(_IPAD)),
                hashlib.sha256(block.translate(_OPAD)),
            )
            if len(self._signing_keys) >= _KEY_CACHE_SIZE:
                self._signing_keys.clear()
            self._signing_keys[cache_key] = states
        return states

    def _canonical_uri(self, raw_path: bytes) -> bytes:
        uri = self._uris.get(raw_path)
        if uri is None:
            uri = canonical_uri(raw_path).encode()
            if len(self._uris) >= _CANONICAL_CACHE_SIZE:
                self._uris.clear()
            self._uris[raw_path] = uri
        return uri

    def _canonical_query(self, raw_query: bytes) -> bytes:
        if not raw_query:
            return b""
        query = self._queries.get(raw_query)
        if query is None:
            query = canonical_query(raw_query).encode()
            if len(self._queries) >= _CANONICAL_CACHE_SIZE:
                self._queries.clear()
            self._queries[raw_query] = query
        return query
