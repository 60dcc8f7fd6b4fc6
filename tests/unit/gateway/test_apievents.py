"""Events as API Gateway builds them (against public fixtures) and response mapping."""

from __future__ import annotations

import base64
import json

import pytest

from kubelambda.gateway.apievents import (
    ApiRequest,
    InvalidResponse,
    authorizer_event,
    clf_time,
    encode_body,
    v1_event,
    v1_response,
    v2_event,
    v2_response,
)
from kubelambda.gateway.apiroutes import RouteMatch, compile_route
from kubelambda.gateway.httpserver import Request
from tests.unit.gateway.apiobjects import route_obj

# aws-powertools/powertools-lambda-python tests/events/apiGatewayProxyV2Event.json (the fields
# a gateway builds; clientCert, stageVariables and the authorizer are not this request's).
V2_FIXTURE = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/my/path",
    "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
    "cookies": ["cookie1", "cookie2"],
    "headers": {"header1": "value1", "header2": "value1,value2"},
    "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
    "requestContext": {
        "accountId": "123456789012",
        "apiId": "api-id",
        "domainName": "id.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "id",
        "http": {
            "method": "POST",
            "path": "/my/path",
            "protocol": "HTTP/1.1",
            "sourceIp": "192.168.0.1",
            "userAgent": "agent",
        },
        "requestId": "id",
        "routeKey": "$default",
        "stage": "$default",
        "time": "12/Mar/2020:19:03:58 +0000",
        "timeEpoch": 1584039838390,
    },
    "body": '{"message": "hello world", "username": "tom"}',
    "isBase64Encoded": False,
}
# ...and tests/events/apiGatewayProxyEvent.json (payload format 1.0), likewise.
V1_FIXTURE = {
    "version": "1.0",
    "resource": "/my/path",
    "path": "/my/path",
    "httpMethod": "GET",
    "multiValueHeaders": {"header1": ["value1"], "header2": ["value1", "value2"]},
    "queryStringParameters": {"parameter1": "value2", "parameter2": "value"},
    "multiValueQueryStringParameters": {
        "parameter1": ["value1", "value2"],
        "parameter2": ["value"],
    },
    "pathParameters": None,
    "stageVariables": None,
    "body": "Hello from Lambda!",
    "isBase64Encoded": False,
}
EXTRA_HEADERS = {
    "host": "id.execute-api.us-east-1.amazonaws.com",
    "user-agent": "agent",
    "x-forwarded-for": "192.168.0.1",
    "x-forwarded-proto": "http",
}


def api_request(
    method: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    path: str = "/my/path",
    query: str = "parameter1=value1&parameter1=value2&parameter2=value",
) -> ApiRequest:
    joined: dict[bytes, bytes] = {}
    repeated: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        repeated.setdefault(name, []).append(value)
        joined[name] = joined[name] + b"," + value if name in joined else value
    request = Request(
        method.encode(),
        f"{path}?{query}".encode(),
        joined,
        repeated={k: v for k, v in repeated.items() if len(v) > 1} or None,
        peer="192.168.0.1",
    )
    request.body = body
    return ApiRequest(
        request=request,
        namespace="default",
        api="api-id",
        method=method,
        raw_path=path,
        raw_query=query,
        domain_name="id.execute-api.us-east-1.amazonaws.com",
        request_id="id",
        epoch_s=1584039838.390,
    )


BASE_HEADERS = [
    (b"host", b"id.execute-api.us-east-1.amazonaws.com"),
    (b"user-agent", b"agent"),
    (b"header1", b"value1"),
    (b"header2", b"value1"),
    (b"header2", b"value2"),
]


def test_v2_event_matches_the_fixture():
    request = api_request(
        "POST",
        V2_FIXTURE["body"].encode(),  # type: ignore[attr-defined]
        [*BASE_HEADERS, (b"cookie", b"cookie1; cookie2"), (b"connection", b"keep-alive")],
    )
    match = RouteMatch(compile_route(route_obj("$default")), {})
    event = v2_event(request, match, "123456789012")
    expected = json.loads(json.dumps(V2_FIXTURE))
    expected["headers"] |= EXTRA_HEADERS
    assert event == expected


def test_v2_event_path_parameters_authorizer_and_empty_fields():
    request = api_request("GET", b"", [(b"host", b"h")], path="/pets/7", query="")
    match = RouteMatch(compile_route(route_obj("GET /pets/{id}")), {"id": "7"})
    authorizer = {"lambda": {"user": "u"}}
    event = v2_event(request, match, "000000000000", authorizer)
    assert event["pathParameters"] == {"id": "7"}
    assert event["requestContext"]["authorizer"] == authorizer
    assert event["requestContext"]["routeKey"] == "GET /pets/{id}"
    assert event["isBase64Encoded"] is False
    for omitted in ("cookies", "queryStringParameters", "body", "stageVariables"):
        assert omitted not in event


def test_v1_event_matches_the_fixture():
    request = api_request("GET", b"Hello from Lambda!", BASE_HEADERS)
    match = RouteMatch(compile_route(route_obj("GET /my/path")), {})
    event = v1_event(request, match, "123456789012")
    for key, value in V1_FIXTURE.items():
        if key != "multiValueHeaders":
            assert event[key] == value, key
    assert event["multiValueHeaders"] == V1_FIXTURE["multiValueHeaders"] | {
        k: [v] for k, v in EXTRA_HEADERS.items()
    }
    assert event["headers"]["header2"] == "value2"
    context = event["requestContext"]
    assert context["identity"]["sourceIp"] == "192.168.0.1"
    assert context["identity"]["userAgent"] == "agent"
    assert (context["httpMethod"], context["resourcePath"], context["stage"]) == (
        "GET",
        "/my/path",
        "$default",
    )
    assert context["requestTime"] == "12/Mar/2020:19:03:58 +0000"


def test_forwarded_for_appends_the_client():
    request = api_request("GET", b"", [*BASE_HEADERS, (b"x-forwarded-for", b"10.0.0.1")])
    match = RouteMatch(compile_route(route_obj("GET /my/path")), {})
    v1 = v1_event(request, match, "123456789012")
    v2 = v2_event(request, match, "123456789012")
    assert v1["multiValueHeaders"]["x-forwarded-for"] == ["10.0.0.1, 192.168.0.1"]
    assert v1["headers"]["x-forwarded-for"] == "10.0.0.1, 192.168.0.1"
    assert v2["headers"]["x-forwarded-for"] == "10.0.0.1, 192.168.0.1"


def test_authorizer_event():
    request = api_request("GET", b"ignored", [*BASE_HEADERS, (b"authorization", b"tok")])
    match = RouteMatch(compile_route(route_obj("GET /my/path")), {})
    event = authorizer_event(request, match, "123456789012", "us-east-1", ["tok"])
    assert event["version"] == "2.0"
    assert event["type"] == "REQUEST"
    assert event["identitySource"] == ["tok"]
    assert event["routeArn"] == (
        "arn:aws:execute-api:us-east-1:123456789012:api-id/$default/GET/my/path"
    )
    assert "body" not in event
    assert event["headers"]["authorization"] == "tok"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (None, b'{"a":1}', ('{"a":1}', False)),
        ("application/json; charset=utf-8", b"{}", ("{}", False)),
        ("text/plain", "h\u00e9".encode(), ("h\u00e9", False)),
        ("application/vnd.api+json", b"{}", ("{}", False)),
        ("image/png", b"\x89PNG", (base64.b64encode(b"\x89PNG").decode(), True)),
        ("application/x-www-form-urlencoded", b"a=1", ("YT0x", True)),
        ("text/plain", b"\xff\xfe", ("//4=", True)),  # not UTF-8 after all
    ],
)
def test_body_encoding(content_type, body, expected):
    assert encode_body(body, content_type) == expected


def test_clf_time():
    assert clf_time(1583348638.39) == "04/Mar/2020:19:03:58 +0000"


CT_JSON = (b"content-type", b"application/json")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ("Hello", (200, [CT_JSON], b"Hello")),
        ({"a": 1}, (200, [CT_JSON], b'{"a": 1}')),
        ([1, 2], (200, [CT_JSON], b"[1, 2]")),
        (None, (200, [CT_JSON], b"null")),
        ({"statusCode": 204}, (204, [CT_JSON], b"")),
        (
            {
                "statusCode": 201,
                "headers": {"Content-Type": "text/plain", "X-Count": 3, "X-Flag": True},
                "cookies": ["a=1; Path=/", "b=2"],
                "body": "made",
            },
            (
                201,
                [
                    (b"content-type", b"text/plain"),
                    (b"x-count", b"3"),
                    (b"x-flag", b"true"),
                    (b"set-cookie", b"a=1; Path=/"),
                    (b"set-cookie", b"b=2"),
                ],
                b"made",
            ),
        ),
        (
            {
                "statusCode": "200",
                "headers": {"X-A": "single", "Transfer-Encoding": "chunked"},
                "multiValueHeaders": {"X-A": ["1", "2"]},
                "body": base64.b64encode(b"\x00\x01").decode(),
                "isBase64Encoded": True,
            },
            (200, [(b"x-a", b"1"), (b"x-a", b"2"), CT_JSON], b"\x00\x01"),
        ),
    ],
)
def test_v2_response(result, expected):
    assert v2_response(json.dumps(result).encode()) == expected


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": "abc"},
        {"statusCode": 99},
        {"statusCode": True},
        {"statusCode": 200, "headers": {"X-A": "a\r\nX-Injected: 1"}},
        {"statusCode": 200, "headers": {"Bad Name": "x"}},
        {"statusCode": 200, "headers": {"X-A": {"nested": 1}}},
        {"statusCode": 200, "headers": ["X-A"]},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "body": "%%%", "isBase64Encoded": True},
        {"statusCode": 200, "cookies": "a=1"},
    ],
)
def test_v2_invalid_response(result):
    with pytest.raises(InvalidResponse):
        v2_response(json.dumps(result).encode())


def test_v2_response_not_json():
    with pytest.raises(InvalidResponse):
        v2_response(b"{oops")


def test_v1_response():
    result = {
        "statusCode": 200,
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "cookies": ["ignored=1"],  # not a 1.0 field
        "body": "ok",
    }
    assert v1_response(json.dumps(result).encode()) == (
        200,
        [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), CT_JSON],
        b"ok",
    )
    for missing in ({"body": "x"}, "Hello", [1]):
        with pytest.raises(InvalidResponse):
            v1_response(json.dumps(missing).encode())
