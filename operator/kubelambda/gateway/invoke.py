"""The Lambda Invoke API, health endpoints and the path from a request to a function pod.

Synchronous invocations take a slot (``concurrency``) and forward to the pod's agent with the
request id, invoked ARN and deadline; the agent's status, body and ``X-Amz-*`` headers are
relayed as they are. The common case (a slot at once, a pod with a free slot and an idle
connection to it) runs on callbacks alone; anything else (waiting for a pod, connecting, a
busy or draining agent) on a coroutine. Everything answered here (not by a function) is a
Lambda service error: ``x-amzn-ErrorType`` plus ``{"Type": ..., "message": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote

from kubelambda.gateway.auth import AcceptAll, Authenticator
from kubelambda.gateway.concurrency import ConcurrencyCounter, Dispatcher, QueueFull, Slot
from kubelambda.gateway.config import GatewayConfig
from kubelambda.gateway.httpserver import (
    INTERNAL_ERROR,
    Deferred,
    Handler,
    HandlerResult,
    Request,
    Response,
    json_response,
)
from kubelambda.gateway.metrics import FUNCTION_ERROR, OK, SERVICE_ERROR, GatewayMetrics
from kubelambda.gateway.publisher import AsyncInvocation, AsyncPublisher, PublishRejected
from kubelambda.gateway.routing import MAX_TIMEOUT_S, Address, RouteError, RoutingTable, Target
from kubelambda.gateway.upstream import (
    NotDelivered,
    Reply,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from kubelambda.gateway.waker import NoopWaker, Waker

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 6_291_456  # Lambda's synchronous request limit
REQUEST_ID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_EVENT_BYTES = 262_144  # Lambda's asynchronous request limit (256 KiB)

INVOKE_PREFIX = b"/2015-03-31/functions/"
INVOKE_SUFFIX = b"/invocations"
NAMESPACE_PREFIX = b"/namespaces/"

# Agent response headers the caller gets; the request id is the gateway's own (the same value).
RELAYED_HEADERS = frozenset(
    (
        b"content-type",
        b"x-amz-executed-version",
        b"x-amz-function-error",
        b"x-amz-log-result",
        b"x-amzn-errortype",
        b"retry-after",
    )
)
PASSED_HEADERS = (b"x-amz-log-type", b"x-amz-client-context", b"x-amzn-trace-id")

RATE_EXCEEDED = "Rate Exceeded."
# Between tries of a pod whose agent said all its slots were busy (first, most).
_BUSY_BACKOFF_S = (0.005, 0.1)
# Every pod busy and the wait queue full, or the wait timed out: scaling did not keep up.
SCALING_LIMIT = "FunctionInvocationRateLimitExceeded"

_HEALTHY = json_response(200, b'{"status":"ok"}')
_READY = json_response(200, b'{"status":"ready"}')
_NOT_SYNCED = json_response(503, b'{"status":"routing state not synced yet"}')
_DRAINING = json_response(503, b'{"status":"shutting down"}')


def service_error(
    status: int, code: str, message: str, request_id: str, reason: str | None = None
) -> Response:
    body: dict[str, str] = {"Type": "Service" if status >= 500 else "User", "message": message}
    if reason is not None:
        body["Reason"] = reason
    headers = f"x-amzn-ErrorType: {code}\r\nx-amzn-RequestId: {request_id}\r\n".encode()
    return json_response(status, json.dumps(body).encode(), headers)


NO_PUBLISHER = (
    501,
    "ServiceException",
    "Asynchronous (Event) invocation is not available: this gateway has no event queue configured.",
)


def caller_request_id(request: Request) -> str | None:
    """The invoker replays an Event under the request id its caller got with the 202, so logs,
    records and the DLQ line up; anything but a well-formed id is ignored."""
    value = request.headers.get(b"x-kubelambda-request-id")
    if value is None or REQUEST_ID_RE.fullmatch(value) is None:
        return None
    return value.decode()


def new_request_id() -> str:
    """A random UUID-shaped id (a third of ``str(uuid.uuid4())``'s cost, on every request)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _valid_json(body: bytes) -> bool:
    try:
        # Decoding first skips json's encoding detection for bytes (Lambda takes UTF-8 only).
        json.loads(body.decode())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


_NONE_EXCLUDED: frozenset[Address] = frozenset()


@dataclass(slots=True)
class _Call:
    """A synchronous invocation on the fast path, while its pod works on it."""

    target: Target
    slot: Slot
    payload: bytes
    passed: bytes
    request_id: str
    started: float
    address: Address


class InvokeApi:
    def __init__(
        self,
        config: GatewayConfig,
        table: RoutingTable,
        *,
        counter: ConcurrencyCounter,
        dispatcher: Dispatcher,
        pool: UpstreamPool,
        metrics: GatewayMetrics,
        waker: Waker | None = None,
        publisher: AsyncPublisher | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._config = config
        self._table = table
        self._counter = counter
        self._dispatcher = dispatcher
        self._pool = pool
        self._metrics = metrics
        self._waker = waker or NoopWaker()
        self._publisher = publisher
        self._authenticator = authenticator or AcceptAll()
        self._resumed: set[asyncio.Task[None]] = set()  # calls moved off the fast path
        self._loop = asyncio.get_running_loop()
        self.synced = False
        self.draining = False
        # Requests for anything but the Invoke API and health checks (the HTTP APIs).
        self.fallback: Handler | None = None

    # --- routing of paths ------------------------------------------------------------------

    def handle(self, request: Request) -> HandlerResult:
        path, _, query = request.url.partition(b"?")
        if path == b"/healthz":
            return _HEALTHY
        if path == b"/readyz":
            return _DRAINING if self.draining else _READY if self.synced else _NOT_SYNCED
        namespace = self._config.default_namespace
        if path.startswith(NAMESPACE_PREFIX):
            raw_namespace, _, rest = path[len(NAMESPACE_PREFIX) :].partition(b"/")
            namespace = raw_namespace.decode("latin-1")
            path = b"/" + rest
        if (
            path.startswith(INVOKE_PREFIX)
            and path.endswith(INVOKE_SUFFIX)
            and len(path) > len(INVOKE_PREFIX) + len(INVOKE_SUFFIX)
            and namespace
        ):
            if request.method != b"POST":
                return self._reject(405, "MethodNotAllowedException", "Method Not Allowed")
            name = path[len(INVOKE_PREFIX) : -len(INVOKE_SUFFIX)]
            return self._invoke(request, namespace, unquote(name.decode("latin-1")), query)
        if self.fallback is not None:
            return self.fallback(request)
        return self._reject(404, "UnknownOperationException", "Unknown operation")

    def _reject(self, status: int, code: str, message: str, reason: str | None = None) -> Response:
        self._metrics.rejected(code)
        return service_error(status, code, message, new_request_id(), reason)

    # --- the Invoke operation --------------------------------------------------------------

    def _invoke(self, request: Request, namespace: str, name: str, query: bytes) -> HandlerResult:
        verdict = self._authenticator.authenticate(request, namespace)
        if verdict is None:
            return self._authenticated(request, namespace, name, query)
        if isinstance(verdict, Response):
            return verdict
        return self._once_authenticated(verdict, request, namespace, name, query)

    async def _once_authenticated(
        self,
        verdict: Coroutine[Any, Any, Response | None],
        request: Request,
        namespace: str,
        name: str,
        query: bytes,
    ) -> Response:
        denied = await verdict
        if denied is not None:
            return denied
        result = self._authenticated(request, namespace, name, query)
        if isinstance(result, Response):
            return result
        return await (result.wait() if isinstance(result, Deferred) else result)

    def _authenticated(
        self, request: Request, namespace: str, name: str, query: bytes
    ) -> HandlerResult:
        invocation_type = request.headers.get(b"x-amz-invocation-type", b"RequestResponse")
        limit = MAX_EVENT_BYTES if invocation_type == b"Event" else MAX_REQUEST_BYTES
        if request.too_large or len(request.body) > limit:
            return self._reject(
                413,
                "RequestEntityTooLargeException",
                f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
            )
        qualifier = None
        if query:
            values = parse_qs(query.decode("latin-1")).get("Qualifier")
            qualifier = values[-1] if values else None
        target = self._table.resolve(namespace, name, qualifier)
        if isinstance(target, RouteError):
            return self._reject(target.status, target.code, target.message)
        if invocation_type == b"DryRun":
            return Response(204, b"x-amzn-RequestId: %s\r\n" % new_request_id().encode(), b"")
        if invocation_type not in (b"RequestResponse", b"Event"):
            return self._reject(
                400,
                "InvalidParameterValueException",
                "InvocationType must be one of RequestResponse, Event or DryRun",
            )
        body = request.body
        if body and not _valid_json(body):
            return self._reject(
                400,
                "InvalidRequestContentException",
                "Could not parse request body into json: the payload is not valid JSON",
            )
        request_id = caller_request_id(request) or new_request_id()
        if invocation_type == b"Event":
            return self._queue_event(request, target, request_id)
        admitted = self._counter.try_acquire(target.function_key, target.config.reserved)
        if isinstance(admitted, str):
            return self._throttled(target, admitted, request_id)
        headers = request.headers
        passed = b"".join(
            b"%s: %s\r\n" % (name, headers[name]) for name in PASSED_HEADERS if name in headers
        )
        if isinstance(admitted, int):
            sent = self._send_now(target, admitted, request.body, passed, request_id)
            if sent is not None:
                return sent
        return self._call(target, admitted, request.body, passed, request_id)

    async def invoke(
        self, target: Target, payload: bytes, request_id: str, passed: bytes = b""
    ) -> tuple[Response, str]:
        """A synchronous invocation on behalf of another front end (the HTTP APIs): the
        concurrency caps, pod choice and waits of the Invoke API. Its answer as the Invoke API
        would give it, and the outcome (``metrics.OK``, ``FUNCTION_ERROR``, ``SERVICE_ERROR``).
        ``passed``: encoded header lines for the agent (``X-Amzn-Trace-Id``)."""
        admitted = self._counter.try_acquire(target.function_key, target.config.reserved)
        if not isinstance(admitted, int | str):
            admitted = await admitted
        if isinstance(admitted, str):
            return self._throttled(target, admitted, request_id), SERVICE_ERROR
        return await self._run(target, payload, passed, request_id, admitted)

    def _throttled(self, target: Target, reason: str, request_id: str) -> Response:
        self._metrics.throttled(target.function_key, reason)
        return service_error(429, "TooManyRequestsException", RATE_EXCEEDED, request_id, reason)

    def _queue_event(self, request: Request, target: Target, request_id: str) -> HandlerResult:
        if self._publisher is None:
            status, code, message = NO_PUBLISHER
            return self._reject(status, code, message)
        headers = request.headers
        client_context = headers.get(b"x-amz-client-context")
        trace_id = headers.get(b"x-amzn-trace-id")
        invocation = AsyncInvocation(
            request_id=request_id,
            namespace=target.namespace,
            function=target.function,
            qualifier=target.qualifier,
            payload=request.body,
            received_ms=int(time.time() * 1000),
            client_context=client_context.decode("latin-1") if client_context else None,
            trace_id=trace_id.decode("latin-1") if trace_id else None,
        )
        return self._publish(self._publisher, invocation, target)

    async def _publish(
        self, publisher: AsyncPublisher, invocation: AsyncInvocation, target: Target
    ) -> Response:
        try:
            await publisher.publish(invocation)
        except PublishRejected as exc:
            if exc.throttled:
                self._metrics.throttled(target.function_key, SCALING_LIMIT)
                return service_error(
                    429, "TooManyRequestsException", str(exc), invocation.request_id, SCALING_LIMIT
                )
            return self._reject(503, "ServiceException", str(exc))
        self._metrics.queued_event(target.key)
        return Response(202, b"x-amzn-RequestId: %s\r\n" % invocation.request_id.encode(), b"")

    async def _call(
        self,
        target: Target,
        admitted: Slot | Awaitable[Slot | str],
        payload: bytes,
        passed: bytes,
        request_id: str,
    ) -> Response:
        """A synchronous invocation that passed the concurrency caps, or whose caps answer after
        a round trip (a reserved cap shared by the gateway replicas)."""
        slot = admitted if isinstance(admitted, int) else await admitted
        if isinstance(slot, str):
            return self._throttled(target, slot, request_id)
        response, _ = await self._run(target, payload, passed, request_id, slot)
        return response

    def _send_now(
        self, target: Target, slot: Slot, payload: bytes, passed: bytes, request_id: str
    ) -> Deferred | None:
        """The fast path: a pod with a free slot and an idle connection to it, now. None,
        having taken nothing, when there is not."""
        key = target.key
        address = self._dispatcher.try_acquire(key, target.config.per_instance, _NONE_EXCLUDED)
        if address is None:
            return None
        answer = Deferred()
        started = self._loop.time()
        head, limit = self._request_head(address, payload, passed, target, request_id)
        call = _Call(target, slot, payload, passed, request_id, started, address)
        if not self._pool.try_send(
            address, head, payload, limit, partial(self._replied, call, answer)
        ):
            self._dispatcher.release(key, address)
            return None
        return answer

    def _replied(self, call: _Call, answer: Deferred, reply: Reply) -> None:
        """The fast path's answer from the pod, as ``_dispatch`` would take it; a busy (429) or
        draining (503) agent, or a connection lost before the request went out, hands the call
        to ``_dispatch`` itself. Runs inside the upstream parser's callback, which would
        swallow an exception: the caller is answered whatever happens."""
        target = call.target
        response, outcome = INTERNAL_ERROR, SERVICE_ERROR
        try:
            if isinstance(reply, UpstreamResponse) and reply.status == 429:
                self._resume(call, answer, busy=(call.address, reply))  # its slot stays held
                return
            self._dispatcher.release(target.key, call.address)
            if isinstance(reply, UpstreamError):
                response = self._failed_upstream(target, reply)
            elif isinstance(reply, NotDelivered):
                log.info("%s/%s: %s; trying again", target.namespace, target.function, reply)
                self._resume(call, answer)
                return
            elif reply.status == 503:  # shutting down, the request not taken: another pod
                self._resume(call, answer, exclude={call.address})
                return
            else:
                response, outcome = self._relay(reply, call.request_id)
        except Exception:
            log.exception("relaying an invocation's answer failed")
        try:
            self._counter.release(target.function_key, call.slot)
            self._metrics.invoked(target.key, outcome, self._loop.time() - call.started)
        except Exception:
            log.exception("releasing an invocation failed")
        answer.resolve(response)

    def _resume(
        self,
        call: _Call,
        answer: Deferred,
        *,
        exclude: set[Address] | None = None,
        busy: tuple[Address, UpstreamResponse] | None = None,
    ) -> None:
        task = self._loop.create_task(self._resumed_call(call, answer, exclude, busy))
        self._resumed.add(task)
        task.add_done_callback(self._resumed.discard)

    async def _resumed_call(
        self,
        call: _Call,
        answer: Deferred,
        exclude: set[Address] | None,
        busy: tuple[Address, UpstreamResponse] | None,
    ) -> None:
        response = INTERNAL_ERROR
        try:
            response, _ = await self._run(
                call.target,
                call.payload,
                call.passed,
                call.request_id,
                call.slot,
                exclude=exclude,
                started=call.started,
                busy=busy,
            )
        except Exception:
            log.exception("invocation failed")
        finally:  # cancelled too (shutdown): the caller gets its 500 rather than nothing
            answer.resolve(response)

    async def _run(
        self,
        target: Target,
        payload: bytes,
        passed: bytes,
        request_id: str,
        slot: Slot,
        *,
        exclude: set[Address] | None = None,
        started: float | None = None,
        busy: tuple[Address, UpstreamResponse] | None = None,
    ) -> tuple[Response, str]:
        """Runs an admitted invocation and releases its ``slot`` (``busy``: see
        ``_dispatch``)."""
        if started is None:
            started = self._loop.time()
        outcome = SERVICE_ERROR
        try:
            response, outcome = await self._dispatch(
                target, payload, passed, request_id, started, exclude=exclude or set(), busy=busy
            )
            return response, outcome
        finally:
            self._counter.release(target.function_key, slot)
            self._metrics.invoked(target.key, outcome, self._loop.time() - started)

    async def _dispatch(
        self,
        target: Target,
        payload: bytes,
        passed: bytes,
        request_id: str,
        started: float,
        *,
        exclude: set[Address],
        busy: tuple[Address, UpstreamResponse] | None = None,
    ) -> tuple[Response, str]:
        """``exclude``: pods that refused this request (it was not delivered there); ``busy``:
        a pod whose slot this call holds, and its agent's 429 (from the fast path)."""
        key = target.key
        per_instance = target.config.per_instance
        while True:
            reply: UpstreamResponse | None = None
            if busy is not None:
                (address, reply), busy = busy, None
            else:
                acquired = self._dispatcher.try_acquire(key, per_instance, exclude)
                if acquired is None:
                    waited = await self._wait_for_pod(target, exclude, started, request_id)
                    if isinstance(waited, Response):
                        return waited, SERVICE_ERROR
                    acquired = waited
                address = acquired
            try:
                if reply is None:
                    reply = await self._send(address, payload, passed, target, request_id)
                busy_backoff = _BUSY_BACKOFF_S[0]
                # As long as a call waits for a new instance: the autoscaler is adding one.
                busy_limit = max(
                    target.timeout_s or target.config.timeout_s, self._config.cold_start_s
                )
                while reply.status == 429 and self._loop.time() - started < busy_limit:
                    # Every slot of the pod was taken by calls of another gateway replica (each
                    # counts only its own): not started there. Another pod with a free slot, else
                    # this one again after a pause; the slot stays held meanwhile, so the call
                    # counts as demand for the autoscaler, like any call waiting for an instance.
                    other = self._dispatcher.try_acquire(key, per_instance, exclude | {address})
                    if other is None:
                        await asyncio.sleep(busy_backoff)
                        busy_backoff = min(busy_backoff * 2, _BUSY_BACKOFF_S[1])
                    else:
                        self._dispatcher.release(key, address)
                        address = other
                    reply = await self._send(address, payload, passed, target, request_id)
            except NotDelivered as exc:
                log.info("%s/%s: %s; trying another pod", target.namespace, target.function, exc)
                exclude.add(address)
                self._table.unannounce(key, address)
                continue
            except UpstreamError as exc:
                return self._failed_upstream(target, exc), SERVICE_ERROR
            finally:
                self._dispatcher.release(key, address)
            if reply.status == 503:  # the agent is shutting down and did not take the request
                exclude.add(address)
                continue
            return self._relay(reply, request_id)

    def _failed_upstream(self, target: Target, exc: UpstreamError) -> Response:
        """The answer to a call whose pod failed after the request was sent (it may have
        run): no answer in time, or the connection lost or answered with garbage."""
        if isinstance(exc, UpstreamTimeout):
            return self._reject(
                502, "ServiceException", "The function's pod did not answer in time."
            )
        log.warning("%s/%s: %s", target.namespace, target.function, exc)
        return self._reject(502, "ServiceException", "The function's pod failed to answer.")

    async def _wait_for_pod(
        self, target: Target, exclude: set[Address], started: float, request_id: str
    ) -> Address | Response:
        """Every pod busy (or none ready): wait in the version's queue, bounded."""
        pods = [a for a in self._table.endpoints(target.key) if a not in exclude]
        busy_limit: float = target.timeout_s or target.config.timeout_s
        if pods:
            limit = busy_limit
        else:
            self._waker.wake(target.namespace, target.function, target.version)
            limit = max(busy_limit, self._config.cold_start_s)
        remaining = started + limit - self._loop.time()
        try:
            address = await self._dispatcher.wait(
                target.key, target.config.per_instance, exclude, max(remaining, 0.0)
            )
        except QueueFull:
            address = None
        if address is not None:
            if not pods:
                self._metrics.cold_start(target.key, self._loop.time() - started)
            return address
        if any(a not in exclude for a in self._table.endpoints(target.key)):
            self._metrics.throttled(target.function_key, SCALING_LIMIT)
            return service_error(
                429, "TooManyRequestsException", RATE_EXCEEDED, request_id, SCALING_LIMIT
            )
        return self._reject(
            502,
            "ResourceNotReadyException",
            f"Function {target.function}:{target.version} has no ready instance"
            f" (waited {self._loop.time() - started:.1f} s).",
        )

    async def _send(
        self, address: Address, payload: bytes, passed: bytes, target: Target, request_id: str
    ) -> UpstreamResponse:
        head, limit = self._request_head(address, payload, passed, target, request_id)
        return await self._pool.request(address, head, payload, limit)

    def _request_head(
        self, address: Address, payload: bytes, passed: bytes, target: Target, request_id: str
    ) -> tuple[bytes, float]:
        """The agent's request head (ending with the blank line), and how long to wait for
        its answer."""
        timeout = target.timeout_s
        head = (
            b"POST /2015-03-31/functions/%s/invocations HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Content-Length: %d\r\n"
            b"X-Kubelambda-Request-Id: %s\r\n"
            b"X-Kubelambda-Invoked-Arn: %s\r\n"
            % (
                target.function.encode(),
                address[0].encode(),
                address[1],
                len(payload),
                request_id.encode(),
                target.invoked_arn.encode(),
            )
        )
        if timeout is not None:
            # Unknown for a published version whose status lacks it: the agent then counts
            # its own timeout from when the runtime takes the event.
            head += b"X-Kubelambda-Deadline-Ms: %d\r\n" % int((time.time() + timeout) * 1000)
        limit: float = timeout if timeout is not None else MAX_TIMEOUT_S
        limit += self._config.timeout_grace_s
        return head + passed + b"\r\n", limit

    def _relay(self, reply: UpstreamResponse, request_id: str) -> tuple[Response, str]:
        outcome = OK
        head = b"x-amzn-RequestId: %s\r\n" % request_id.encode()
        for name, value in reply.headers:
            if name in RELAYED_HEADERS:
                head += b"%s: %s\r\n" % (name, value)
                if name == b"x-amz-function-error":
                    outcome = FUNCTION_ERROR
        if reply.status >= 500:
            outcome = SERVICE_ERROR
        return Response(reply.status, head, reply.body), outcome
