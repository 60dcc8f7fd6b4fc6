"""HTTP APIs end to end: HTTP client -> gateway -> real agents (and local HTTP servers)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import jwt as pyjwt
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kubelambda.gateway.routing import FUNCTION
from kubelambda.gateway.usage_nats import NatsQuotaCounter
from tests.powertools_app import POWERTOOLS, WEB_APP
from tests.unit.gateway.apiobjects import add_route
from tests.unit.gateway.conftest import RunningGateway
from tests.unit.gateway.objects import add, add_slice, function_obj

API_APP = """
import json, time

CALLS = []

def handler(event, context):
    query = event.get("queryStringParameters") or {}
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    if "fail" in query:
        raise ValueError("asked to fail")
    if "respond" in query:
        return json.loads(query["respond"])
    result = {"event": event}
    if event.get("version") == "1.0":
        return {"statusCode": 200, "headers": {"content-type": "application/json"},
                "body": json.dumps(result)}
    return result

def authorizer(event, context):
    CALLS.append(event["identitySource"])
    token = event["identitySource"][0]
    return {"isAuthorized": token.startswith("allow"),
            "context": {"token": token, "calls": len(CALLS)}}
"""


Reply = tuple[int, list[tuple[str, str]], bytes]


def call(
    gw: RunningGateway,
    method: str,
    path: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", gw.gateway.port, timeout=30)
    try:
        names = {name.lower() for name, _ in headers or ()}
        conn.putrequest(method, path, skip_host="host" in names)
        for name, value in headers or ():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def header(reply: Reply, name: str) -> str | None:
    values = [v for n, v in reply[1] if n.lower() == name]
    return values[-1] if values else None


def message(reply: Reply) -> tuple[int, Any]:
    assert header(reply, "apigw-requestid")
    return reply[0], json.loads(reply[2])


def serve_function(gw: RunningGateway, name: str, port: int, **function: Any) -> None:
    def feed() -> None:
        add(gw.table, FUNCTION, function_obj(name, **function))
        add_slice(gw.table, name, "$LATEST", ["127.0.0.1"], port=port, name=f"{name}-{port}")

    gw.call(feed)


def route(gw: RunningGateway, route_key: str, **kwargs: Any) -> None:
    gw.call(lambda: add_route(gw.table, route_key, **kwargs))


SECRETS = {("default", "keys"): {"k": base64.b64encode(b"sesame").decode()}}


async def read_secret(namespace: str, name: str) -> dict[str, Any] | None:
    return SECRETS.get((namespace, name))


@pytest.fixture
def gw(start_gateway, agents) -> RunningGateway:
    gateway = start_gateway(read_secret=read_secret, api_domain="apis.test")
    serve_function(gateway, "fn", agents(code=API_APP).port, timeout=5)
    serve_function(gateway, "web", agents(code=WEB_APP, vendor=POWERTOOLS).port)
    serve_function(gateway, "authz", agents(code=API_APP, _HANDLER="app.authorizer").port)
    return gateway


# --- an unmodified powertools application ---------------------------------------------------


def test_powertools_app(gw):
    route(gw, "ANY /{proxy+}", api="shop", function="web")
    status, _, body = reply = call(
        gw,
        "GET",
        "/apis/default/shop/pets/7?q=hello%20world&tag=a",
        [("Cookie", "session=abc"), ("Cookie", "theme=dark"), ("User-Agent", "tester")],
    )
    assert status == 200, body
    assert header(reply, "content-type") == "application/json"
    assert json.loads(body) == {
        "id": "7",
        "q": "hello world",
        "tags": "a",
        "session": "abc",
        "theme": "dark",
        "agent": "tester",
    }

    reply = call(
        gw,
        "POST",
        "/apis/default/shop/pets",
        [("Content-Type", "application/json")],
        json.dumps({"name": "rex", "age": 3}).encode(),
    )
    assert reply[0] == 201
    assert json.loads(reply[2]) == {"created": {"name": "rex", "age": 3}}
    assert header(reply, "location") == "/pets/rex"
    assert header(reply, "set-cookie") == "last=rex; Secure"

    image = bytes(range(256)) * 4
    reply = call(gw, "POST", "/apis/default/shop/thumbnail", [("Content-Type", "image/png")], image)
    assert (reply[0], header(reply, "content-type"), reply[2]) == (200, "image/png", image[::-1])

    # The application's own 404 passes through as the function answered it.
    reply = call(gw, "GET", "/apis/default/shop/unknown")
    assert reply[0] == 404
    assert json.loads(reply[2])["message"] == "Not found"


# --- events and responses -------------------------------------------------------------------


def test_v2_event(gw):
    route(gw, "GET /items/{id}")
    reply = call(
        gw,
        "GET",
        "/items/42?a=1&a=2&b=",
        [("Host", "api.example:8080"), ("X-Multi", "1"), ("X-Multi", "2"), ("Cookie", "c=1")],
    )
    status, event = reply[0], json.loads(reply[2])["event"]
    assert status == 200
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /items/{id}"
    assert (event["rawPath"], event["rawQueryString"]) == ("/items/42", "a=1&a=2&b=")
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["cookies"] == ["c=1"]
    assert event["headers"]["x-multi"] == "1,2"
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-forwarded-for"] == "127.0.0.1"
    context = event["requestContext"]
    assert context["requestId"] == header(reply, "apigw-requestid")
    assert (context["domainName"], context["domainPrefix"]) == ("api.example", "api")
    assert context["http"] == {
        "method": "GET",
        "path": "/items/42",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "",
    }
    assert context["stage"] == "$default"
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 30
    assert event["isBase64Encoded"] is False
    assert "body" not in event


def test_v1_event(gw):
    route(gw, "ANY /legacy/{proxy+}", payloadFormatVersion="1.0")
    reply = call(
        gw,
        "POST",
        "/legacy/a/b?x=1&x=2",
        [("X-Multi", "1"), ("X-Multi", "2"), ("Content-Type", "text/plain")],
        b"hello",
    )
    assert reply[0] == 200
    event = json.loads(reply[2])["event"]
    assert (event["version"], event["resource"], event["path"], event["httpMethod"]) == (
        "1.0",
        "/legacy/{proxy+}",
        "/legacy/a/b",
        "POST",
    )
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert event["multiValueHeaders"]["x-multi"] == ["1", "2"]
    assert event["headers"]["x-multi"] == "2"
    assert event["queryStringParameters"] == {"x": "2"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert (event["body"], event["isBase64Encoded"]) == ("hello", False)
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"

    # A 1.0 result without statusCode is an error.
    reply = call(gw, "GET", "/legacy/x?respond=%7B%22a%22%3A1%7D")
    assert message(reply) == (502, {"message": "Internal Server Error"})


@pytest.mark.parametrize(
    ("result", "status", "content_type", "body"),
    [
        ("Hello", 200, "application/json", b"Hello"),
        ({"a": 1}, 200, "application/json", b'{"a": 1}'),
        (
            {"statusCode": 418, "headers": {"content-type": "text/plain"}, "body": "teapot"},
            418,
            "text/plain",
            b"teapot",
        ),
        (
            {
                "statusCode": 200,
                "body": base64.b64encode(b"\x00\xff").decode(),
                "isBase64Encoded": True,
            },
            200,
            "application/json",
            b"\x00\xff",
        ),
    ],
)
def test_response_mapping(gw, result, status, content_type, body):
    route(gw, "GET /respond")
    query = quote(json.dumps(result))
    reply = call(gw, "GET", f"/respond?respond={query}")
    assert (reply[0], header(reply, "content-type"), reply[2]) == (status, content_type, body)


def test_response_with_cookies_and_multi_value_headers(gw):
    route(gw, "GET /respond")
    result = {
        "statusCode": 200,
        "headers": {"x-one": "1"},
        "multiValueHeaders": {"x-many": ["a", "b"]},
        "cookies": ["a=1", "b=2; HttpOnly"],
        "body": "ok",
    }
    query = quote(json.dumps(result))
    _, headers, body = call(gw, "GET", f"/respond?respond={query}")
    assert body == b"ok"
    assert [v for n, v in headers if n.lower() == "set-cookie"] == ["a=1", "b=2; HttpOnly"]
    assert [v for n, v in headers if n.lower() == "x-many"] == ["a", "b"]
    assert [v for n, v in headers if n.lower() == "x-one"] == ["1"]


def test_errors(gw):
    route(gw, "GET /fail")
    route(gw, "GET /ghost", function="does-not-exist")
    route(gw, "POST /big")
    bad = quote(json.dumps({"statusCode": "x"}))
    cases = [
        (call(gw, "GET", "/fail?fail=1"), 502, "Internal Server Error"),
        (call(gw, "GET", f"/fail?respond={bad}"), 502, "Internal Server Error"),
        (call(gw, "GET", "/ghost"), 500, "Internal Server Error"),
        (call(gw, "GET", "/nowhere"), 404, "Not Found"),
        (call(gw, "GET", "/apis/default/no-such-api/x"), 404, "Not Found"),
        (call(gw, "GET", "/apis/default"), 404, "Not Found"),
        (
            call(gw, "POST", "/big", [], b"x" * (10 * 1024 * 1024 + 1)),
            413,
            "Request Entity Too Large",
        ),
    ]
    for reply, status, text in cases:
        assert message(reply) == (status, {"message": text})


def test_integration_timeout(start_gateway, agents):
    gw = start_gateway()
    serve_function(gw, "fn", agents(code=API_APP, timeout=5).port, timeout=5)
    route(gw, "GET /slow", timeoutMillis=300)
    started = time.monotonic()
    reply = call(gw, "GET", "/slow?sleep=1")
    assert message(reply) == (504, {"message": "Endpoint request timed out"})
    assert time.monotonic() - started < 0.9
    # The invocation goes on and holds its pod until the function returns: the next request
    # waits for it, past its own timeout; once it is done, requests are served again.
    assert call(gw, "GET", "/slow")[0] == 504
    time.sleep(1)
    assert call(gw, "GET", "/slow")[0] == 200


def test_throttling(gw):
    route(gw, "GET /limited", throttling={"rateLimit": 0, "burstLimit": 2})
    statuses = [call(gw, "GET", "/limited")[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert message(call(gw, "GET", "/limited")) == (429, {"message": "Too Many Requests"})


def test_host_addressing(gw):
    route(gw, "GET /where", api="shop")
    reply = call(gw, "GET", "/where", [("Host", "shop.default.apis.test:8080")])
    assert reply[0] == 200
    assert json.loads(reply[2])["event"]["requestContext"]["apiId"] == "shop"
    assert call(gw, "GET", "/where")[0] == 404  # the default API has no such route


# --- CORS -----------------------------------------------------------------------------------

SITE = "https://site.example"


def test_cors(gw):
    route(
        gw,
        "ANY /cors",
        cors={
            "allowOrigins": [SITE],
            "allowMethods": ["GET", "POST"],
            "allowHeaders": ["X-Token"],
            "exposeHeaders": ["X-Id"],
            "maxAgeSeconds": 600,
        },
    )
    preflight = [
        ("Origin", SITE),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "x-token"),
    ]
    reply = call(gw, "OPTIONS", "/cors", preflight)
    assert reply[0] == 204
    assert header(reply, "access-control-allow-origin") == SITE
    assert header(reply, "access-control-allow-methods") == "GET,POST"
    assert header(reply, "access-control-allow-headers") == "x-token"
    assert header(reply, "access-control-max-age") == "600"

    denied = call(gw, "OPTIONS", "/cors", [("Origin", "https://evil"), *preflight[1:]])
    assert denied[0] == 204
    assert header(denied, "access-control-allow-origin") is None

    # The function's own CORS headers are replaced by the route's.
    result = {"statusCode": 200, "headers": {"Access-Control-Allow-Origin": "*"}, "body": "x"}
    query = quote(json.dumps(result))
    reply = call(gw, "GET", f"/cors?respond={query}", [("Origin", SITE)])
    assert reply[0] == 200
    assert [v for n, v in reply[1] if n.lower() == "access-control-allow-origin"] == [SITE]
    assert header(reply, "access-control-expose-headers") == "X-Id"
    reply = call(gw, "GET", f"/cors?respond={query}", [("Origin", "https://evil")])
    assert header(reply, "access-control-allow-origin") is None


# --- authorization --------------------------------------------------------------------------


def test_api_key(gw):
    route(gw, "GET /keyed", auth={"type": "API_KEY", "apiKey": {"secretName": "keys"}})
    route(gw, "GET /nokeys", auth={"type": "API_KEY", "apiKey": {"secretName": "missing"}})
    forbidden = (403, {"message": "Forbidden"})
    assert message(call(gw, "GET", "/keyed")) == forbidden
    assert message(call(gw, "GET", "/keyed", [("x-api-key", "wrong")])) == forbidden
    assert call(gw, "GET", "/keyed", [("x-api-key", "sesame")])[0] == 200
    assert message(call(gw, "GET", "/nokeys", [("x-api-key", "sesame")])) == forbidden


KEYS_WITH_IDS = {
    ("default", "plan-keys"): {
        "alice": base64.b64encode(b"alice-key").decode(),
        "bob": base64.b64encode(b"bob-key").decode(),
    }
}


async def read_plan_keys(namespace: str, name: str) -> dict[str, Any] | None:
    return KEYS_WITH_IDS.get((namespace, name))


def test_usage_plan_quota_is_exact_across_two_gateways(start_gateway, agents, nats_server):
    """Two replicas share each key's count through JetStream: the quota holds behind a Service."""
    port = agents(code=API_APP).port
    gateways = []
    for _ in range(2):
        connection: dict[str, Any] = {}
        gateway = start_gateway(
            read_secret=read_plan_keys,
            quota_counter=NatsQuotaCounter(lambda c=connection: c.get("nats")),
        )
        connection["nats"] = gateway.run(nats.connect(nats_server.url))
        serve_function(gateway, "fn", port)
        plan = {"quota": {"limit": 3, "period": "DAY"}}
        auth = {"type": "API_KEY", "apiKey": {"secretName": "plan-keys", "usagePlan": plan}}
        route(gateway, "GET /quota", auth=auth, payload_format_version="1.0")
        plan = {"throttle": {"rateLimit": 0.001, "burstLimit": 1}}
        auth = {"type": "API_KEY", "apiKey": {"secretName": "plan-keys", "usagePlan": plan}}
        route(gateway, "GET /throttled", auth=auth)
        gateways.append((gateway, connection))

    def get(i: int, path: str, key: str) -> Reply:
        return call(gateways[i % 2][0], "GET", path, [("x-api-key", key)])

    try:
        replies = [get(i, "/quota", "alice-key") for i in range(5)]
        assert [r[0] for r in replies] == [200, 200, 200, 429, 429]
        assert message(replies[3]) == (429, {"message": "Limit Exceeded"})
        identity = json.loads(replies[0][2])["event"]["requestContext"]["identity"]
        assert (identity["apiKey"], identity["apiKeyId"]) == ("alice-key", "alice")
        assert get(0, "/quota", "bob-key")[0] == 200  # every key has its own count
        assert message(get(1, "/quota", "nobody")) == (403, {"message": "Forbidden"})

        # Throttling is per key and per replica: each gateway's bucket holds one request.
        assert get(0, "/throttled", "alice-key")[0] == 200
        assert message(get(0, "/throttled", "alice-key")) == (429, {"message": "Too Many Requests"})
        assert get(0, "/throttled", "bob-key")[0] == 200
    finally:
        for gateway, connection in gateways:
            gateway.run(connection["nats"].close())


def test_usage_plan_quota_unavailable_without_a_counter(gw):
    plan = {"quota": {"limit": 3, "period": "WEEK"}}
    auth = {"type": "API_KEY", "apiKey": {"secretName": "keys", "usagePlan": plan}}
    route(gw, "GET /counted", auth=auth)
    reply = call(gw, "GET", "/counted", [("x-api-key", "sesame")])
    assert message(reply) == (503, {"message": "Service Unavailable"})


def test_lambda_authorizer(gw):
    route(
        gw,
        "GET /guarded",
        auth={
            "type": "FUNCTION",
            "function": {
                "name": "authz",
                "identitySources": ["$request.header.X-Token"],
                "cacheTtlSeconds": 300,
            },
        },
    )
    first = call(gw, "GET", "/guarded", [("X-Token", "allow-1")])
    assert first[0] == 200
    authorizer = json.loads(first[2])["event"]["requestContext"]["authorizer"]
    assert authorizer["lambda"]["token"] == "allow-1"
    calls = authorizer["lambda"]["calls"]
    # Cached by identity: the authorizer is not asked again.
    again = call(gw, "GET", "/guarded", [("X-Token", "allow-1")])
    assert json.loads(again[2])["event"]["requestContext"]["authorizer"]["lambda"]["calls"] == calls
    other = call(gw, "GET", "/guarded", [("X-Token", "allow-2")])
    assert json.loads(other[2])["event"]["requestContext"]["authorizer"]["lambda"]["calls"] > calls
    assert message(call(gw, "GET", "/guarded", [("X-Token", "deny")])) == (
        403,
        {"message": "Forbidden"},
    )
    assert message(call(gw, "GET", "/guarded")) == (401, {"message": "Unauthorized"})


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_server(documents: Callable[[BaseHTTPRequestHandler], None]) -> _Server:
    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            documents(self)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _Server(Handler)


def send_json(handler: BaseHTTPRequestHandler, document: Any, status: int = 200) -> None:
    data = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def idp(signing_key) -> Iterator[_Server]:
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    holder: dict[str, str] = {}

    def documents(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/.well-known/openid-configuration":
            send_json(handler, {"issuer": holder["url"], "jwks_uri": holder["url"] + "/jwks"})
        elif handler.path == "/jwks":
            send_json(handler, {"keys": [jwk | {"kid": "k1"}]})
        else:
            send_json(handler, {}, 404)

    server = start_server(documents)
    holder["url"] = server.url
    yield server
    server.stop()


def test_jwt(gw, idp, signing_key):
    route(
        gw,
        "GET /me",
        auth={"type": "JWT", "jwt": {"issuer": idp.url, "audience": ["api"], "scopes": ["read"]}},
    )
    now = int(time.time())
    claims = {"iss": idp.url, "aud": "api", "sub": "alice", "scope": "read", "exp": now + 60}

    def bearer(body: dict[str, Any]) -> list[tuple[str, str]]:
        token = pyjwt.encode(body, signing_key, algorithm="RS256", headers={"kid": "k1"})
        return [("Authorization", f"Bearer {token}")]

    reply = call(gw, "GET", "/me", bearer(claims))
    assert reply[0] == 200, reply
    jwt_context = json.loads(reply[2])["event"]["requestContext"]["authorizer"]["jwt"]
    assert jwt_context["claims"]["sub"] == "alice"
    assert jwt_context["scopes"] == ["read"]
    unauthorized = (401, {"message": "Unauthorized"})
    assert message(call(gw, "GET", "/me")) == unauthorized
    assert message(call(gw, "GET", "/me", bearer(claims | {"exp": now - 10}))) == unauthorized
    assert message(call(gw, "GET", "/me", bearer(claims | {"scope": "write"}))) == unauthorized


# --- HTTP backends --------------------------------------------------------------------------


@pytest.fixture
def backend() -> Iterator[_Server]:
    def echo(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/base/slow"):
            time.sleep(1)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode()
        data = json.dumps(
            {
                "method": handler.command,
                "path": handler.path,
                "headers": {k.lower(): v for k, v in handler.headers.items()},
                "body": body,
            }
        ).encode()
        handler.send_response(207)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("X-Backend", "yes")
        handler.send_header("Set-Cookie", "a=1")
        handler.send_header("Set-Cookie", "b=2")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    server = start_server(echo)
    yield server
    server.stop()


def test_http_backend(gw, backend):
    route(gw, "ANY /svc/{proxy+}", url=backend.url + "/base", timeoutMillis=500)
    route(gw, "GET /exact", url=backend.url + "/base")
    reply = call(
        gw,
        "PUT",
        "/svc/a/b%20c?x=1&x=2",
        [("Host", "front.example"), ("Connection", "keep-alive"), ("X-Custom", "v")],
        b"payload",
    )
    assert reply[0] == 207
    assert header(reply, "x-backend") == "yes"
    assert [v for n, v in reply[1] if n.lower() == "set-cookie"] == ["a=1", "b=2"]
    seen = json.loads(reply[2])
    assert (seen["method"], seen["path"], seen["body"]) == (
        "PUT",
        "/base/a/b%20c?x=1&x=2",
        "payload",
    )
    assert seen["headers"]["x-custom"] == "v"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == "front.example"
    assert seen["headers"]["host"] != "front.example"
    assert json.loads(call(gw, "GET", "/exact")[2])["path"] == "/base/exact"

    assert message(call(gw, "GET", "/svc/slow")) == (504, {"message": "Endpoint request timed out"})


def test_http_backend_unreachable(gw):
    with _closed_port() as port:
        route(gw, "GET /down", url=f"http://127.0.0.1:{port}")
        assert message(call(gw, "GET", "/down")) == (502, {"message": "Internal Server Error"})


class _closed_port:
    """A port nothing listens on, for as long as the block runs."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
