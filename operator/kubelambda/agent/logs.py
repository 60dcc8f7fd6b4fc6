"""The container log: runtime output echoed line by line plus Lambda's platform lines."""

from __future__ import annotations

import binascii
import math
import os
import time

TAIL_BYTES = 4096


def write_stdout(data: bytes) -> None:
    """Write straight to fd 1 so agent lines and echoed runtime output keep their order."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(1, view) :]
        except BlockingIOError:
            # stdout was made non-blocking elsewhere; wait for the log reader instead of
            # dropping lines.
            os.set_blocking(1, True)


def start_line(request_id: str, version: str) -> bytes:
    return f"START RequestId: {request_id} Version: {version}\n".encode()


def end_line(request_id: str) -> bytes:
    return f"END RequestId: {request_id}\n".encode()


def report_line(
    request_id: str,
    *,
    duration_ms: float,
    memory_mb: int,
    max_used_mb: int,
    init_ms: float | None,
    status: str | None,
) -> bytes:
    line = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms"
        f"\tBilled Duration: {max(1, math.ceil(duration_ms))} ms"
        f"\tMemory Size: {memory_mb} MB\tMax Memory Used: {max_used_mb} MB"
    )
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    if status is not None:
        line += f"\t{status}"
    return (line + "\n").encode()


def timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def tail_header(tail: bytearray) -> bytes:
    """X-Amz-Log-Result: base64 of the last 4 KB of the invocation's log."""
    return binascii.b2a_base64(tail[-TAIL_BYTES:], newline=False)


class LineEcho:
    """Echoes a runtime's output to the container log in whole lines.

    Several runtime processes share stdout; whole lines keep their output from interleaving
    mid-line. A partial line is held until its newline or until ``flush``.
    """

    __slots__ = ("_partial",)
    _MAX_PARTIAL = 64 * 1024

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> None:
        buf = self._partial + data if self._partial else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            write_stdout(buf[:cut])
            buf = buf[cut:]
        if len(buf) > self._MAX_PARTIAL:
            write_stdout(buf + b"\n")
            buf = b""
        self._partial = buf

    def flush(self) -> None:
        if self._partial:
            write_stdout(self._partial + b"\n")
            self._partial = b""
