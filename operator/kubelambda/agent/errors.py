"""Lambda-shaped error bodies, for the invoke endpoint and the Runtime API."""

from __future__ import annotations

import json

MAX_RESPONSE_BYTES = 6_291_556  # Lambda's synchronous response limit (Runtime API 413 above)
MAX_REQUEST_BYTES = 6_291_456  # Lambda's synchronous request limit


def _dump(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def function_error(error_type: str, message: str) -> bytes:
    return _dump({"errorType": error_type, "errorMessage": message})


def timed_out(request_id: str, timeout_s: float) -> bytes:
    return function_error(
        "Sandbox.Timedout",
        f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds",
    )


def exited(request_id: str, how: str) -> bytes:
    """``how`` is Go's wording, e.g. 'exit status 1' or 'signal: killed'."""
    return function_error(
        "Runtime.ExitError", f"RequestId: {request_id} Error: Runtime exited with error: {how}"
    )


def exited_without_reason(request_id: str) -> bytes:
    """Lambda's wording when the runtime's exit status is unknown (external runtimes)."""
    return function_error(
        "Runtime.ExitError",
        f"RequestId: {request_id} Error: Runtime exited without providing a reason",
    )


def out_of_memory(request_id: str) -> bytes:
    return function_error(
        "Runtime.OutOfMemory",
        f"RequestId: {request_id} Error: Runtime exited with error: signal: killed",
    )


def invalid_entrypoint(request_id: str, message: str) -> bytes:
    return function_error("Runtime.InvalidEntrypoint", f"RequestId: {request_id} Error: {message}")


RESPONSE_TOO_LARGE = function_error(
    "Function.ResponseSizeTooLarge",
    f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
)

# Runtime API answers (bodies as Lambda's runtime API sends them).
STATUS_OK = b'{"status":"OK"}'
INVALID_REQUEST_ID = _dump({"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
PAYLOAD_TOO_LARGE = _dump(
    {
        "errorMessage": f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
        "errorType": "RequestEntityTooLarge",
    }
)
INVALID_STATE = _dump(
    {"errorMessage": "State transition is not allowed", "errorType": "InvalidStateTransition"}
)
NOT_FOUND = _dump({"errorMessage": "Not Found", "errorType": "NotFound"})
METHOD_NOT_ALLOWED = _dump({"errorMessage": "Method Not Allowed", "errorType": "MethodNotAllowed"})


def service_error(message: str, reason: str | None = None, kind: str = "User") -> bytes:
    """Invoke API service error body; the code goes in the ``x-amzn-ErrorType`` header."""
    body = {"Type": kind, "message": message}
    if reason is not None:
        body["Reason"] = reason
    return _dump(body)
