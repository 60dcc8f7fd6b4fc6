"""Lambda's invocation record: what OnSuccess / OnFailure destinations receive."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubelambda.invoker.event import Event

ACCOUNT_ID = "000000000000"  # the placeholder account of every kubelambda ARN


@dataclass(frozen=True, slots=True)
class Response:
    """What the last try got back (status 0: the function never answered)."""

    status: int = 0
    executed_version: str | None = None
    function_error: str | None = None
    body: bytes | None = None


def function_arn(region: str, event: Event) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{event.function}:" + (
        event.qualifier or "$LATEST"
    )


def _json_or_text(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body.decode())
    except ValueError:  # not UTF-8, or not JSON: the text as it is
        return body.decode(errors="replace")


def timestamp(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def invocation_record(
    *,
    event: Event,
    region: str,
    condition: str,
    response: Response,
    now_ms: int,
) -> bytes:
    """``{"version": "1.0", "timestamp", "requestContext", "requestPayload", ...}`` as JSON."""
    response_context: dict[str, Any] = {"statusCode": response.status}
    response_context["executedVersion"] = response.executed_version or (
        event.qualifier if event.qualifier and event.qualifier[0].isdigit() else "$LATEST"
    )
    if response.function_error:
        response_context["functionError"] = response.function_error
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": timestamp(now_ms),
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": function_arn(region, event),
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": _json_or_text(event.payload),
        "responseContext": response_context,
        "responsePayload": _json_or_text(response.body),
    }
    return json.dumps(record, separators=(",", ":")).encode()
