"""The ``ApiRoute`` kind: one API Gateway HTTP API route in front of a function or HTTP backend."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubelambda.api.base import (
    AGE_COLUMN,
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    FUNCTION_REF_PATTERN,
    READY_COLUMN,
    ApiModel,
    Condition,
    KindInfo,
    ObjectMeta,
    ObjectName,
    PrinterColumn,
)
from kubelambda.api.cel import CelRule, cel_rules, count_set, require
from kubelambda.api.code import HttpUrl

ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
_STATIC_SEGMENT = r"[A-Za-z0-9._~:@!$&'()*+,;=-]+"
_PARAM = r"\{[A-Za-z_][A-Za-z0-9_]*\}"
_GREEDY_PARAM = r"\{[A-Za-z_][A-Za-z0-9_]*\+\}"
# "/" alone, or static / {param} segments optionally followed by one final greedy {name+}.
_PATH = rf"(/|(/({_STATIC_SEGMENT}|{_PARAM}))+(/{_GREEDY_PARAM})?|/{_GREEDY_PARAM})"
ROUTE_KEY_PATTERN = rf"^(\$default|({'|'.join(ROUTE_METHODS)}) {_PATH})$"

HEADER_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
IDENTITY_SOURCE_PATTERN = r"^\$request\.(header|querystring)\.[A-Za-z0-9!#$%&'*+.^_`|~-]+$"

ONE_TARGET = CelRule(
    rule=count_set("function", "http") + " == 1",
    message="target sets exactly one of function or http",
)
JWT_MATCHES_TYPE = CelRule(
    rule="(self.type == 'JWT') == has(self.jwt)",
    message="auth.jwt must be set when auth.type is JWT, and only then",
)
FUNCTION_MATCHES_TYPE = CelRule(
    rule="(self.type == 'FUNCTION') == has(self.function)",
    message="auth.function must be set when auth.type is FUNCTION, and only then",
)
API_KEY_MATCHES_TYPE = CelRule(
    rule="(self.type == 'API_KEY') == has(self.apiKey)",
    message="auth.apiKey must be set when auth.type is API_KEY, and only then",
)
CREDENTIALS_NEED_ORIGINS = CelRule(
    rule="!self.allowCredentials || !has(self.allowOrigins) || !('*' in self.allowOrigins)",
    message="cors.allowCredentials cannot be combined with allowOrigins '*'",
)

CorsMethod = Annotated[
    str, Field(pattern=rf"^(\*|{'|'.join(m for m in ROUTE_METHODS if m != 'ANY')})$")
]
IdentitySource = Annotated[str, Field(max_length=256, pattern=IDENTITY_SOURCE_PATTERN)]
HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=HEADER_PATTERN)]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]


class FunctionTarget(ApiModel):
    """A Function in the route's namespace."""

    name: ObjectName
    """Function name."""
    qualifier: str | None = Field(default=None, pattern=r"^(\$LATEST|[A-Za-z0-9_-]{1,128})$")
    """Version or alias to invoke; $LATEST when unset."""


class HttpTarget(ApiModel):
    """An HTTP backend the request is proxied to."""

    url: HttpUrl
    """Base URL; the request path is appended."""


class RouteTarget(ApiModel):
    """Exactly one of function or http."""

    model_config = ConfigDict(json_schema_extra=cel_rules(ONE_TARGET))

    function: FunctionTarget | None = None
    http: HttpTarget | None = None

    @model_validator(mode="after")
    def _check_one(self) -> Self:
        require((self.function is None) != (self.http is None), ONE_TARGET)
        return self


class PayloadFormat(StrEnum):
    """API Gateway payload format: 1.0 is the REST proxy event, 2.0 the HTTP API event."""

    V1 = "1.0"
    V2 = "2.0"


class AuthType(StrEnum):
    NONE = "NONE"
    API_KEY = "API_KEY"
    JWT = "JWT"
    FUNCTION = "FUNCTION"


class JwtAuth(ApiModel):
    """Bearer JWT checked against the issuer's keys (RSA), iss, aud, exp, nbf and scopes."""

    issuer: HttpUrl
    """Expected iss claim; also where OpenID discovery starts when jwksUri is unset."""
    audience: tuple[ShortText, ...] = Field(min_length=1, max_length=16)
    """Accepted aud (or client_id) values."""
    jwks_uri: HttpUrl | None = None
    """URL of the JSON Web Key Set; discovered from the issuer when unset."""
    scopes: tuple[ShortText, ...] = Field(default=(), max_length=16)
    """Scopes the token must carry (any one of them), as in API Gateway."""


class FunctionAuthorizer(ApiModel):
    """A function returning the simple response {"isAuthorized": bool, "context": {...}}."""

    name: str = Field(max_length=181, pattern=FUNCTION_REF_PATTERN)
    """Authorizer function as name or name:qualifier."""
    identity_sources: tuple[IdentitySource, ...] = Field(
        default=("$request.header.Authorization",), min_length=1, max_length=8
    )
    """Request parts ($request.header.X or $request.querystring.x) that identify the
    caller: the cache key, and the request is denied when one is missing."""
    cache_ttl_seconds: int = Field(default=0, ge=0, le=3600)
    """How long a decision is cached per identity; 0 disables caching."""


class Throttling(ApiModel):
    """Token bucket: rateLimit tokens per second, at most burstLimit."""

    rate_limit: float = Field(ge=0)
    """Steady-state requests per second."""
    burst_limit: int = Field(ge=0)
    """Bucket size."""


class QuotaPeriod(StrEnum):
    """Quota period, in UTC: a calendar day, an ISO week (from Monday) or a calendar month."""

    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


class Quota(ApiModel):
    """Requests one API key may make per period, counted across every gateway replica."""

    limit: int = Field(ge=1, le=1_000_000_000)
    """Requests per period and key."""
    period: QuotaPeriod
    """When the count starts again."""


class UsagePlan(ApiModel):
    """Limits applied to each API key on its own, as API Gateway's usage plans do."""

    throttle: Throttling | None = None
    """Token bucket per key (per gateway replica, like route throttling)."""
    quota: Quota | None = None
    """Requests per key and period; over it the key gets 429 "Limit Exceeded"."""


class ApiKeyAuth(ApiModel):
    """Keys sent in the x-api-key header."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Secret in the route's namespace: each data entry is one API key, its name the key's id
    (what usage is counted by), its value the key."""
    usage_plan: UsagePlan | None = None
    """Throttle and quota per key. A key's quota count covers every route of the API that
    names this Secret; give those routes the same plan."""


class RouteAuth(ApiModel):
    """Who may call the route; the block matching type must be set, and only that one."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(JWT_MATCHES_TYPE, FUNCTION_MATCHES_TYPE, API_KEY_MATCHES_TYPE)
    )

    type: AuthType = AuthType.NONE
    """Authorization mechanism."""
    jwt: JwtAuth | None = None
    """Settings for type JWT."""
    function: FunctionAuthorizer | None = None
    """Settings for type FUNCTION."""
    api_key: ApiKeyAuth | None = None
    """Settings for type API_KEY."""

    @model_validator(mode="after")
    def _check_matching_block(self) -> Self:
        require((self.type is AuthType.JWT) == (self.jwt is not None), JWT_MATCHES_TYPE)
        require(
            (self.type is AuthType.FUNCTION) == (self.function is not None), FUNCTION_MATCHES_TYPE
        )
        require((self.type is AuthType.API_KEY) == (self.api_key is not None), API_KEY_MATCHES_TYPE)
        return self


class Cors(ApiModel):
    """CORS headers; the gateway answers preflight requests itself."""

    model_config = ConfigDict(json_schema_extra=cel_rules(CREDENTIALS_NEED_ORIGINS))

    allow_origins: tuple[ShortText, ...] = Field(default=(), max_length=64)
    """Allowed origins, or "*"."""
    allow_methods: tuple[CorsMethod, ...] = Field(default=(), max_length=16)
    """Allowed methods, or "*"."""
    allow_headers: tuple[HeaderName, ...] = Field(default=(), max_length=64)
    """Allowed request headers, or "*"."""
    expose_headers: tuple[HeaderName, ...] = Field(default=(), max_length=64)
    """Response headers exposed to the browser."""
    allow_credentials: bool = False
    """Send Access-Control-Allow-Credentials: true."""
    max_age_seconds: int | None = Field(default=None, ge=0, le=86400)
    """How long browsers may cache a preflight response."""

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        require(
            not (self.allow_credentials and "*" in self.allow_origins), CREDENTIALS_NEED_ORIGINS
        )
        return self


class ApiRouteSpec(ApiModel):
    """Desired state of an ApiRoute."""

    api: str = Field(default="default", max_length=63, pattern=DNS_LABEL_PATTERN)
    """HTTP API the route belongs to; routes of one API share a host/base path."""
    route_key: str = Field(max_length=512, pattern=ROUTE_KEY_PATTERN)
    """$default or METHOD /path; METHOD is GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or
    ANY; path segments are static, {param}, or a final greedy {name+}."""
    target: RouteTarget
    """Integration the request goes to."""
    payload_format_version: PayloadFormat = PayloadFormat.V2
    """Event format sent to a function target."""
    timeout_millis: int = Field(default=30000, ge=50, le=30000)
    """Integration timeout."""
    auth: RouteAuth = RouteAuth()
    """Authorization."""
    cors: Cors | None = None
    """CORS configuration."""
    throttling: Throttling | None = None
    """Route-level rate limit."""


class ApiRouteStatus(ApiModel):
    """Observed state of an ApiRoute, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0)
    """metadata.generation the status reflects."""
    conditions: tuple[Condition, ...] = Field(default=(), json_schema_extra=CONDITIONS_LIST)
    """Ready and friends, one per type."""
    url: str | None = Field(default=None, max_length=2048)
    """Where the route is served (for greedy or parameterised paths, the URL of its prefix)."""


class ApiRoute(ApiModel):
    """An API Gateway (HTTP API) route."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["ApiRoute"] = "ApiRoute"
    metadata: ObjectMeta
    spec: ApiRouteSpec
    status: ApiRouteStatus | None = None


API_ROUTE_KIND = KindInfo(
    kind="ApiRoute",
    plural="apiroutes",
    short_names=("fnroute",),
    resource=ApiRoute,
    spec=ApiRouteSpec,
    status=ApiRouteStatus,
    columns=(
        PrinterColumn("API", "string", ".spec.api"),
        PrinterColumn("Route", "string", ".spec.routeKey"),
        PrinterColumn("Function", "string", ".spec.target.function.name"),
        READY_COLUMN,
        PrinterColumn("URL", "string", ".status.url", priority=1),
        AGE_COLUMN,
    ),
)
