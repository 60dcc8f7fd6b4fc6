"""JWT verification (tokens signed by PyJWT/cryptography), API keys, the authorizer cache,
CORS and token buckets: table tests without a server."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kubelambda.gateway.apiauth import ApiKeys, AuthorizerCache, Decision
from kubelambda.gateway.apiroutes import CorsPolicy, JwtPolicy, compile_route
from kubelambda.gateway.cors import preflight_headers, response_headers
from kubelambda.gateway.jwtauth import (
    MIN_REFRESH_S,
    JwtError,
    JwtVerifier,
    authorizer_context,
)
from kubelambda.gateway.throttle import Throttles, TokenBucket
from tests.unit.gateway.apiobjects import route_obj

ISSUER = "https://idp.example"
JWKS = "https://idp.example/keys"
NOW = 1_700_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return jwk | {"kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {"k1": new_key(), "k2": new_key(), "evil": new_key()}


class Fetcher:
    def __init__(self, documents: dict[str, Any]) -> None:
        self.documents = documents
        self.calls: list[str] = []

    async def __call__(self, url: str) -> Any:
        self.calls.append(url)
        if url not in self.documents:
            raise OSError(f"GET {url}: connection refused")
        return self.documents[url]


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": "api", "sub": "user-1", "exp": NOW + 60, "iat": NOW}
    return {k: v for k, v in (base | overrides).items() if v is not None}


def token(key: rsa.RSAPrivateKey, body: dict[str, Any], kid: str = "k1", alg: str = "RS256") -> str:
    return pyjwt.encode(body, key, algorithm=alg, headers={"kid": kid})


POLICY = JwtPolicy(ISSUER, frozenset({"api", "other"}), JWKS, ())


def verify(
    authorization: str | None, policy: JwtPolicy = POLICY, fetcher: Fetcher | None = None
) -> dict[str, Any]:
    return asyncio.run(JwtVerifier(fetcher or Fetcher({}), Clock()).verify(authorization, policy))


@pytest.fixture
def fetcher(keys) -> Fetcher:
    return Fetcher({JWKS: {"keys": [public_jwk(keys["k1"], "k1")]}})


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
def test_valid_token(keys, fetcher, alg):
    body = claims(scope="read write", groups=["a", "b"], admin=False)
    result = verify("Bearer " + token(keys["k1"], body, alg=alg), fetcher=fetcher)
    assert result == body
    context = authorizer_context(result)
    assert context["jwt"]["scopes"] == ["read", "write"]
    assert context["jwt"]["claims"]["groups"] == "[a b]"
    assert context["jwt"]["claims"]["admin"] == "false"
    assert context["jwt"]["claims"]["exp"] == str(int(NOW + 60))


@pytest.mark.parametrize(
    ("body", "policy"),
    [
        (claims(iss="https://other"), POLICY),
        (claims(aud="someone-else"), POLICY),
        (claims(aud=None), POLICY),  # neither aud nor client_id
        (claims(aud=None, client_id="nope"), POLICY),
        (claims(exp=NOW - 1), POLICY),
        (claims(exp=None), POLICY),
        (claims(exp="tomorrow"), POLICY),
        (claims(nbf=NOW + 30), POLICY),
        (claims(scope="write"), JwtPolicy(ISSUER, frozenset({"api"}), JWKS, ("read",))),
        (claims(), JwtPolicy(ISSUER, frozenset({"api"}), JWKS, ("read",))),
    ],
)
def test_refused_claims(keys, fetcher, body, policy):
    with pytest.raises(JwtError):
        verify(token(keys["k1"], body), policy, fetcher)


@pytest.mark.parametrize(
    ("body", "policy"),
    [
        (claims(aud=["x", "other"]), POLICY),
        (claims(aud=None, client_id="api"), POLICY),
        (claims(nbf=NOW - 1), POLICY),
        (claims(scp=["admin", "read"]), JwtPolicy(ISSUER, frozenset({"api"}), JWKS, ("read",))),
    ],
)
def test_accepted_claims(keys, fetcher, body, policy):
    assert verify(token(keys["k1"], body), policy, fetcher) == body


NONE_HEADER = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').decode().rstrip("=")


def test_forged_and_malformed_tokens(keys, fetcher):
    good = token(keys["k1"], claims())
    header, payload, signature = good.split(".")
    forged_claims = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode())
    for bad in [
        None,
        "",
        "Bearer",
        "not-a-jwt",
        token(keys["evil"], claims()),  # claims kid k1, signed by another key
        f"{header}.{forged_claims.decode().rstrip('=')}.{signature}",
        f"{header}.{payload}.{signature[:-4]}AAAA",
        pyjwt.encode(claims(), "s" * 32, algorithm="HS256", headers={"kid": "k1"}),
        NONE_HEADER + "." + payload + ".",
    ]:
        with pytest.raises(JwtError):
            verify(bad, fetcher=fetcher)
    assert verify(good, fetcher=fetcher)["sub"] == "user-1"  # without "Bearer " too


def test_key_rotation_refetches_at_most_every_min_refresh(keys):
    fetcher = Fetcher({JWKS: {"keys": [public_jwk(keys["k1"], "k1")]}})
    clock = Clock()
    verifier = JwtVerifier(fetcher, clock)

    async def scenario() -> None:
        await verifier.verify(token(keys["k1"], claims()), POLICY)
        assert fetcher.calls == [JWKS]
        fetcher.documents[JWKS] = {
            "keys": [public_jwk(keys["k1"], "k1"), public_jwk(keys["k2"], "k2")]
        }
        rotated = token(keys["k2"], claims(), kid="k2")
        with pytest.raises(JwtError):  # too soon after the last fetch
            await verifier.verify(rotated, POLICY)
        assert fetcher.calls == [JWKS]
        clock.now += MIN_REFRESH_S + 1
        body = claims(exp=clock.now + 60)
        assert await verifier.verify(token(keys["k2"], body, kid="k2"), POLICY) == body
        assert fetcher.calls == [JWKS, JWKS]
        # Concurrent requests with an unknown kid share one fetch.
        clock.now += MIN_REFRESH_S + 1
        unknown = token(keys["evil"], claims(exp=clock.now + 60), kid="k3")
        results = await asyncio.gather(
            *(verifier.verify(unknown, POLICY) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, JwtError) for r in results)
        assert fetcher.calls == [JWKS, JWKS, JWKS]

    asyncio.run(scenario())


def test_discovery_and_unreachable_issuer(keys):
    discovered = "https://idp.example/discovered-keys"
    fetcher = Fetcher(
        {
            f"{ISSUER}/.well-known/openid-configuration": {"jwks_uri": discovered},
            discovered: {"keys": [public_jwk(keys["k1"], "k1")]},
        }
    )
    policy = JwtPolicy(ISSUER, frozenset({"api"}), None, ())
    assert verify(token(keys["k1"], claims()), policy, fetcher)["sub"] == "user-1"
    with pytest.raises(JwtError):
        verify(token(keys["k1"], claims()), policy, Fetcher({}))


# --- API keys and the authorizer cache -----------------------------------------------------


def test_api_keys_cached_with_ttl():
    reads: list[tuple[str, str]] = []
    secrets: dict[tuple[str, str], dict[str, Any] | None] = {
        ("team", "keys"): {"a": base64.b64encode(b"key-a\n").decode(), "b": "a2V5LWI="}
    }

    async def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
        reads.append((namespace, name))
        return secrets.get((namespace, name))

    clock = Clock()
    keys = ApiKeys(read_secret, clock)

    async def scenario() -> None:
        assert await keys.key_id("team", "keys", b"key-a") == "a"
        assert await keys.key_id("team", "keys", b"key-b") == "b"
        assert await keys.key_id("team", "keys", b"key-c") is None
        assert await keys.key_id("team", "keys", None) is None
        assert reads == [("team", "keys")]
        secrets[("team", "keys")] = {"a": "a2V5LWM="}  # rotated
        assert await keys.key_id("team", "keys", b"key-a") == "a"  # still cached
        clock.now += 31
        assert await keys.key_id("team", "keys", b"key-c") == "a"
        assert await keys.key_id("team", "keys", b"key-a") is None
        assert await keys.key_id("team", "missing", b"key-a") is None

    asyncio.run(scenario())


def test_api_keys_survive_a_failed_read():
    fail = False

    async def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
        if fail:
            raise OSError("API server unreachable")
        return {"k": "a2V5"}

    clock = Clock()
    keys = ApiKeys(read_secret, clock)
    assert asyncio.run(keys.key_id("ns", "s", b"key")) == "k"
    fail = True
    clock.now += 60
    assert asyncio.run(keys.key_id("ns", "s", b"key")) == "k"


def test_authorizer_cache():
    clock = Clock()
    cache = AuthorizerCache(clock)
    allow = Decision(True, {"user": "u"})
    cache.put(("ns", "tok"), allow, 10)
    assert cache.get(("ns", "tok")) == allow
    assert cache.get(("ns", "other")) is None
    clock.now += 10
    assert cache.get(("ns", "tok")) is None


# --- CORS and throttling --------------------------------------------------------------------


def cors(**config: Any) -> CorsPolicy:
    policy = compile_route(route_obj("GET /a", cors=config)).cors
    assert policy is not None
    return policy


SITE = "https://site.example"


@pytest.mark.parametrize(
    ("config", "origin", "method", "headers", "expected"),
    [
        (
            {"allowOrigins": [SITE], "allowMethods": ["GET", "POST"], "allowHeaders": ["X-Token"]},
            SITE,
            "POST",
            "x-token",
            {
                "access-control-allow-origin": SITE,
                "vary": "origin",
                "access-control-allow-methods": "GET,POST",
                "access-control-allow-headers": "x-token",
            },
        ),
        (
            {
                "allowOrigins": ["*"],
                "allowMethods": ["*"],
                "allowHeaders": ["*"],
                "maxAgeSeconds": 5,
            },
            SITE,
            "DELETE",
            "X-A, X-B",
            {
                "access-control-allow-origin": "*",
                "access-control-allow-methods": "DELETE",
                "access-control-allow-headers": "X-A,X-B",
                "access-control-max-age": "5",
            },
        ),
        (
            {"allowOrigins": [SITE], "allowMethods": ["GET"], "allowCredentials": True},
            SITE,
            "GET",
            None,
            {
                "access-control-allow-origin": SITE,
                "vary": "origin",
                "access-control-allow-credentials": "true",
                "access-control-allow-methods": "GET",
            },
        ),
        ({"allowOrigins": [SITE], "allowMethods": ["GET"]}, "https://evil", "GET", None, {}),
        ({"allowOrigins": [SITE], "allowMethods": ["GET"]}, SITE, "PUT", None, {}),
        ({"allowOrigins": [SITE], "allowMethods": ["GET"]}, SITE, "GET", "x-other", {}),
    ],
)
def test_preflight(config, origin, method, headers, expected):
    answer = preflight_headers(cors(**config), origin, method, headers)
    assert {k.decode(): v.decode() for k, v in answer} == expected


def test_cors_response_headers():
    policy = cors(allowOrigins=[SITE], exposeHeaders=["X-Id"])
    assert response_headers(policy, None) == []
    assert response_headers(policy, "https://evil") == []
    assert dict(response_headers(policy, SITE)) == {
        b"access-control-allow-origin": SITE.encode(),
        b"vary": b"origin",
        b"access-control-expose-headers": b"X-Id",
    }


def test_token_bucket():
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second
    assert not bucket.take(0.5)
    assert [bucket.take(10) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not TokenBucket(rate=0, burst=0, now=0).take(100)


def test_throttles_reset_when_limits_change():
    clock = Clock(0)
    throttles = Throttles(clock)
    assert throttles.allow("route", 1, 1)
    assert not throttles.allow("route", 1, 1)
    assert throttles.allow("other", 1, 1)
    assert throttles.allow("route", 1, 2)  # new limits: a new, full bucket
