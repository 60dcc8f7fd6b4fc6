"""HTTP API routes: ApiRoute objects compiled into plain per-API tables, and route matching.

Pure. Each ApiRoute is validated with its pydantic model once, when the watch delivers it, and
compiled into a frozen ``Route``; requests only touch dicts, tuples and strings. An object
that fails validation is dropped (with a log line) rather than half-applied.

Matching follows API Gateway HTTP APIs: a route whose path has no greedy ``{name+}`` beats
one that has, which beats ``$default``. Among paths of one kind, the most specific wins: going
segment by segment, a literal beats a ``{param}``, and a longer greedy prefix beats a shorter
one. On the same path a named method beats ``ANY``. Parameters match one non-empty segment;
a greedy parameter matches one or more (``/{proxy+}`` does not match ``/``). Two objects with
the same route key in one API: the one whose name sorts first serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from kubelambda.api.apiroute import ApiRouteSpec, AuthType

log = logging.getLogger(__name__)

API_ROUTE = "ApiRoute"
ANY = "ANY"
DEFAULT_ROUTE_KEY = "$default"

ApiKey = tuple[str, str]  # namespace, api
ObjectKey = tuple[str, str]  # namespace, object name


@dataclass(frozen=True, slots=True)
class FunctionIntegration:
    name: str
    qualifier: str | None


@dataclass(frozen=True, slots=True)
class HttpIntegration:
    url: str  # scheme://host[:port][/base], without a trailing slash


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str]
    any_origin: bool
    methods: str  # Access-Control-Allow-Methods as configured ("" for "*": echo the request)
    method_set: frozenset[str]
    any_method: bool
    headers: frozenset[str]  # lower-case
    any_header: bool
    expose_headers: str
    credentials: bool
    max_age: int | None


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    issuer: str
    audience: frozenset[str]
    jwks_uri: str | None  # None: discovered from the issuer
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthorizerPolicy:
    function: str
    qualifier: str | None
    identity_sources: tuple[
        tuple[str, str], ...
    ]  # ("header", lower-case name) | ("querystring", name)
    raw_identity_sources: tuple[str, ...]  # as configured, for the authorizer event
    cache_ttl_s: int


@dataclass(frozen=True, slots=True)
class ApiKeyPolicy:
    secret_name: str
    throttle: tuple[float, int] | None = None  # per key: rate per second, burst
    quota: tuple[int, str] | None = None  # per key: limit, period (DAY, WEEK or MONTH)


Auth = JwtPolicy | AuthorizerPolicy | ApiKeyPolicy | None


@dataclass(frozen=True, slots=True)
class Route:
    namespace: str
    api: str
    name: str  # the ApiRoute object's name
    route_key: str
    method: str  # GET, ..., ANY; ANY for $default
    path: str  # the route's path ("/pets/{id}"), "" for $default
    parts: tuple[tuple[bool, str], ...]  # (is a parameter, literal or parameter name)
    greedy: str | None  # name of the final {name+} parameter
    integration: FunctionIntegration | HttpIntegration
    payload_version: str  # "2.0" | "1.0"
    timeout_s: float
    auth: Auth
    cors: CorsPolicy | None
    throttle: tuple[float, int] | None  # rate per second, burst

    @property
    def object_key(self) -> ObjectKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    path_parameters: dict[str, str]


def _parse_path(path: str) -> tuple[tuple[tuple[bool, str], ...], str | None]:
    parts: list[tuple[bool, str]] = []
    greedy = None
    for segment in path.strip("/").split("/") if path != "/" else ():
        if segment.startswith("{") and segment.endswith("+}"):
            greedy = segment[1:-2]
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append((True, segment[1:-1]))
        else:
            parts.append((False, segment))
    return tuple(parts), greedy


def _cors(spec: ApiRouteSpec) -> CorsPolicy | None:
    cors = spec.cors
    if cors is None:
        return None
    methods = tuple(m.upper() for m in cors.allow_methods)
    return CorsPolicy(
        origins=frozenset(o for o in cors.allow_origins if o != "*"),
        any_origin="*" in cors.allow_origins,
        methods="" if "*" in methods else ",".join(methods),
        method_set=frozenset(methods),
        any_method="*" in methods,
        headers=frozenset(h.lower() for h in cors.allow_headers if h != "*"),
        any_header="*" in cors.allow_headers,
        expose_headers=",".join(cors.expose_headers),
        credentials=cors.allow_credentials,
        max_age=cors.max_age_seconds,
    )


def _auth(spec: ApiRouteSpec) -> Auth:
    auth = spec.auth
    if auth.type is AuthType.JWT and auth.jwt is not None:
        return JwtPolicy(
            issuer=auth.jwt.issuer,
            audience=frozenset(auth.jwt.audience),
            jwks_uri=auth.jwt.jwks_uri,
            scopes=auth.jwt.scopes,
        )
    if auth.type is AuthType.FUNCTION and auth.function is not None:
        name, _, qualifier = auth.function.name.partition(":")
        sources = []
        for source in auth.function.identity_sources:
            _, where, field = source.split(".", 2)  # "$request.header.X-Token"
            sources.append((where, field.lower() if where == "header" else field))
        return AuthorizerPolicy(
            function=name,
            qualifier=qualifier or None,
            identity_sources=tuple(sources),
            raw_identity_sources=auth.function.identity_sources,
            cache_ttl_s=auth.function.cache_ttl_seconds,
        )
    if auth.type is AuthType.API_KEY and auth.api_key is not None:
        plan = auth.api_key.usage_plan
        throttle = None if plan is None else plan.throttle
        quota = None if plan is None else plan.quota
        return ApiKeyPolicy(
            auth.api_key.secret_name,
            throttle=None if throttle is None else (throttle.rate_limit, throttle.burst_limit),
            quota=None if quota is None else (quota.limit, quota.period.value),
        )
    return None


def compile_route(obj: Mapping[str, Any]) -> Route:
    """An ApiRoute object (camelCase JSON) as a ``Route``; raises pydantic's ValidationError."""
    metadata = obj.get("metadata") or {}
    spec = ApiRouteSpec.model_validate(obj.get("spec") or {})
    if spec.route_key == DEFAULT_ROUTE_KEY:
        method, path = ANY, ""
    else:
        method, path = spec.route_key.split(" ", 1)
    parts, greedy = _parse_path(path)
    target = spec.target
    integration: FunctionIntegration | HttpIntegration
    if target.function is not None:
        integration = FunctionIntegration(target.function.name, target.function.qualifier)
    else:
        assert target.http is not None  # the model requires exactly one
        url = urlsplit(target.http.url)
        integration = HttpIntegration(f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}")
    throttling = spec.throttling
    return Route(
        namespace=str(metadata.get("namespace") or ""),
        api=spec.api,
        name=str(metadata.get("name") or ""),
        route_key=spec.route_key,
        method=method,
        path=path,
        parts=parts,
        greedy=greedy,
        integration=integration,
        payload_version=spec.payload_format_version.value,
        timeout_s=spec.timeout_millis / 1000,
        auth=_auth(spec),
        cors=_cors(spec),
        throttle=None if throttling is None else (throttling.rate_limit, throttling.burst_limit),
    )


def _specificity(route: Route) -> tuple[int, tuple[bool, ...], bool]:
    """Sort key: lower sorts first and wins (see the module docstring)."""
    return (-len(route.parts), tuple(is_param for is_param, _ in route.parts), route.method == ANY)


class ApiTable:
    """The routes of one HTTP API."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.exact: dict[tuple[str, str], Route] = {}  # (method, path) of all-literal paths
        self.patterned: dict[int, list[Route]] = {}  # by segment count
        self.greedy: list[Route] = []
        self.default: Route | None = None
        seen: set[str] = set()
        for route in sorted(routes, key=lambda r: r.name):
            if route.route_key in seen:
                log.warning(
                    "%s/%s: route key %r of API %s is served by another ApiRoute",
                    route.namespace,
                    route.name,
                    route.route_key,
                    route.api,
                )
                continue
            seen.add(route.route_key)
            if route.route_key == DEFAULT_ROUTE_KEY:
                self.default = route
            elif route.greedy is not None:
                self.greedy.append(route)
            elif all(not is_param for is_param, _ in route.parts):
                self.exact[(route.method, route.path)] = route
            else:
                self.patterned.setdefault(len(route.parts), []).append(route)
        self.greedy.sort(key=_specificity)
        for candidates in self.patterned.values():
            candidates.sort(key=_specificity)

    def match(self, method: str, path: str) -> RouteMatch | None:
        route = self.exact.get((method, path)) or self.exact.get((ANY, path))
        if route is not None:
            return RouteMatch(route, {})
        segments = path[1:].split("/")
        for route in self.patterned.get(len(segments), ()):
            if route.method in (method, ANY):
                parameters = _match_parts(route.parts, segments)
                if parameters is not None:
                    return RouteMatch(route, parameters)
        for route in self.greedy:
            if route.method in (method, ANY) and len(segments) > len(route.parts):
                parameters = _match_parts(route.parts, segments)
                rest = "/".join(segments[len(route.parts) :])
                if parameters is not None and rest:
                    assert route.greedy is not None
                    parameters[route.greedy] = unquote(rest)
                    return RouteMatch(route, parameters)
        if self.default is not None:
            return RouteMatch(self.default, {})
        return None


def _match_parts(parts: tuple[tuple[bool, str], ...], segments: list[str]) -> dict[str, str] | None:
    parameters: dict[str, str] = {}
    for (is_param, value), segment in zip(parts, segments, strict=False):
        if is_param:
            if not segment:
                return None
            parameters[value] = unquote(segment)
        elif segment != value:
            return None
    return parameters


def _object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _compile_or_log(obj: Mapping[str, Any]) -> Route | None:
    try:
        return compile_route(obj)
    except ValidationError as exc:
        namespace, name = _object_key(obj)
        log.warning("%s/%s: ApiRoute ignored, invalid: %s", namespace, name, exc)
        return None


class ApiRoutes:
    """Every HTTP API's table, fed by the ApiRoute watch."""

    def __init__(self) -> None:
        self._routes: dict[ObjectKey, Route] = {}
        self._tables: dict[ApiKey, ApiTable] = {}

    def apply(self, obj: Mapping[str, Any], deleted: bool) -> None:
        key = _object_key(obj)
        old = self._routes.pop(key, None)
        new = None if deleted else _compile_or_log(obj)
        if new is not None:
            self._routes[key] = new
        for api in {(r.namespace, r.api) for r in (old, new) if r is not None}:
            self._rebuild(api)

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> None:
        self._routes.clear()
        for obj in objects:
            route = _compile_or_log(obj)
            if route is not None:
                self._routes[_object_key(obj)] = route
        by_api: dict[ApiKey, list[Route]] = {}
        for route in self._routes.values():
            by_api.setdefault((route.namespace, route.api), []).append(route)
        self._tables = {api: ApiTable(routes) for api, routes in by_api.items()}

    def _rebuild(self, api: ApiKey) -> None:
        routes = [r for r in self._routes.values() if (r.namespace, r.api) == api]
        if routes:
            self._tables[api] = ApiTable(routes)
        else:
            self._tables.pop(api, None)

    def table(self, namespace: str, api: str) -> ApiTable | None:
        return self._tables.get((namespace, api))

    def routes(self) -> Iterable[Route]:
        return self._routes.values()
