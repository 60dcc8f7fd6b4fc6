"""API Gateway events (payload formats 2.0 and 1.0, the 2.0 authorizer event) and the mapping
of a function's result back to an HTTP response. Pure: plain dicts in, plain values out.

Bodies: a request body is a string when its content type is textual (``text/*``, JSON, XML,
JavaScript, YAML, ``+json``/``+xml``, or absent) and it is valid UTF-8; anything else (images,
``application/octet-stream``, form posts) is base64 with ``isBase64Encoded`` true, as HTTP APIs
do. Header values are read as Latin-1, HTTP's own charset, so that no byte is lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from kubelambda.gateway.apiroutes import DEFAULT_ROUTE_KEY, RouteMatch
from kubelambda.gateway.httpserver import Request

STAGE = "$default"

# Hop-by-hop headers (RFC 9110 section 7.6.1) and framing: never passed on in either direction.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
_TEXT_TYPES = frozenset(
    (
        "application/json",
        "application/javascript",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/graphql",
    )
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(slots=True)
class ApiRequest:
    """An HTTP API request once addressed: which API, and the path within it."""

    request: Request
    namespace: str
    api: str
    method: str
    raw_path: str  # as sent, after the /apis/<namespace>/<api> prefix
    raw_query: str
    domain_name: str
    request_id: str
    epoch_s: float
    api_key_id: str | None = None  # the accepted x-api-key's id (its Secret entry's name)

    def header(self, name: bytes) -> str | None:
        value = self.request.headers.get(name)
        return None if value is None else value.decode("latin-1")


def is_text(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return (
        media.startswith("text/")
        or media in _TEXT_TYPES
        or media.endswith("+json")
        or media.endswith("+xml")
    )


def encode_body(body: bytes, content_type: str | None) -> tuple[str, bool]:
    """The event's body and isBase64Encoded."""
    if is_text(content_type):
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), True


def clf_time(epoch_s: float) -> str:
    """``12/Mar/2020:19:03:58 +0000``, in English whatever the locale."""
    t = time.gmtime(epoch_s)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def forwarded_headers(api_request: ApiRequest) -> dict[str, str]:
    """The request's headers as API Gateway passes them on: lower-case, duplicates
    comma-joined, hop-by-hop ones dropped, ``x-forwarded-for``/``-proto`` added."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in api_request.request.headers.items()
        if name not in HOP_BY_HOP
    }
    peer = api_request.request.peer
    if peer:
        previous = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{previous}, {peer}" if previous else peer
    headers.setdefault("x-forwarded-proto", "http")
    return headers


def query_parameters(raw_query: str) -> dict[str, list[str]]:
    parameters: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        parameters.setdefault(name, []).append(value)
    return parameters


def cookies(request: Request) -> list[str]:
    return [
        cookie.strip()
        for header in request.values(b"cookie")
        for cookie in header.decode("latin-1").split(";")
        if cookie.strip()
    ]


def _http_context(api_request: ApiRequest) -> dict[str, Any]:
    return {
        "method": api_request.method,
        "path": api_request.raw_path,
        "protocol": f"HTTP/{api_request.request.http_version}",
        "sourceIp": api_request.request.peer,
        "userAgent": api_request.header(b"user-agent") or "",
    }


def _request_context(
    api_request: ApiRequest, route_key: str, account_id: str, authorizer: dict[str, Any] | None
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "accountId": account_id,
        "apiId": api_request.api,
        "domainName": api_request.domain_name,
        "domainPrefix": api_request.domain_name.split(".", 1)[0],
        "http": _http_context(api_request),
        "requestId": api_request.request_id,
        "routeKey": route_key,
        "stage": STAGE,
        "time": clf_time(api_request.epoch_s),
        "timeEpoch": int(api_request.epoch_s * 1000),
    }
    if authorizer:
        context["authorizer"] = authorizer
    return context


def _v2_common(
    api_request: ApiRequest, match: RouteMatch, account_id: str, authorizer: dict[str, Any] | None
) -> dict[str, Any]:
    """The fields the 2.0 event and the 2.0 authorizer event share (empty ones omitted)."""
    route_key = match.route.route_key
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": api_request.raw_path,
        "rawQueryString": api_request.raw_query,
    }
    request_cookies = cookies(api_request.request)
    if request_cookies:
        event["cookies"] = request_cookies
    headers = forwarded_headers(api_request)
    headers.pop("cookie", None)  # in "cookies"
    event["headers"] = headers
    query = query_parameters(api_request.raw_query)
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in query.items()}
    event["requestContext"] = _request_context(api_request, route_key, account_id, authorizer)
    if match.path_parameters:
        event["pathParameters"] = match.path_parameters
    return event


def v2_event(
    api_request: ApiRequest,
    match: RouteMatch,
    account_id: str,
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event = _v2_common(api_request, match, account_id, authorizer)
    body = api_request.request.body
    if body:
        event["body"], event["isBase64Encoded"] = encode_body(
            body, api_request.header(b"content-type")
        )
    else:
        event["isBase64Encoded"] = False
    return event


def authorizer_event(
    api_request: ApiRequest, match: RouteMatch, account_id: str, region: str, identity: list[str]
) -> dict[str, Any]:
    """The event a 2.0 Lambda authorizer gets: the request without its body."""
    event = _v2_common(api_request, match, account_id, None)
    del event["version"]
    route_arn = (
        f"arn:aws:execute-api:{region}:{account_id}:{api_request.api}/{STAGE}/"
        f"{api_request.method}{api_request.raw_path}"
    )
    return {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": route_arn,
        "identitySource": identity,
        **event,
    }


def v1_event(
    api_request: ApiRequest,
    match: RouteMatch,
    account_id: str,
    authorizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Payload format 1.0 (REST API proxy): multi-value maps, nulls rather than omissions."""
    request = api_request.request
    headers = forwarded_headers(api_request)
    repeated = request.repeated or {}
    multi_headers = {}
    for name, value in headers.items():
        values = repeated.get(name.encode("latin-1"))
        # x-forwarded-for got the client appended: one value, as in the single-value map.
        if values is None or name == "x-forwarded-for":
            multi_headers[name] = [value]
        else:
            multi_headers[name] = [v.decode("latin-1") for v in values]
    single_headers = {name: values[-1] for name, values in multi_headers.items()}
    query = query_parameters(api_request.raw_query)
    route = match.route
    resource = route.path or DEFAULT_ROUTE_KEY
    body = request.body
    context = _request_context(api_request, route.route_key, account_id, None)
    http = context.pop("http")
    context.pop("time")
    context.pop("timeEpoch")
    context.update(
        {
            "extendedRequestId": api_request.request_id,
            "httpMethod": api_request.method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "apiKey": None
                if api_request.api_key_id is None
                else api_request.header(b"x-api-key"),
                "apiKeyId": api_request.api_key_id,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": http["sourceIp"],
                "user": None,
                "userAgent": http["userAgent"],
                "userArn": None,
            },
            "path": api_request.raw_path,
            "protocol": http["protocol"],
            "requestTime": clf_time(api_request.epoch_s),
            "requestTimeEpoch": int(api_request.epoch_s * 1000),
            "resourceId": route.route_key,
            "resourcePath": resource,
        }
    )
    if authorizer:
        context["authorizer"] = authorizer
    event: dict[str, Any] = {
        "version": "1.0",
        "resource": resource,
        "path": api_request.raw_path,
        "httpMethod": api_request.method,
        "headers": single_headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} if query else None,
        "multiValueQueryStringParameters": query or None,
        "requestContext": context,
        "pathParameters": match.path_parameters or None,
        "stageVariables": None,
        "body": None,
        "isBase64Encoded": False,
    }
    if body:
        event["body"], event["isBase64Encoded"] = encode_body(
            body, api_request.header(b"content-type")
        )
    return event


# --- responses -------------------------------------------------------------------------------


class InvalidResponse(ValueError):
    """The function's result is not a response API Gateway can send (a 502)."""


HeaderList = list[tuple[bytes, bytes]]


def _header_value(value: Any) -> bytes:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise InvalidResponse(f"header value {value!r} is not a string")
    if "\r" in text or "\n" in text or "\0" in text:
        raise InvalidResponse("header value with a line break")
    return text.encode("latin-1", "replace")


def _header_name(name: Any) -> bytes:
    if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
        raise InvalidResponse(f"invalid header name {name!r}")
    return name.lower().encode()


def _structured(result: dict[str, Any], cookies_field: bool) -> tuple[int, HeaderList, bytes]:
    status = result.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise InvalidResponse(f"invalid statusCode {status!r}")
    headers: HeaderList = []
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise InvalidResponse("headers must be objects")
    for name, value in single.items():
        if name not in multi:  # as in API Gateway, multiValueHeaders wins for a name in both
            headers.append((_header_name(name), _header_value(value)))
    for name, values in multi.items():
        if not isinstance(values, list):
            raise InvalidResponse("multiValueHeaders values must be lists")
        encoded = _header_name(name)
        headers.extend((encoded, _header_value(v)) for v in values)
    if cookies_field:
        response_cookies = result.get("cookies") or []
        if not isinstance(response_cookies, list):
            raise InvalidResponse("cookies must be a list")
        headers.extend((b"set-cookie", _header_value(c)) for c in response_cookies)
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise InvalidResponse("body must be a string")
    elif result.get("isBase64Encoded") is True:
        try:
            data = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise InvalidResponse("body is not valid base64") from exc
    else:
        data = body.encode()
    headers = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n != b"content-length"]
    if not any(name == b"content-type" for name, _ in headers):
        headers.append((b"content-type", b"application/json"))
    return status, headers, data


def v2_response(payload: bytes) -> tuple[int, HeaderList, bytes]:
    """A function's 2.0 result as status, headers and body; raises ``InvalidResponse``.

    A result without ``statusCode`` is the body itself: 200, JSON, the result's JSON text (a
    string result is sent as the string, unquoted)."""
    try:
        result = json.loads(payload)
    except ValueError as exc:
        raise InvalidResponse("the result is not JSON") from exc
    if isinstance(result, dict) and "statusCode" in result:
        return _structured(result, cookies_field=True)
    body = result.encode() if isinstance(result, str) else payload
    return 200, [(b"content-type", b"application/json")], body


def v1_response(payload: bytes) -> tuple[int, HeaderList, bytes]:
    """A function's 1.0 result: it must carry ``statusCode``; raises ``InvalidResponse``."""
    try:
        result = json.loads(payload)
    except ValueError as exc:
        raise InvalidResponse("the result is not JSON") from exc
    if not isinstance(result, dict) or "statusCode" not in result:
        raise InvalidResponse("the result has no statusCode")
    return _structured(result, cookies_field=False)
