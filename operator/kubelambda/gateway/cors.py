"""CORS as API Gateway HTTP APIs do it: preflight answered by the gateway, headers added to
actual responses (and the integration's own ``access-control-*`` headers dropped).

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered 204;
the ``Access-Control-Allow-*`` headers are there only when the origin, the method and every
requested header are allowed, so a browser refuses anything else. ``*`` in allowOrigins sends
``*``; ``*`` in allowMethods or allowHeaders echoes what the browser asked for.
"""

from __future__ import annotations

from kubelambda.gateway.apiroutes import CorsPolicy

Headers = list[tuple[bytes, bytes]]


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    return policy.any_origin or origin in policy.origins


def _origin_headers(policy: CorsPolicy, origin: str) -> Headers:
    # The model refuses "*" with credentials: "*" never reflects the caller's origin.
    if policy.any_origin:
        headers = [(b"access-control-allow-origin", b"*")]
    else:
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin")]
    if policy.credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers


def preflight_headers(
    policy: CorsPolicy, origin: str, method: str, request_headers: str | None
) -> Headers:
    """The CORS headers of a preflight's 204 answer; none when the request is not allowed."""
    if not origin_allowed(policy, origin):
        return []
    method = method.upper()
    if not (policy.any_method or method in policy.method_set):
        return []
    requested = [h.strip() for h in (request_headers or "").split(",") if h.strip()]
    if not policy.any_header and any(h.lower() not in policy.headers for h in requested):
        return []
    headers = _origin_headers(policy, origin)
    headers.append((b"access-control-allow-methods", (policy.methods or method).encode()))
    if requested:
        allowed = ",".join(requested) if policy.any_header else ",".join(sorted(policy.headers))
        headers.append((b"access-control-allow-headers", allowed.encode("latin-1")))
    if policy.max_age is not None:
        headers.append((b"access-control-max-age", str(policy.max_age).encode()))
    return headers


def response_headers(policy: CorsPolicy, origin: str | None) -> Headers:
    """CORS headers for an actual (non-preflight) response."""
    if origin is None or not origin_allowed(policy, origin):
        return []
    headers = _origin_headers(policy, origin)
    if policy.expose_headers:
        headers.append((b"access-control-expose-headers", policy.expose_headers.encode()))
    return headers
