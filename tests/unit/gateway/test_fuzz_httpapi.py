"""Fuzzing the HTTP APIs (ApiRoutes) over raw sockets, against a real gateway, real agents
and a real HTTP backend.

Two APIs in two namespaces, with function and HTTP integrations, payload formats 2.0 and 1.0,
API key, JWT and Lambda authorizers, CORS and throttling. Whatever the request (malformed
paths, hosts, headers, tokens, bodies, framing), every answer is the integration's own
(from the API the request addressed) or API Gateway's ``{"message": ...}`` error with a
documented status; nothing answers with a bare 500 (every target here exists), the gateway
logs no crash, and it serves valid requests afterwards.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import event, given, note
from hypothesis import strategies as st

from kubelambda.gateway.apiroutes import API_ROUTE, JwtPolicy
from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.jwtauth import JwtError, check_claims
from kubelambda.gateway.main import Gateway
from kubelambda.gateway.routing import FUNCTION
from tests.unit.gateway.apiobjects import route_obj
from tests.unit.gateway.conftest import Agent, RunningGateway
from tests.unit.gateway.objects import add, add_slice, function_obj
from tests.unit.httpfuzz import (
    EDITS,
    FUZZ_SETTINGS,
    MALFORMATIONS,
    CrashLog,
    Fuzzed,
    RawResponse,
    build_request,
    edited,
    exchange,
    methods,
    request,
)

SECRETS = {"alpha": "alpha-secret-1d8e44", "beta": "beta-secret-f02c19", "backend": "backend-4ab7"}

APP = """
import json, os

def handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"secret": os.environ["SECRET"]})}

def authorizer(event, context):
    return {"isAuthorized": event["identitySource"][0].startswith("allow")}
"""

# What API Gateway answers itself (gateway/__init__.py). 500 is documented for a missing
# target or a failed authorizer, neither of which exists here: a 500 is a crash.
API_ERRORS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    502: "Internal Server Error",
    503: "Service Unavailable",
    504: "Endpoint request timed out",
}
FRAMING_ERRORS = {
    400: {"message": "Bad Request"},
    413: {"message": "Request Entity Too Large"},
    431: {"message": "Request Header Fields Too Large"},
}
API_KEY = b"sesame"


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread, answering ``respond(handler)``."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], tuple[int, bytes]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = respond(self)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# The issuer's key: module-level, since the strategies sign tokens with it.
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, _Server]]:
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    jwks = json.dumps({"keys": [jwk | {"kid": "k1"}]}).encode()
    backend = json.dumps({"secret": SECRETS["backend"]}).encode()
    started = {"idp": _Server(lambda _: (200, jwks)), "backend": _Server(lambda _: (200, backend))}
    yield started
    for server in started.values():
        server.stop()


async def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
    if (namespace, name) == ("default", "keys"):
        return {"key": base64.b64encode(API_KEY).decode()}
    return None


@pytest.fixture(scope="module")
def crash_log() -> Iterator[CrashLog]:
    with CrashLog.on("kubelambda.gateway") as log:
        yield log


@pytest.fixture(scope="module")
def gateway(
    agents: Callable[..., Agent], servers: dict[str, _Server], crash_log: CrashLog
) -> Iterator[RunningGateway]:
    config = GatewayConfig(port=0, metrics_port=0, api_domain="apis.test", cold_start_s=1)
    gw = RunningGateway(Gateway(config, read_secret=read_secret))
    pods = {
        ("default", "alpha"): agents(code=APP, SECRET=SECRETS["alpha"]),
        ("team-b", "beta"): agents(code=APP, SECRET=SECRETS["beta"]),
        ("default", "authz"): agents(code=APP, SECRET="-", _HANDLER="app.authorizer"),
    }
    shop = {"api": "shop", "function": "alpha"}
    routes = [
        route_obj("GET /items/{id}", **shop),
        route_obj("ANY /legacy/{proxy+}", payloadFormatVersion="1.0", **shop),
        route_obj(
            "POST /keyed", auth={"type": "API_KEY", "apiKey": {"secretName": "keys"}}, **shop
        ),
        route_obj(
            "GET /jwt",
            auth={
                "type": "JWT",
                "jwt": {
                    "issuer": "https://issuer.test",
                    "audience": ["api"],
                    "jwksUri": servers["idp"].url + "/jwks",
                    "scopes": ["read"],
                },
            },
            **shop,
        ),
        route_obj(
            "GET /guarded",
            auth={
                "type": "FUNCTION",
                "function": {"name": "authz", "identitySources": ["$request.header.X-Token"]},
            },
            **shop,
        ),
        route_obj(
            "ANY /cors",
            cors={
                "allowOrigins": ["https://site.test"],
                "allowMethods": ["*"],
                "allowHeaders": ["*"],
            },
            **shop,
        ),
        route_obj("GET /limited", throttling={"rateLimit": 1, "burstLimit": 1}, **shop),
        route_obj("ANY /proxy/{proxy+}", api="shop", url=servers["backend"].url + "/base"),
        route_obj("$default", namespace="team-b", api="other", function="beta"),
    ]

    def feed() -> None:
        for (namespace, name), agent in pods.items():
            add(gw.table, FUNCTION, function_obj(name, namespace=namespace, timeout=5))
            add_slice(
                gw.table, name, "$LATEST", ["127.0.0.1"], port=agent.port, namespace=namespace
            )
        for route in routes:
            gw.table.apply(API_ROUTE, {"type": "ADDED", "object": route})

    gw.call(feed)
    yield gw
    gw.stop()


# --- strategies -----------------------------------------------------------------------------

# Which API a request addresses: by path prefix or by host, and what may answer it.
ADDRESSINGS = {
    "shop": (b"/apis/default/shop", None, {"alpha", "backend"}),
    "shop-by-host": (b"", b"shop.default.apis.test:8080", {"alpha", "backend"}),
    "other": (b"/apis/team-b/other", None, {"beta"}),
    "other-by-host": (b"", b"OTHER.team-b.apis.test", {"beta"}),
    "unknown": (b"/apis/team-b/shop", None, set()),
    "default": (b"", None, set()),  # the default API: none here
}
ROUTE_PATHS = (
    (b"GET", b"/items/42"),
    (b"GET", b"/items/"),
    (b"GET", b"/items/4%2F2"),
    (b"GET", b"/items/42/more"),
    (b"POST", b"/legacy/a/b"),
    (b"DELETE", b"/legacy/"),
    (b"POST", b"/keyed"),
    (b"GET", b"/jwt"),
    (b"GET", b"/guarded"),
    (b"OPTIONS", b"/cors"),
    (b"PUT", b"/cors"),
    (b"GET", b"/limited"),
    (b"PATCH", b"/proxy/a/b%20c"),
    (b"GET", b"/proxy/"),
    (b"GET", b"/"),
    (b"HEAD", b"/items/1"),
    (b"GET", b""),
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=6,
)
# Claims around valid ones: every value of iss, aud, client_id, exp, nbf, scope replaced by
# any JSON value now and then.
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        name: st.one_of(st.just(good), JSON)
        for name, good in (
            ("iss", "https://issuer.test"),
            ("aud", "api"),
            ("client_id", "api"),
            ("exp", 4102444800),
            ("nbf", 0),
            ("scope", "read"),
            ("scp", ["read"]),
        )
    },
)
JOSE_HEADERS = st.fixed_dictionaries(
    {},
    optional={"alg": st.one_of(st.just("RS256"), JSON), "kid": st.one_of(st.just("k1"), JSON)},
)


@st.composite
def tokens(draw: st.DrawFn) -> bytes:
    """An Authorization value: a correctly signed token with odd claims, or a forged one."""
    kind = draw(st.sampled_from(("signed", "forged", "junk")))
    if kind == "junk":
        return draw(st.sampled_from((b"", b"Bearer", b"Bearer a.b", b"bearer \xff.x.y", b"..")))
    header = {"alg": "RS256", "kid": "k1"} if kind == "signed" else draw(JOSE_HEADERS)
    signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(draw(CLAIMS)).encode())}"
    if kind == "signed":
        signature = SIGNING_KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = b"sig"
    return f"Bearer {signed}.{b64url(signature)}".encode()


HEADER_LINES = (
    b"X-Api-Key: " + API_KEY,
    b"X-Api-Key: wrong",
    b"X-Api-Key: \xff",
    b"X-Api-Key:",
    b"X-Token: allow-1",
    b"X-Token: deny",
    b"X-Token: allow-\xe9",
    b"X-Token:",
    b"Origin: https://site.test",
    b"Origin: null",
    b"Origin: \xff",
    b"Access-Control-Request-Method: PUT",
    b"Access-Control-Request-Method: \xb5",
    b"Access-Control-Request-Headers: x-a, \xff, ,",
    b"Cookie: a=1; b",
    b"Cookie: ;;=",
    b"Content-Type: application/json",
    b"Content-Type: image/png",
    b"Content-Type: text/plain; charset=\xff",
    b"X-Forwarded-For: 10.0.0.1",
    b"Accept-Encoding: gzip",
)
BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.sampled_from((b'{"a": 1}', b"\xff\xfe", b'{"a": "\\ud800"}', b"x" * 70_000)),
    st.just(b"x" * (10 * 1024 * 1024 + 1)),  # over the HTTP API payload limit
)


TOKENS = tokens()
ADDRESSING_NAMES = st.one_of(st.just("shop"), st.sampled_from(sorted(ADDRESSINGS)))
# Half the requests go to a route with an authorizer, to meet it with odd credentials.
AUTHORIZED_PATHS = ((b"GET", b"/jwt"), (b"GET", b"/guarded"), (b"POST", b"/keyed"))
METHODS = {method: methods(method) for method, _ in ROUTE_PATHS}


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[Fuzzed, set[str]]:
    """A fuzzed HTTP API request and the integrations that may answer it."""
    prefix, host, allowed = ADDRESSINGS[draw(ADDRESSING_NAMES)]
    method, path = draw(st.one_of(st.sampled_from(AUTHORIZED_PATHS), st.sampled_from(ROUTE_PATHS)))
    target = edited(prefix + path, draw(EDITS)) + draw(st.sampled_from((b"", b"?a=1&a=2&b", b"?%")))
    headers = list(draw(st.lists(st.sampled_from(HEADER_LINES), max_size=3)))
    if host is not None:
        headers.append(b"Host: " + host)
    if draw(st.booleans()):
        headers.append(b"Authorization: " + draw(TOKENS))
    fuzzed = build_request(
        draw(MALFORMATIONS), draw(METHODS[method]), target, headers, draw(BODIES)
    )
    return fuzzed, allowed


def secrets_in(response: RawResponse) -> set[str]:
    return {name for name, secret in SECRETS.items() if secret.encode() in response.body}


def check_answer(response: RawResponse, allowed: set[str], method: bytes) -> None:
    leaked = secrets_in(response) - allowed
    assert not leaked, f"an answer from another API: {leaked}"
    if response.status in FRAMING_ERRORS and response.header("apigw-requestid") is None:
        assert response.header("connection") == "close"
        assert method == b"HEAD" or response.json() == FRAMING_ERRORS[response.status]
        return
    assert response.header("apigw-requestid"), response
    if method == b"HEAD" or response.status == 204:
        assert response.body == b""
    if response.status in (200, 204):  # the integration's answer, or a CORS preflight
        assert response.status == 204 or method == b"HEAD" or secrets_in(response), response
        return
    assert response.status in API_ERRORS, response
    assert response.header("content-type") == "application/json"
    if method != b"HEAD":
        assert response.json() == {"message": API_ERRORS[response.status]}


def check_still_serving(gateway: RunningGateway) -> None:
    for path, name in ((b"/apis/default/shop/items/1", "alpha"), (b"/apis/team-b/other/x", "beta")):
        (response,) = exchange(gateway.gateway.port, request(b"GET", path), [b"GET"])
        assert response.status == 200, response
        assert secrets_in(response) == {name}


@FUZZ_SETTINGS
@given(case=api_requests())
def test_http_apis_answer_only_documented_shapes(
    gateway: RunningGateway, crash_log: CrashLog, case: tuple[Fuzzed, set[str]]
) -> None:
    fuzzed, allowed = case
    crash_log.take()  # what an earlier (failing) example left
    responses = exchange(gateway.gateway.port, fuzzed.data, fuzzed.methods)
    note(f"answers: {responses!r}")
    for response in responses:
        event(str(response.status))
    if fuzzed.framed:
        assert len(responses) == 1
    for response, method in zip(responses, fuzzed.methods + [b"GET"] * 2, strict=False):
        check_answer(response, allowed, method)
    assert crash_log.take() == []
    check_still_serving(gateway)


@pytest.mark.parametrize("alg", [[], {}, ["RS256"]])
def test_jwt_with_an_unhashable_alg_is_unauthorized(gateway: RunningGateway, alg: Any) -> None:
    """Regression: a token whose ``alg`` was a list or object crashed the authorizer (500)."""
    header = b64url(json.dumps({"alg": alg, "kid": "k1"}).encode())
    token = f"{header}.{b64url(b'{}')}.{b64url(b'sig')}".encode()
    data = request(b"GET", b"/apis/default/shop/jwt", ((b"Authorization", b"Bearer " + token),))
    (response,) = exchange(gateway.gateway.port, data, [b"GET"])
    assert (response.status, response.json()) == (401, {"message": "Unauthorized"})


def test_jwt_client_id_of_any_json_type_is_checked() -> None:
    """Regression: a signed token whose ``client_id`` was a list or object raised TypeError."""
    policy = JwtPolicy("https://issuer.test", frozenset({"api"}), None, ())
    claims = {"iss": "https://issuer.test", "exp": time.time() + 60}
    for client_id in (["api"], {"a": 1}, 1):
        with pytest.raises(JwtError):
            check_claims(claims | {"client_id": client_id}, policy, time.time())
    check_claims(claims | {"client_id": "api"}, policy, time.time())
