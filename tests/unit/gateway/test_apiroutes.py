"""Route tables: compilation of ApiRoute objects and API Gateway's route priority."""

from __future__ import annotations

import pytest

from kubelambda.gateway.apiroutes import (
    API_ROUTE,
    ApiKeyPolicy,
    ApiRoutes,
    AuthorizerPolicy,
    FunctionIntegration,
    HttpIntegration,
    JwtPolicy,
    compile_route,
)
from kubelambda.gateway.routing import KINDS, RoutingTable
from tests.unit.gateway.apiobjects import route_obj

ROUTES = (
    "GET /pets/dog/1",
    "GET /pets/dog/{id}",
    "GET /pets/{proxy+}",
    "ANY /{proxy+}",
    "$default",
    "ANY /things/{id}",
    "GET /things/{id}",
    "GET /a/{x}/c",
    "GET /a/b/{y}",
    "GET /{p}/{q}/{r}/{s}",
    "ANY /exact",
    "GET /exact",
    "POST /",
    "GET /deep/{a}/{rest+}",
    "GET /deep/{rest+}",
)


@pytest.fixture
def routes() -> ApiRoutes:
    table = ApiRoutes()
    table.replace(route_obj(key) for key in ROUTES)
    return table


@pytest.mark.parametrize(
    ("method", "path", "route_key", "parameters"),
    [
        # The example of API Gateway's documentation.
        ("GET", "/pets/dog/1", "GET /pets/dog/1", {}),
        ("GET", "/pets/dog/2", "GET /pets/dog/{id}", {"id": "2"}),
        ("GET", "/pets/cat/1", "GET /pets/{proxy+}", {"proxy": "cat/1"}),
        ("POST", "/pets/cat/1", "ANY /{proxy+}", {"proxy": "pets/cat/1"}),
        ("GET", "/", "$default", {}),  # greedy needs one segment or more
        ("POST", "/", "POST /", {}),
        # A named method beats ANY on the same path, ANY takes the others.
        ("GET", "/things/7", "GET /things/{id}", {"id": "7"}),
        ("DELETE", "/things/7", "ANY /things/{id}", {"id": "7"}),
        ("GET", "/exact", "GET /exact", {}),
        ("PUT", "/exact", "ANY /exact", {}),
        # Literal beats parameter at the first segment where they differ.
        ("GET", "/a/b/c", "GET /a/b/{y}", {"y": "c"}),
        ("GET", "/a/z/c", "GET /a/{x}/c", {"x": "z"}),
        # Any non-greedy match beats every greedy one.
        ("GET", "/pets/x/y/z", "GET /{p}/{q}/{r}/{s}", {"p": "pets", "q": "x", "r": "y", "s": "z"}),
        # Parameters are one non-empty segment, percent-decoded.
        ("GET", "/x//z", "ANY /{proxy+}", {"proxy": "x//z"}),
        ("GET", "/pets/dog/a%20b", "GET /pets/dog/{id}", {"id": "a b"}),
        # The longer greedy prefix wins.
        ("GET", "/deep/1/2/3/4", "GET /deep/{a}/{rest+}", {"a": "1", "rest": "2/3/4"}),
        ("GET", "/deep/1", "GET /deep/{rest+}", {"rest": "1"}),
        ("GET", "/pets/dog/1/", "GET /pets/{proxy+}", {"proxy": "dog/1/"}),
    ],
)
def test_priority(routes, method, path, route_key, parameters):
    table = routes.table("default", "default")
    assert table is not None
    match = table.match(method, path)
    assert match is not None
    assert (match.route.route_key, match.path_parameters) == (route_key, parameters)


def test_no_match_without_default():
    table = ApiRoutes()
    table.replace([route_obj("GET /pets/{id}"), route_obj("GET /files/{path+}")])
    api = table.table("default", "default")
    assert api is not None
    for method, path in [("POST", "/pets/1"), ("GET", "/pets"), ("GET", "/files"), ("GET", "/")]:
        assert api.match(method, path) is None
    assert table.table("default", "other") is None
    assert table.table("other", "default") is None


def test_apis_and_namespaces_are_separate():
    table = RoutingTable()
    assert API_ROUTE in KINDS
    table.apply(API_ROUTE, {"type": "ADDED", "object": route_obj("GET /a", api="one")})
    table.apply(API_ROUTE, {"type": "ADDED", "object": route_obj("GET /b", namespace="team")})
    one = table.api_routes.table("default", "one")
    team = table.api_routes.table("team", "default")
    assert one is not None
    assert one.match("GET", "/a") is not None
    assert one.match("GET", "/b") is None
    assert team is not None
    assert team.match("GET", "/b") is not None


def test_apply_update_delete_and_invalid():
    table = ApiRoutes()
    table.apply(route_obj("GET /a", name="r"), deleted=False)
    # The same object moves to another API and path: the old table is emptied.
    table.apply(route_obj("GET /b", name="r", api="other"), deleted=False)
    assert table.table("default", "default") is None
    other = table.table("default", "other")
    assert other is not None
    assert other.match("GET", "/b") is not None
    # An invalid update drops the route rather than keep a stale one.
    table.apply(route_obj("FETCH /b", name="r", api="other"), deleted=False)
    assert table.table("default", "other") is None
    table.apply(route_obj("GET /c", name="r"), deleted=False)
    table.apply(route_obj("GET /c", name="r"), deleted=True)
    assert list(table.routes()) == []


def test_duplicate_route_key_first_name_wins():
    table = ApiRoutes()
    table.replace([route_obj("GET /a", name="b-route"), route_obj("GET /a", name="a-route")])
    api = table.table("default", "default")
    assert api is not None
    match = api.match("GET", "/a")
    assert match is not None
    assert match.route.name == "a-route"


def test_compile():
    route = compile_route(
        route_obj(
            "GET /pets/{id}",
            qualifier="live",
            payloadFormatVersion="1.0",
            timeoutMillis=1500,
            throttling={"rateLimit": 5, "burstLimit": 10},
            cors={
                "allowOrigins": ["https://a.example"],
                "allowMethods": ["GET", "POST"],
                "allowHeaders": ["X-Token"],
                "exposeHeaders": ["X-Id", "X-Other"],
                "allowCredentials": True,
                "maxAgeSeconds": 60,
            },
        )
    )
    assert route.integration == FunctionIntegration("fn", "live")
    assert (route.method, route.path, route.greedy) == ("GET", "/pets/{id}", None)
    assert route.parts == ((False, "pets"), (True, "id"))
    assert (route.payload_version, route.timeout_s, route.throttle) == ("1.0", 1.5, (5, 10))
    assert route.cors is not None
    assert route.cors.methods == "GET,POST"
    assert route.cors.headers == frozenset({"x-token"})
    assert route.cors.expose_headers == "X-Id,X-Other"
    assert compile_route(route_obj("$default", url="http://svc:8080/base/")).integration == (
        HttpIntegration("http://svc:8080/base")
    )


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"type": "NONE"}, None),
        ({"type": "API_KEY", "apiKey": {"secretName": "keys"}}, ApiKeyPolicy("keys")),
        (
            {
                "type": "JWT",
                "jwt": {"issuer": "https://idp", "audience": ["a", "b"], "scopes": ["read"]},
            },
            JwtPolicy("https://idp", frozenset({"a", "b"}), None, ("read",)),
        ),
        (
            {
                "type": "FUNCTION",
                "function": {
                    "name": "authz:live",
                    "identitySources": ["$request.header.X-Token", "$request.querystring.k"],
                    "cacheTtlSeconds": 30,
                },
            },
            AuthorizerPolicy(
                "authz",
                "live",
                (("header", "x-token"), ("querystring", "k")),
                ("$request.header.X-Token", "$request.querystring.k"),
                30,
            ),
        ),
    ],
)
def test_compile_auth(auth, expected):
    assert compile_route(route_obj("GET /a", auth=auth)).auth == expected
