"""The invoke endpoint the gateway calls, and the pod's health check."""

from __future__ import annotations

import binascii
import json
import os
import time

from kubelambda.agent import errors, logs
from kubelambda.agent.config import AgentConfig
from kubelambda.agent.httpio import Connection, Request, Response, json_response
from kubelambda.agent.runtime import Invocation, RuntimeSlot

INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
HEALTH_PATH = "/healthz"

_READY = json_response(200, b'{"status":"ready"}')
_STARTING = json_response(503, b'{"status":"initializing"}')
_DRAINING = json_response(503, b'{"status":"shutting down"}')
_NOT_FOUND = json_response(404, b'{"message":"Not Found"}')
_NOT_ALLOWED = json_response(405, b'{"message":"Method Not Allowed"}')


def _service_error(status: int, code: str, message: str, reason: str | None = None) -> Response:
    header = f"x-amzn-ErrorType: {code}\r\n".encode()
    kind = "Service" if status >= 500 else "User"
    return json_response(status, errors.service_error(message, reason, kind), header)


_BUSY = _service_error(
    429, "TooManyRequestsException", "Rate Exceeded.", "ConcurrentInvocationLimitExceeded"
)
_SHUTTING_DOWN = _service_error(503, "ServiceException", "The function instance is shutting down.")
_TOO_LARGE = _service_error(
    413,
    "RequestEntityTooLargeException",
    f"Request must be smaller than {errors.MAX_REQUEST_BYTES} bytes"
    " for the InvokeFunction operation",
)
_BAD_CLIENT_CONTEXT = _service_error(
    400,
    "InvalidRequestContentException",
    "Client context must be a valid Base64-encoded JSON object.",
)
_BAD_DEADLINE = _service_error(
    400, "InvalidRequestContentException", "X-Kubelambda-Deadline-Ms must be epoch milliseconds."
)


class _RandomHex:
    """Random hex digits for request and trace ids, taken from the kernel 4 KiB at a time:
    one getrandom call per ~70 invocations instead of three on every invocation's path."""

    __slots__ = ("_digits", "_pos")

    def __init__(self) -> None:
        self._digits = ""
        self._pos = 0

    def take(self, count: int) -> str:
        pos = self._pos
        if pos + count > len(self._digits):
            self._digits = os.urandom(4096).hex()
            pos = 0
        self._pos = pos + count
        return self._digits[pos : pos + count]


_random = _RandomHex()
# uuid4: the variant nibble is 10xx in binary.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())``."""
    h = _random.take(32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def new_trace_id() -> str:
    root = f"1-{int(time.time()):08x}-{_random.take(24)}"
    return f"Root={root};Parent={_random.take(16)};Sampled=0"


def decode_client_context(value: str) -> str:
    """X-Amz-Client-Context (base64 JSON) -> the one-line JSON the runtime gets."""
    try:
        return json.dumps(json.loads(binascii.a2b_base64(value)), separators=(",", ":"))
    except (ValueError, binascii.Error):
        raise ValueError("invalid client context") from None


class InvokeEndpoint:
    def __init__(self, config: AgentConfig, slots: list[RuntimeSlot]) -> None:
        self._slots = slots
        self._arn = config.function_arn
        self._version_header = f"X-Amz-Executed-Version: {config.version}\r\n".encode()
        self.draining = False
        self.active = 0

    def handle(self, request: Request, conn: Connection) -> None:
        path = request.target.split("?", 1)[0]
        if path.startswith(INVOKE_PREFIX) and path.endswith(INVOKE_SUFFIX):
            if request.method != "POST":
                conn.respond(_NOT_ALLOWED)
            else:
                self._invoke(request, conn)
        elif path == HEALTH_PATH:
            conn.respond(self._health())
        else:
            conn.respond(_NOT_FOUND)

    def _health(self) -> Response:
        if self.draining:
            return _DRAINING
        # A failed init also counts as settled: invocations then return the init error,
        # as Lambda does, instead of the pod never becoming ready.
        return _READY if all(slot.settled for slot in self._slots) else _STARTING

    def _acquire(self) -> RuntimeSlot | None:
        spare = None
        for slot in self._slots:
            if slot.free:
                if slot.warm:
                    return slot
                spare = spare or slot
        return spare

    def _invoke(self, request: Request, conn: Connection) -> None:
        if self.draining:
            request.keep_alive = False
            conn.respond(_SHUTTING_DOWN)
            return
        if request.too_large:
            conn.respond(_TOO_LARGE)
            return
        headers = request.headers
        client_context = headers.get("x-amz-client-context")
        deadline = headers.get("x-kubelambda-deadline-ms")
        try:
            if client_context:
                client_context = decode_client_context(client_context)
        except ValueError:
            conn.respond(_BAD_CLIENT_CONTEXT)
            return
        try:
            deadline_ms = int(deadline) if deadline else None
        except ValueError:
            conn.respond(_BAD_DEADLINE)
            return
        slot = self._acquire()
        if slot is None:
            conn.respond(_BUSY)
            return
        inv = Invocation(
            headers.get("x-kubelambda-request-id") or new_request_id(),
            request.body or b"{}",  # Lambda hands an empty payload to the function as {}
            headers.get("x-kubelambda-invoked-arn") or self._arn,
            headers.get("x-amzn-trace-id") or new_trace_id(),
            deadline_ms=deadline_ms,
            client_context=client_context or None,
            cognito_identity=headers.get("x-kubelambda-cognito-identity"),
            tail=headers.get("x-amz-log-type", "").lower() == "tail",
            responder=conn,
            on_complete=self._completed,
        )
        self.active += 1
        slot.assign(inv)

    def _completed(self, inv: Invocation, body: bytes, function_error: bool) -> None:
        self.active -= 1
        head = b"Content-Type: application/json\r\nx-amzn-RequestId: %s\r\n%s" % (
            inv.request_id.encode(),
            self._version_header,
        )
        if function_error:
            head += b"X-Amz-Function-Error: Unhandled\r\n"
        if inv.tail is not None:
            head += b"X-Amz-Log-Result: %s\r\n" % logs.tail_header(inv.tail)
        inv.responder.respond(Response(200, head, body))
