"""HTTP APIs: API Gateway HTTP API requests, from addressing to the integration's answer.

Per request: address the API (``/apis/<namespace>/<api>/...``, an ``<api>.<namespace>.<domain>``
host, or the default API), match a route, answer a CORS preflight, take a throttling token,
authorize (API key and its usage plan, JWT or Lambda authorizer), then call the integration: a
function through the Invoke API's path (concurrency caps, pod choice, cold-start hold) with the
route's payload format, or an HTTP backend. Everything the gateway answers itself has API
Gateway's shape, ``{"message": ...}``, and every answer carries ``apigw-requestid``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from yarl import URL

from kubelambda.gateway.apiauth import ApiKeys, AuthorizerCache, Decision, ReadSecret
from kubelambda.gateway.apievents import (
    HOP_BY_HOP,
    ApiRequest,
    HeaderList,
    InvalidResponse,
    authorizer_event,
    forwarded_headers,
    query_parameters,
    v1_event,
    v1_response,
    v2_event,
    v2_response,
)
from kubelambda.gateway.apiroutes import (
    ApiKeyPolicy,
    AuthorizerPolicy,
    FunctionIntegration,
    HttpIntegration,
    JwtPolicy,
    RouteMatch,
)
from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.cors import preflight_headers, response_headers
from kubelambda.gateway.httpserver import HandlerResult, Request, Response
from kubelambda.gateway.invoke import MAX_REQUEST_BYTES, InvokeApi, new_request_id
from kubelambda.gateway.jwtauth import FetchJson, JwtError, JwtVerifier, authorizer_context
from kubelambda.gateway.metrics import FUNCTION_ERROR, OK
from kubelambda.gateway.routing import ACCOUNT_ID, RouteError, RoutingTable, Target
from kubelambda.gateway.throttle import Throttles
from kubelambda.gateway.usage import Admission, QuotaCounter, UsagePlans

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # HTTP API request and response payload limit
API_PREFIX = b"/apis/"
FETCH_TIMEOUT_S = 5.0  # JWKS and OpenID discovery documents

_MESSAGES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Internal Server Error",
    503: "Service Unavailable",
    504: "Endpoint request timed out",
}


def api_error(
    status: int, request_id: str, extra: HeaderList | None = None, message: str | None = None
) -> Response:
    head = b"content-type: application/json\r\napigw-requestid: %s\r\n" % request_id.encode()
    if extra:
        head += b"".join(b"%s: %s\r\n" % header for header in extra)
    return Response(status, head, json.dumps({"message": message or _MESSAGES[status]}).encode())


class _GatewayError(Exception):
    """An answer the gateway gives itself (API Gateway's shape), not the integration's."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


class HttpApi:
    def __init__(
        self,
        config: GatewayConfig,
        table: RoutingTable,
        invoker: InvokeApi,
        session: aiohttp.ClientSession,
        *,
        read_secret: ReadSecret | None = None,
        fetch_json: FetchJson | None = None,
        quota_counter: QuotaCounter | None = None,
    ) -> None:
        self._config = config
        self._table = table
        self._invoker = invoker
        self._session = session
        loop = asyncio.get_running_loop()
        self._throttles = Throttles(loop.time)
        self._api_keys = ApiKeys(read_secret or _no_secrets, time.monotonic)
        self._usage = UsagePlans(quota_counter, loop.time, time.time)
        self._jwt = JwtVerifier(fetch_json or self._fetch_json, time.time)
        self._decisions = AuthorizerCache(time.monotonic)
        # Function calls that outlived their route's timeout: they finish (and free their slot)
        # after the caller got its 504.
        self._overdue: set[asyncio.Future[tuple[Response, str]]] = set()
        domain = config.api_domain
        self._host_suffix = f".{domain}" if domain else None

    # --- addressing ------------------------------------------------------------------------

    def _address(self, request: Request, path: bytes) -> tuple[str, str, str] | None:
        """(namespace, api, rawPath) of a request, or None for a malformed /apis/ path."""
        if self._host_suffix is not None:
            host = _host(request)
            if host.endswith(self._host_suffix):
                labels = host[: -len(self._host_suffix)].split(".")
                if len(labels) == 2 and all(labels):
                    return labels[1], labels[0], path.decode("latin-1")
        if path.startswith(API_PREFIX):
            namespace, _, rest = path[len(API_PREFIX) :].partition(b"/")
            api, _, rest = rest.partition(b"/")
            if not namespace or not api:
                return None
            return namespace.decode("latin-1"), api.decode("latin-1"), "/" + rest.decode("latin-1")
        return self._config.default_namespace, self._config.default_api, path.decode("latin-1")

    # --- the request -----------------------------------------------------------------------

    def handle(self, request: Request) -> HandlerResult:
        request_id = new_request_id()
        path, _, query = request.url.partition(b"?")
        address = self._address(request, path)
        if address is None:
            return api_error(404, request_id)
        namespace, api, raw_path = address
        table = self._table.api_routes.table(namespace, api)
        if table is None:
            return api_error(404, request_id)
        if request.too_large:
            return api_error(413, request_id)
        method = request.method.decode("latin-1")
        headers = request.headers
        origin_header = headers.get(b"origin")
        origin = None if origin_header is None else origin_header.decode("latin-1")
        requested_method = headers.get(b"access-control-request-method")
        if method == "OPTIONS" and origin is not None and requested_method is not None:
            preflight = table.match(requested_method.decode("latin-1"), raw_path)
            if preflight is not None and preflight.route.cors is not None:
                requested_headers = headers.get(b"access-control-request-headers")
                allowed = preflight_headers(
                    preflight.route.cors,
                    origin,
                    requested_method.decode("latin-1"),
                    None if requested_headers is None else requested_headers.decode("latin-1"),
                )
                return _response(204, allowed, b"", request_id)
        match = table.match(method, raw_path)
        if match is None:
            return api_error(404, request_id)
        route = match.route
        cors = [] if route.cors is None else response_headers(route.cors, origin)
        if route.throttle is not None and not self._throttles.allow(
            route.object_key, *route.throttle
        ):
            return api_error(429, request_id, cors)
        api_request = ApiRequest(
            request=request,
            namespace=namespace,
            api=api,
            method=method,
            raw_path=raw_path,
            raw_query=query.decode("latin-1"),
            domain_name=_host(request) or "localhost",
            request_id=request_id,
            epoch_s=time.time(),
        )
        return self._serve(api_request, match, cors)

    async def _serve(
        self, api_request: ApiRequest, match: RouteMatch, cors: HeaderList
    ) -> Response:
        route = match.route
        request_id = api_request.request_id
        try:
            authorizer = await self._authorize(api_request, match)
            if isinstance(route.integration, FunctionIntegration):
                status, headers, body = await self._call_function(
                    api_request, match, route.integration, authorizer
                )
            else:
                status, headers, body = await self._proxy(api_request, match, route.integration)
        except _GatewayError as exc:
            return api_error(exc.status, request_id, cors, exc.message)
        if route.cors is not None:
            # API Gateway replaces the integration's CORS headers with the route's.
            headers = [h for h in headers if not h[0].startswith(b"access-control-")]
        if status in (204, 304) or api_request.method == "HEAD":
            body = b""
        return _response(status, headers + cors, body, request_id)

    # --- authorization ---------------------------------------------------------------------

    async def _authorize(self, api_request: ApiRequest, match: RouteMatch) -> dict[str, Any] | None:
        """The 2.0 event's ``requestContext.authorizer`` (None if there is none); raises
        ``_GatewayError`` (401, 403, 500; 429 and 503 from an API key's usage plan)."""
        auth = match.route.auth
        if auth is None:
            return None
        if isinstance(auth, ApiKeyPolicy):
            await self._check_api_key(api_request, auth)
            return None
        if isinstance(auth, JwtPolicy):
            try:
                claims = await self._jwt.verify(api_request.header(b"authorization"), auth)
            except JwtError as exc:
                log.debug("%s: JWT refused: %s", api_request.request_id, exc)
                raise _GatewayError(401) from exc
            return authorizer_context(claims)
        return {"lambda": await self._lambda_authorizer(api_request, match, auth)}

    async def _check_api_key(self, api_request: ApiRequest, policy: ApiKeyPolicy) -> None:
        key = api_request.request.headers.get(b"x-api-key")
        key_id = await self._api_keys.key_id(api_request.namespace, policy.secret_name, key)
        if key_id is None:
            raise _GatewayError(403)
        api_request.api_key_id = key_id
        if policy.throttle is None and policy.quota is None:
            return
        admission = await self._usage.admit(api_request.namespace, api_request.api, policy, key_id)
        if admission is Admission.THROTTLED:
            raise _GatewayError(429)
        if admission is Admission.OVER_QUOTA:
            raise _GatewayError(429, "Limit Exceeded")
        if admission is Admission.UNAVAILABLE:
            raise _GatewayError(503)

    async def _lambda_authorizer(
        self, api_request: ApiRequest, match: RouteMatch, policy: AuthorizerPolicy
    ) -> dict[str, Any]:
        identity = []
        query = None
        for where, name in policy.identity_sources:
            if where == "header":
                value = api_request.header(name.encode("latin-1"))
            else:
                query = query if query is not None else query_parameters(api_request.raw_query)
                value = ",".join(query[name]) if name in query else None
            if not value:
                raise _GatewayError(401)
            identity.append(value)
        key = (api_request.namespace, policy.function, policy.qualifier, tuple(identity))
        decision = self._decisions.get(key) if policy.cache_ttl_s else None
        if decision is None:
            decision = await self._ask_authorizer(api_request, match, policy, identity)
            if policy.cache_ttl_s:
                self._decisions.put(key, decision, policy.cache_ttl_s)
        if not decision.authorized:
            raise _GatewayError(403)
        return decision.context

    async def _ask_authorizer(
        self,
        api_request: ApiRequest,
        match: RouteMatch,
        policy: AuthorizerPolicy,
        identity: list[str],
    ) -> Decision:
        target = self._table.resolve(api_request.namespace, policy.function, policy.qualifier)
        if isinstance(target, RouteError):
            log.warning(
                "%s/%s: authorizer function %s: %s",
                match.route.namespace,
                match.route.name,
                policy.function,
                target.message,
            )
            raise _GatewayError(500)
        event = authorizer_event(api_request, match, ACCOUNT_ID, self._config.region, identity)
        payload = json.dumps(event, separators=(",", ":")).encode()
        response, outcome = await self._invoke(
            target, payload, api_request.request_id, match.route.timeout_s
        )
        if outcome != OK or response.status != 200:
            raise _GatewayError(500)
        try:
            result = json.loads(response.body)
        except ValueError:
            result = None
        if not isinstance(result, dict) or not isinstance(result.get("isAuthorized"), bool):
            log.warning("%s: authorizer %s gave no simple response", target.function, result)
            raise _GatewayError(500)
        context = result.get("context")
        return Decision(result["isAuthorized"], context if isinstance(context, dict) else {})

    # --- integrations ----------------------------------------------------------------------

    async def _invoke(
        self, target: Target, payload: bytes, request_id: str, timeout_s: float
    ) -> tuple[Response, str]:
        """An invocation bounded by the route's integration timeout (raises ``_GatewayError(504)``);
        past it, the invocation goes on in the background and keeps its concurrency slot."""
        if len(payload) > MAX_REQUEST_BYTES:
            raise _GatewayError(413)
        call = asyncio.ensure_future(self._invoker.invoke(target, payload, request_id))
        try:
            return await asyncio.wait_for(asyncio.shield(call), timeout_s)
        except TimeoutError:
            self._overdue.add(call)
            call.add_done_callback(self._overdue.discard)
            raise _GatewayError(504) from None

    async def _call_function(
        self,
        api_request: ApiRequest,
        match: RouteMatch,
        integration: FunctionIntegration,
        authorizer: dict[str, Any] | None,
    ) -> tuple[int, HeaderList, bytes]:
        route = match.route
        target = self._table.resolve(route.namespace, integration.name, integration.qualifier)
        if isinstance(target, RouteError):
            log.warning("%s/%s: %s", route.namespace, route.name, target.message)
            raise _GatewayError(500)
        if route.payload_version == "1.0":
            if authorizer is not None:
                # 1.0 events carry the authorizer's claims or context at the top level.
                authorizer = next(iter(authorizer.values()))
            event = v1_event(api_request, match, ACCOUNT_ID, authorizer)
        else:
            event = v2_event(api_request, match, ACCOUNT_ID, authorizer)
        payload = json.dumps(event, separators=(",", ":")).encode()
        response, outcome = await self._invoke(
            target, payload, api_request.request_id, route.timeout_s
        )
        if outcome == FUNCTION_ERROR:
            raise _GatewayError(502)
        if outcome != OK or response.status != 200:
            if response.status == 429:
                raise _GatewayError(429)
            if b"ResourceNotReadyException" in response.headers:
                raise _GatewayError(503)
            raise _GatewayError(502)
        try:
            if route.payload_version == "1.0":
                return v1_response(response.body)
            return v2_response(response.body)
        except InvalidResponse as exc:
            log.info("%s/%s: invalid function response: %s", route.namespace, route.name, exc)
            raise _GatewayError(502) from exc

    async def _proxy(
        self, api_request: ApiRequest, match: RouteMatch, integration: HttpIntegration
    ) -> tuple[int, HeaderList, bytes]:
        route = match.route
        if route.greedy is not None:
            rest = api_request.raw_path[1:].split("/")[len(route.parts) :]
            path = "/" + "/".join(rest)
        else:
            path = api_request.raw_path
        url = integration.url + path
        if api_request.raw_query:
            url += "?" + api_request.raw_query
        headers = forwarded_headers(api_request)
        headers.pop("host", None)
        headers.pop("content-length", None)
        host = api_request.header(b"host")
        if host:
            headers["x-forwarded-host"] = host
        try:
            async with self._session.request(
                api_request.method,
                URL(url, encoded=True),
                headers=headers,
                data=api_request.request.body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=route.timeout_s),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as reply:
                body = await _read_capped(reply, MAX_PAYLOAD_BYTES)
                reply_headers = [
                    (name.lower(), value)
                    for name, value in reply.raw_headers
                    if name.lower() not in HOP_BY_HOP and name.lower() != b"content-length"
                ]
                return reply.status, reply_headers, body
        except TimeoutError as exc:
            raise _GatewayError(504) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.info("%s/%s: backend %s failed: %s", route.namespace, route.name, url, exc)
            raise _GatewayError(502) from exc

    async def _fetch_json(self, url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with self._session.get(url, timeout=timeout, allow_redirects=True) as reply:
            reply.raise_for_status()
            return json.loads(await _read_capped(reply, 1024 * 1024))

    async def close(self) -> None:
        """At shutdown: wait for invocations that outlived their route's timeout."""
        if self._overdue:
            await asyncio.wait(list(self._overdue))


async def _read_capped(reply: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks = []
    size = 0
    async for chunk in reply.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _no_secrets(namespace: str, name: str) -> dict[str, Any] | None:
    raise RuntimeError("this gateway reads no Secrets (no API server connection)")


def _host(request: Request) -> str:
    host = request.headers.get(b"host", b"").decode("latin-1").lower()
    if host.startswith("["):  # [IPv6]:port
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def _response(status: int, headers: HeaderList, body: bytes, request_id: str) -> Response:
    head = b"".join(b"%s: %s\r\n" % header for header in headers)
    return Response(status, head + b"apigw-requestid: %s\r\n" % request_id.encode(), body)
