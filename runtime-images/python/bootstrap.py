"""kubelambda's Python runtime: a Lambda Runtime API client loop (standard library only).

Behaves like AWS's Python runtime (awslambdaric): ``_HANDLER`` is ``module.function`` (the
module path may use dots or slashes), init failures are reported as
``Runtime.ImportModuleError`` / ``Runtime.HandlerNotFound`` / ``Runtime.UserCodeSyntaxError``
..., results are JSON-encoded (Decimal as a number, top-level bytes returned raw), unhandled
exceptions are reported as ``{errorMessage, errorType, requestId, stackTrace}`` and logged as
an ``[ERROR]`` line.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, BinaryIO

Headers = dict[str, str]
Error = dict[str, Any]

_API_BASE = "/2018-06-01/runtime"
_ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
_ERROR_LOG_LINE_TERMINATE = "\r"
_ERROR_LOG_IDENT = "\u00a0"
_UNHANDLED_WARNING = (
    "LAMBDA_WARNING: Unhandled exception. The most likely cause is an issue in the function code. "
    "However, in rare cases, a Lambda runtime update can cause unexpected function behavior. "
    "For functions using managed runtimes, runtime updates can be triggered by a function change, "
    "or can be applied automatically. To determine if the runtime has been updated, check the "
    "runtime version in the INIT_START log entry. If this error correlates with a change in the "
    "runtime version, you may be able to mitigate this error by temporarily rolling back to the "
    "previous runtime version. For more information, see "
    "https://docs.aws.amazon.com/lambda/latest/dg/runtimes-update.html\r"
)

# The current request id, for log records (the logging filter reads it).
_current = {"request_id": ""}


class FaultError(Exception):
    """A platform-level failure with a Lambda ``Runtime.*`` error type."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.msg = message
        self.trace = trace


# --- Runtime API client ------------------------------------------------------------------------


class RuntimeClient:
    """HTTP/1.1 keep-alive client for the agent's Runtime API.

    Raw sockets rather than http.client: importing http.client (email, ssl) costs tens of
    milliseconds of every cold start, and the agent always answers with Content-Length.
    A result or error goes out with the next GET /invocation/next pipelined behind it, in
    one write: the agent reads both on one wake-up, and ``next`` then only reads its answer.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host, int(port))
        self._host = address
        next_request = f"GET {_API_BASE}/invocation/next HTTP/1.1\r\nHost: {address}\r\n\r\n"
        self._next_request = next_request.encode()
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self._next_sent = False  # GET /next went out pipelined; its answer is still to read

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        sock = socket.create_connection(self._address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._reader = sock, sock.makefile("rb")
        return sock, self._reader

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def _send(self, parts: list[bytes]) -> None:
        sock = self._sock if self._sock is not None else self._connect()[0]
        if sum(map(len, parts)) <= 65536:
            sock.sendall(b"".join(parts))
        else:
            for part in parts:
                sock.sendall(part)

    def _read_reply(self) -> tuple[int, Headers, bytes]:
        if self._reader is None:
            raise ConnectionResetError("Runtime API closed the connection")
        reader = self._reader
        status_line = reader.readline()
        if not status_line:
            raise ConnectionResetError("Runtime API closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        reply: Headers = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            reply[name.strip().lower()] = value.strip()
        data = reader.read(int(reply.get("content-length", "0")))
        if reply.get("connection", "").lower() == "close":
            self._close()
        return status, reply, data

    def _call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Headers | None = None,
        *,
        then_next: bool = False,
    ) -> tuple[int, Headers, bytes]:
        """One request and its reply; ``then_next`` pipelines GET /next behind it."""
        lines = [f"{method} {_API_BASE}{path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        parts = ["\r\n".join(lines).encode(), body]
        if then_next:
            parts.append(self._next_request)
        try:
            self._send(parts)
            reply = self._read_reply()
        except OSError:
            # The agent closed a kept-alive connection: reconnect once.
            self._close()
            self._send(parts)
            reply = self._read_reply()
        # Closed after the reply (Connection: close): the pipelined GET /next went unread.
        self._next_sent = then_next and self._sock is not None
        return reply

    def next(self) -> tuple[Headers, bytes]:
        reply = None
        if self._next_sent:
            self._next_sent = False
            try:
                reply = self._read_reply()
            except OSError:
                self._close()  # the agent dropped the connection: ask again
        if reply is None:
            reply = self._call("GET", "/invocation/next")
        status, headers, body = reply
        if status != 200:
            raise RuntimeError(f"/invocation/next returned {status}: {body!r}")
        return headers, body

    def post_result(self, request_id: str, body: bytes, content_type: str) -> None:
        headers = {"Content-Type": content_type}
        status, _, reply = self._call(
            "POST", f"/invocation/{request_id}/response", body, headers, then_next=True
        )
        if status == 413:
            # The invocation already failed with Function.ResponseSizeTooLarge.
            log_text(f"[ERROR] Response too large for request {request_id}: {reply.decode()}\n")

    def post_error(self, request_id: str, error: Error) -> None:
        headers = {"Content-Type": "application/json", _ERROR_TYPE_HEADER: error["errorType"]}
        path = f"/invocation/{request_id}/error"
        self._call("POST", path, to_json(error).encode(), headers, then_next=True)

    def post_init_error(self, error: Error) -> None:
        headers = {"Content-Type": "application/json", _ERROR_TYPE_HEADER: error["errorType"]}
        self._call("POST", "/init/error", to_json(error).encode(), headers)


# --- JSON like awslambdaric ----------------------------------------------------------------


_RAW_MARK = "\x00kl" + os.urandom(4).hex() + ":"


def to_json(obj: object) -> str:
    """json.dumps with awslambdaric's Decimal handling: emitted verbatim as a JSON number."""
    raws: list[str] = []

    def default(o: object) -> object:
        decimal = sys.modules.get("decimal")
        if decimal is not None and isinstance(o, decimal.Decimal):
            if o.is_nan():
                return float("nan")
            raws.append(str(o))
            return f"{_RAW_MARK}{len(raws) - 1}\x00"
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    text = json.dumps(obj, default=default, allow_nan=True)
    if raws:
        mark = json.dumps(_RAW_MARK)[:-1]
        for i, raw in enumerate(raws):
            text = text.replace(f'{mark}{i}\\u0000"', raw)
    return text


def marshal_response(result: object) -> tuple[bytes, str]:
    if isinstance(result, bytes):
        return result, "application/unknown"
    try:
        return to_json(result).encode(), "application/json"
    except Exception as e:
        raise FaultError("Runtime.MarshalError", f"Unable to marshal response: {e}") from None


def unmarshal_event(body: bytes, content_type: str | None) -> object:
    if content_type != "application/json":
        return body
    try:
        return json.loads(body)
    except Exception as e:
        raise FaultError("Runtime.UnmarshalError", f"Unable to unmarshal input: {e}") from None


# --- context ---------------------------------------------------------------------------------


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __repr__(self) -> str:
        return (
            f"CognitoIdentity([cognito_identity_id={self.cognito_identity_id},"
            f"cognito_identity_pool_id={self.cognito_identity_pool_id}])"
        )


class Client:
    __slots__ = (
        "app_package_name",
        "app_title",
        "app_version_code",
        "app_version_name",
        "installation_id",
    )
    _REPR_ORDER = (
        "installation_id",
        "app_title",
        "app_version_name",
        "app_version_code",
        "app_package_name",
    )

    def __repr__(self) -> str:
        fields = ",".join(f"{name}={getattr(self, name)}" for name in self._REPR_ORDER)
        return f"Client([{fields}])"


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __repr__(self) -> str:
        return f"ClientContext([custom={self.custom},env={self.env},client={self.client}])"


def _from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    obj = cls()
    for name in cls.__slots__:
        setattr(obj, name, data.get(name))
    return obj


def _parse_json_header(value: str, name: str) -> Any:
    try:
        return json.loads(value)
    except Exception as e:
        raise FaultError(
            "Runtime.LambdaContextUnmarshalError", f"Unable to parse {name} JSON: {e}"
        ) from None


class LambdaContext:
    def __init__(
        self,
        request_id: str | None,
        invoked_arn: str | None,
        deadline_ms: int,
        client_context: dict[str, Any] | None,
        cognito_identity: dict[str, Any] | None,
    ) -> None:
        env = os.environ
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_arn
        self.tenant_id = None
        self.client_context = _from_dict(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _from_dict(Client, self.client_context.client)
        self.identity = _from_dict(CognitoIdentity, {})
        if cognito_identity is not None:
            self.identity.cognito_identity_id = cognito_identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = cognito_identity.get("cognitoIdentityPoolId")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        remaining = self._deadline_ms - int(time.time() * 1000)
        return remaining if remaining > 0 else 0

    def log(self, msg: object) -> None:
        log_text(str(msg))

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"log_group_name={self.log_group_name},log_stream_name={self.log_stream_name},"
            f"function_name={self.function_name},memory_limit_in_mb={self.memory_limit_in_mb},"
            f"function_version={self.function_version},"
            f"invoked_function_arn={self.invoked_function_arn},"
            f"client_context={self.client_context},identity={self.identity},"
            f"tenant_id={self.tenant_id}])"
        )


def make_context(headers: Headers) -> LambdaContext:
    client_context = headers.get("lambda-runtime-client-context")
    cognito_identity = headers.get("lambda-runtime-cognito-identity")
    return LambdaContext(
        headers.get("lambda-runtime-aws-request-id"),
        headers.get("lambda-runtime-invoked-function-arn"),
        int(headers.get("lambda-runtime-deadline-ms") or 0),
        _parse_json_header(client_context, "Client Context") if client_context else None,
        _parse_json_header(cognito_identity, "Cognito Identity") if cognito_identity else None,
    )


# --- logging ---------------------------------------------------------------------------------


def log_text(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _LambdaLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log_text(self.format(record))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _current["request_id"]
        return True


def setup_logging() -> None:
    # The runtime's output is a pipe to the agent; line buffering keeps logs of a timed-out
    # invocation, and everything is flushed before each Runtime API reply.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    logging.Formatter.converter = time.gmtime
    handler = _LambdaLogHandler()
    handler.setFormatter(
        logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
            "%Y-%m-%dT%H:%M:%S",
        )
    )
    handler.addFilter(_RequestIdFilter())
    logging.getLogger().addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in logging.getLevelNamesMapping():
        logging.getLogger().setLevel(level)


def _reindent(line: str) -> str:
    stripped = line.lstrip(" ")
    return _ERROR_LOG_IDENT * (len(line) - len(stripped)) + stripped


def log_error(error: Error) -> None:
    """awslambdaric's one-event error line: '[ERROR] Type: message' + traceback, joined by CR."""
    description = "[ERROR]"
    if error.get("errorType"):
        description += " " + error["errorType"]
    if error.get("errorMessage"):
        if error.get("errorType"):
            description += ":"
        description += " " + error["errorMessage"]
    lines = [description]
    stack = error.get("stackTrace")
    if stack is not None:
        lines.append("Traceback (most recent call last):")
        for element in stack:
            lines.extend([_reindent(part) for part in element.splitlines()] if element else [""])
    sys.stderr.flush()
    log_text(_ERROR_LOG_LINE_TERMINATE.join(lines) + "\n")


# --- errors ----------------------------------------------------------------------------------


def make_error(
    message: str | None,
    error_type: str | None,
    stack_trace: list[str] | None,
    request_id: str | None = None,
) -> Error:
    return {
        "errorMessage": message or "",
        "errorType": error_type or "",
        "requestId": request_id if request_id is not None else "",
        "stackTrace": stack_trace or [],
    }


def user_traceback(tb: TracebackType | None) -> list[str]:
    """The traceback without the runtime's own leading frames."""
    frames = traceback.extract_tb(tb)
    for i, frame in enumerate(frames):
        if "/bootstrap.py" not in frame.filename:
            return traceback.format_list(frames[i:])
    return traceback.format_list(frames)


def error_from_exception(exc: BaseException, request_id: str | None = None) -> Error:
    if isinstance(exc, FaultError):
        return make_error(exc.msg, exc.error_type, exc.trace, request_id)
    return make_error(str(exc), type(exc).__name__, user_traceback(exc.__traceback__), request_id)


# --- handler loading -------------------------------------------------------------------------


def load_handler(handler: str) -> Callable[[object, LambdaContext], object]:
    try:
        module_name, function_name = handler.rsplit(".", 1)
    except ValueError as e:
        raise FaultError("Runtime.MalformedHandlerName", f"Bad handler '{handler}': {e}") from None
    if module_name.split(".")[0] in sys.builtin_module_names:
        raise FaultError(
            "Runtime.BuiltInModuleConflict",
            f"Cannot use built-in module {module_name} as a handler module",
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as e:
        raise FaultError(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}"
        ) from None
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise FaultError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {e}", trace
        ) from None
    try:
        function: Callable[[object, LambdaContext], object] = getattr(module, function_name)
    except AttributeError:
        raise FaultError(
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' missing on module '{module_name}'",
        ) from None
    return function


# --- main loop -------------------------------------------------------------------------------


def _flush() -> None:
    """Everything the function printed reaches the agent before the reply does."""
    sys.stdout.flush()
    sys.stderr.flush()


def handle(
    client: RuntimeClient,
    handler: Callable[[object, LambdaContext], object],
    headers: Headers,
    body: bytes,
) -> None:
    request_id = headers.get("lambda-runtime-aws-request-id", "")
    _current["request_id"] = request_id
    trace_id = headers.get("lambda-runtime-trace-id")
    if trace_id is None:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    else:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    try:
        context = make_context(headers)
        event = unmarshal_event(body, headers.get("content-type"))
        result, content_type = marshal_response(handler(event, context))
    except Exception as exc:
        error = error_from_exception(exc, request_id)
        log_error(error)
        _flush()
        client.post_error(request_id, error)
        return
    _flush()
    client.post_result(request_id, result, content_type)


def main() -> None:
    # The task root, not this script's directory, leads the import path.
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    sys.path[0] = task_root
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    setup_logging()
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except Exception as exc:
        error = error_from_exception(exc)
        logging.warning(_UNHANDLED_WARNING)
        log_error(error)
        _flush()
        client.post_init_error(error)
        sys.exit(1)
    while True:
        headers, body = client.next()
        handle(client, handler, headers, body)


if __name__ == "__main__":
    main()
