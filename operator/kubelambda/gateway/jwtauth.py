"""JWT authorizers as API Gateway HTTP APIs run them: RSA-signed bearer tokens, keys from the
issuer's JWKS, then iss, aud (or client_id), exp, nbf and scopes.

Signature verification is RSASSA-PKCS1-v1_5 (RS256/RS384/RS512, RFC 8017 section 8.2.2) on
the standard library: the expected encoding is built and compared whole with the recovered
one (never parsed, which is what signature forgeries exploit). A public-key operation with
e = 65537 costs microseconds, and the gateway needs no crypto library for it.

Key sets are fetched on first use (the issuer's OpenID discovery document names the JWKS when
the route gives no jwksUri) and kept for ``KEYS_TTL_S``; a token whose ``kid`` is unknown
refetches them (key rotation), at most once per ``MIN_REFRESH_S`` so that made-up kids cannot
flood the issuer. Concurrent requests share one fetch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from kubelambda.gateway.apiroutes import JwtPolicy

log = logging.getLogger(__name__)

KEYS_TTL_S = 3600.0
MIN_REFRESH_S = 30.0

# DER DigestInfo prefixes of the hash algorithms (RFC 8017 section 9.2, note 1).
_ALGORITHMS: dict[str, tuple[Callable[[bytes], Any], bytes]] = {
    "RS256": (hashlib.sha256, bytes.fromhex("3031300d060960864801650304020105000420")),
    "RS384": (hashlib.sha384, bytes.fromhex("3041300d060960864801650304020205000430")),
    "RS512": (hashlib.sha512, bytes.fromhex("3051300d060960864801650304020305000440")),
}
MIN_MODULUS_BITS = 2048

FetchJson = Callable[[str], Awaitable[Any]]


class JwtError(Exception):
    """The token is not acceptable (the caller gets 401)."""


class RsaKey(NamedTuple):
    n: int
    e: int


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError("malformed base64url") from exc


def verify_signature(key: RsaKey, algorithm: str, signed: bytes, signature: bytes) -> bool:
    hash_function, digest_info = _ALGORITHMS[algorithm]
    size = (key.n.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    s = int.from_bytes(signature, "big")
    if s >= key.n:
        return False
    recovered = pow(s, key.e, key.n).to_bytes(size, "big")
    t = digest_info + hash_function(signed).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t
    return hmac.compare_digest(recovered, expected)


def parse_jwks(document: Any) -> dict[str | None, RsaKey]:
    """The RSA signing keys of a JWKS document, by kid."""
    keys: dict[str | None, RsaKey] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for jwk in entries if isinstance(entries, list) else ():
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use") == "enc":
            continue
        try:
            n = int.from_bytes(b64url_decode(str(jwk["n"])), "big")
            e = int.from_bytes(b64url_decode(str(jwk["e"])), "big")
        except (KeyError, JwtError):
            continue
        if n.bit_length() >= MIN_MODULUS_BITS and e > 1:
            keys[jwk.get("kid")] = RsaKey(n, e)
    return keys


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, the signed bytes and the signature of a compact JWS."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError as exc:
        raise JwtError("malformed header or claims") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("header and claims must be objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), b64url_decode(parts[2])


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(f"{name} is not a number")
    return float(value)


def token_scopes(claims: dict[str, Any]) -> list[str]:
    scope = claims.get("scope", claims.get("scp"))
    if isinstance(scope, str):
        return scope.split()
    if isinstance(scope, list):
        return [str(s) for s in scope]
    return []


def check_claims(claims: dict[str, Any], policy: JwtPolicy, now: float) -> None:
    if claims.get("iss") != policy.issuer:
        raise JwtError("wrong issuer")
    audience = claims.get("aud")
    if audience is not None:
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(a, str) and a in policy.audience for a in audiences):
            raise JwtError("wrong audience")
    else:
        client_id = claims.get("client_id")
        if not isinstance(client_id, str) or client_id not in policy.audience:
            raise JwtError("wrong audience (no aud, client_id not accepted)")
    expires = _number(claims, "exp")
    if expires is None or expires <= now:
        raise JwtError("expired (or no exp)")
    not_before = _number(claims, "nbf")
    if not_before is not None and not_before > now:
        raise JwtError("not valid yet")
    if policy.scopes and not set(policy.scopes) & set(token_scopes(claims)):
        raise JwtError("missing scope")


def _claim_text(value: Any) -> str:
    """Claims as HTTP APIs pass them: strings (lists as ``[a b]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim_text(v) for v in value) + "]"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def authorizer_context(claims: dict[str, Any]) -> dict[str, Any]:
    """``requestContext.authorizer`` of the 2.0 event."""
    scopes = token_scopes(claims)
    return {
        "jwt": {
            "claims": {name: _claim_text(value) for name, value in claims.items()},
            "scopes": scopes or None,
        }
    }


class _KeySet:
    __slots__ = ("fetched", "keys")

    def __init__(self, keys: dict[str | None, RsaKey], fetched: float) -> None:
        self.keys = keys
        self.fetched = fetched


class JwtVerifier:
    def __init__(self, fetch_json: FetchJson, clock: Callable[[], float]) -> None:
        """``fetch_json(url)`` GETs a JSON document; ``clock`` is epoch seconds."""
        self._fetch_json = fetch_json
        self._clock = clock
        self._key_sets: dict[str, _KeySet] = {}
        self._jwks_uris: dict[str, str] = {}  # issuer -> discovered jwks_uri
        self._fetching: dict[str, asyncio.Future[_KeySet]] = {}

    async def verify(self, authorization: str | None, policy: JwtPolicy) -> dict[str, Any]:
        """The token's claims; raises ``JwtError``."""
        if not authorization:
            raise JwtError("no token")
        token = authorization.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        header, claims, signed, signature = split_token(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in _ALGORITHMS:
            raise JwtError(f"unsupported alg {algorithm!r}")
        key = await self._key(policy, header.get("kid"))
        if not verify_signature(key, algorithm, signed, signature):
            raise JwtError("bad signature")
        check_claims(claims, policy, self._clock())
        return claims

    async def _key(self, policy: JwtPolicy, kid: Any) -> RsaKey:
        uri = policy.jwks_uri or await self._discover(policy.issuer)
        now = self._clock()
        key_set = self._key_sets.get(uri)
        if key_set is None or now - key_set.fetched > KEYS_TTL_S:
            key_set = await self._refresh(uri)
        elif _pick(key_set, kid) is None and now - key_set.fetched > MIN_REFRESH_S:
            key_set = await self._refresh(uri)  # the issuer may have rotated its keys
        key = _pick(key_set, kid)
        if key is None:
            raise JwtError(f"no key {kid!r} at {uri}")
        return key

    async def _discover(self, issuer: str) -> str:
        uri = self._jwks_uris.get(issuer)
        if uri is None:
            try:
                document = await self._fetch_json(
                    issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                uri = str(document["jwks_uri"])
            except Exception as exc:
                log.warning("JWT issuer %s: discovery failed: %s", issuer, exc)
                raise JwtError("issuer discovery failed") from exc
            self._jwks_uris[issuer] = uri
        return uri

    async def _refresh(self, uri: str) -> _KeySet:
        pending = self._fetching.get(uri)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_keys(uri))
            self._fetching[uri] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(uri, None))
        return await asyncio.shield(pending)

    async def _fetch_keys(self, uri: str) -> _KeySet:
        try:
            keys = parse_jwks(await self._fetch_json(uri))
        except Exception as exc:
            log.warning("JWKS %s: fetch failed: %s", uri, exc)
            stale = self._key_sets.get(uri)
            if stale is not None:
                # Keep serving with the keys we had; try again in MIN_REFRESH_S.
                stale.fetched = max(stale.fetched, self._clock() - KEYS_TTL_S + MIN_REFRESH_S)
                return stale
            raise JwtError("no keys") from exc
        key_set = self._key_sets[uri] = _KeySet(keys, self._clock())
        return key_set


def _pick(key_set: _KeySet, kid: Any) -> RsaKey | None:
    if kid is None and len(key_set.keys) == 1:
        return next(iter(key_set.keys.values()))
    return key_set.keys.get(kid) if isinstance(kid, str) else None
