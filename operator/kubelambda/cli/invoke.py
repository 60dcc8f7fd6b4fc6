"""``invoke``: the Lambda Invoke API through the gateway."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from kubelambda.cli.errors import CliError, NotFound, UsageError
from kubelambda.cli.session import Session

# The function's own timeout (at most 900 s) plus a cold start is bounded by the gateway.
DEFAULT_INVOKE_TIMEOUT_S = 960.0


def read_payload(payload: str | None, payload_file: str | None, stdin: BinaryIO) -> bytes:
    """``--payload``, else ``--payload-file`` (``-``: stdin), else ``{}``; must be JSON."""
    if payload is not None:
        data = payload.encode()
    elif payload_file == "-":
        data = stdin.read()
    elif payload_file is not None:
        try:
            data = Path(payload_file).read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {payload_file}: {error.strerror}") from None
    else:
        data = b"{}"
    try:
        json.loads(data.decode())
    except ValueError as error:
        raise UsageError(f"the payload is not valid JSON: {error}") from None
    return data


def invocation_path(namespace: str, name: str, qualifier: str | None) -> str:
    path = (
        f"/namespaces/{urllib.parse.quote(namespace, safe='')}/2015-03-31/functions/"
        f"{urllib.parse.quote(name, safe=':')}/invocations"
    )
    if qualifier is not None:
        path += "?" + urllib.parse.urlencode({"Qualifier": qualifier})
    return path


def decoded_log(header: str) -> str:
    try:
        return base64.b64decode(header, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        return header


def run_invoke(args: argparse.Namespace, session: Session) -> int:
    payload = read_payload(args.payload, args.payload_file, session.stdin)
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Invocation-Type": "Event" if args.async_ else "RequestResponse",
    }
    if args.log_tail:
        headers["X-Amz-Log-Type"] = "Tail"
    response = session.platform.gateway().request(
        "POST",
        invocation_path(session.namespace, args.name, args.qualifier),
        body=payload,
        headers=headers,
        timeout=args.timeout,
    )
    log = response.header("x-amz-log-result")
    if log:
        session.stderr.write(decoded_log(log).rstrip("\n") + "\n")
    if response.status >= 300:
        error_type = response.header("x-amzn-errortype") or f"HTTP {response.status}"
        message = f"{error_type}: {response.message()}"
        if response.status == 404:
            raise NotFound(message)
        raise CliError(message)
    if args.async_:
        session.stdout.write(f"{response.header('x-amzn-requestid') or ''}\n")
        return 0
    text = response.body.decode(errors="replace")
    session.stdout.write(text if text.endswith("\n") else text + "\n")
    function_error = response.header("x-amz-function-error")
    if function_error:
        session.note(f"the function failed ({function_error})")
        return 1
    return 0
