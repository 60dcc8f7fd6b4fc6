"""An async event as it travels through the queue: subjects and the header format.

An event is a NATS message whose body is the invocation payload, unchanged, and whose headers
carry everything else, so the payload is never re-encoded (and a 1 MB limit means 1 MB of
payload). Header values are ASCII: free text (error messages) is percent-encoded.

Events stream headers:

============================  ================================================================
Nats-Msg-Id                   the request id on the gateway's publish (JetStream drops a second
                              publish of it within the duplicate window); ``<id>.<n>`` on a
                              retry, ``<id>.redrive.<dlq seq>`` on a redrive
Kubelambda-Request-Id         the request id the caller got with its 202
Kubelambda-Namespace          namespace of the function
Kubelambda-Function           function name
Kubelambda-Qualifier          qualifier as the caller gave it (absent: unqualified)
Kubelambda-Enqueued-Ms        epoch ms the gateway received the event: the start of its age
Kubelambda-Attempts           invocations that reached the function so far
Kubelambda-Throttles          tries that were throttled or failed in the platform so far
Kubelambda-Not-Before-Ms      a retry: do not deliver before this epoch ms (backoff)
Kubelambda-Client-Context     X-Amz-Client-Context as sent (base64 JSON)
Kubelambda-Trace-Id           X-Amzn-Trace-Id as sent
Kubelambda-Last-Status        HTTP status of the last failed try
Kubelambda-Last-Error         its error message (percent-encoded, at most 1 KiB)
============================  ================================================================

Dead-letter messages keep all of those and add Lambda's DLQ attributes: ``RequestID``,
``ErrorCode`` (the 3-digit HTTP status of the last try, or the service error code when the
function never ran), ``ErrorMessage`` (first 1 KiB, percent-encoded), plus ``Condition``
(``RetriesExhausted`` | ``EventAgeExceeded``), ``Attempts`` and ``Kubelambda-Failed-Ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

EVENTS_PREFIX = "kubelambda.events"
DLQ_PREFIX = "kubelambda.dlq"

SUCCESS = "Success"
RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"

MAX_ERROR_MESSAGE_BYTES = 1024

H_MSG_ID = "Nats-Msg-Id"
H_REQUEST_ID = "Kubelambda-Request-Id"
H_NAMESPACE = "Kubelambda-Namespace"
H_FUNCTION = "Kubelambda-Function"
H_QUALIFIER = "Kubelambda-Qualifier"
H_ENQUEUED = "Kubelambda-Enqueued-Ms"
H_ATTEMPTS = "Kubelambda-Attempts"
H_THROTTLES = "Kubelambda-Throttles"
H_NOT_BEFORE = "Kubelambda-Not-Before-Ms"
H_CLIENT_CONTEXT = "Kubelambda-Client-Context"
H_TRACE_ID = "Kubelambda-Trace-Id"
H_LAST_STATUS = "Kubelambda-Last-Status"
H_LAST_ERROR = "Kubelambda-Last-Error"
H_DLQ_REQUEST_ID = "RequestID"
H_DLQ_ERROR_CODE = "ErrorCode"
H_DLQ_ERROR_MESSAGE = "ErrorMessage"
H_DLQ_CONDITION = "Condition"
H_DLQ_ATTEMPTS = "Attempts"
H_DLQ_FAILED = "Kubelambda-Failed-Ms"

# Printable ASCII stays readable; CR/LF, '%' and non-ASCII are escaped.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


class MalformedEvent(ValueError):
    """A message in the events stream without the headers an event needs."""


def event_subject(namespace: str, function: str) -> str:
    return f"{EVENTS_PREFIX}.{namespace}.{function}"


def dlq_subject(namespace: str, function: str) -> str:
    return f"{DLQ_PREFIX}.{namespace}.{function}"


# What Kubernetes allows in namespace and object names: nothing that changes a URL path.
NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def subject_key(subject: str) -> tuple[str, str] | None:
    """(namespace, function) of an events or DLQ subject, None for anything else."""
    parts = subject.split(".")
    if len(parts) != 4 or f"{parts[0]}.{parts[1]}" not in (EVENTS_PREFIX, DLQ_PREFIX):
        return None
    return parts[2], parts[3]


def truncate_utf8(text: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def encode_text(text: str) -> str:
    return quote(truncate_utf8(text), safe=_SAFE)


def decode_text(value: str) -> str:
    return unquote(value)


@dataclass(frozen=True, slots=True)
class Event:
    request_id: str
    namespace: str
    function: str
    qualifier: str | None
    payload: bytes
    enqueued_ms: int
    attempts: int = 0
    throttles: int = 0
    not_before_ms: int = 0
    client_context: str | None = None
    trace_id: str | None = None
    last_status: int | None = None
    last_error: str | None = None

    @property
    def subject(self) -> str:
        return event_subject(self.namespace, self.function)

    def headers(self) -> dict[str, str]:
        headers = {
            H_REQUEST_ID: self.request_id,
            H_NAMESPACE: self.namespace,
            H_FUNCTION: self.function,
            H_ENQUEUED: str(self.enqueued_ms),
            H_ATTEMPTS: str(self.attempts),
            H_THROTTLES: str(self.throttles),
        }
        optional = (
            (H_QUALIFIER, self.qualifier),
            (H_CLIENT_CONTEXT, self.client_context),
            (H_TRACE_ID, self.trace_id),
            (H_NOT_BEFORE, str(self.not_before_ms) if self.not_before_ms else None),
            (H_LAST_STATUS, None if self.last_status is None else str(self.last_status)),
            (H_LAST_ERROR, None if self.last_error is None else encode_text(self.last_error)),
        )
        headers.update((name, value) for name, value in optional if value is not None)
        return headers

    def reset(self, enqueued_ms: int) -> Event:
        """The event as new (a redrive): no attempts, no backoff, a fresh age."""
        return replace(
            self,
            enqueued_ms=enqueued_ms,
            attempts=0,
            throttles=0,
            not_before_ms=0,
            last_status=None,
            last_error=None,
        )

    @classmethod
    def from_message(
        cls, headers: Mapping[str, str] | None, payload: bytes, subject: str | None = None
    ) -> Event:
        """The event a message holds. With ``subject`` (the message's), the headers must name
        the function the subject does: the invoker calls the gateway with the platform's own
        token, so a message published elsewhere must not pick another namespace's function."""
        headers = headers or {}
        if subject is not None:
            named = (headers.get(H_NAMESPACE), headers.get(H_FUNCTION))
            if subject_key(subject) != named:
                raise MalformedEvent(f"the headers name {named}, the subject {subject!r}")
            if not all(NAME_PATTERN.fullmatch(str(part)) for part in named):
                raise MalformedEvent(f"not a namespace and function name: {named}")
        try:
            last_status = headers.get(H_LAST_STATUS)
            last_error = headers.get(H_LAST_ERROR)
            return cls(
                request_id=headers[H_REQUEST_ID],
                namespace=headers[H_NAMESPACE],
                function=headers[H_FUNCTION],
                qualifier=headers.get(H_QUALIFIER) or None,
                payload=payload,
                enqueued_ms=int(headers[H_ENQUEUED]),
                attempts=int(headers.get(H_ATTEMPTS) or 0),
                throttles=int(headers.get(H_THROTTLES) or 0),
                not_before_ms=int(headers.get(H_NOT_BEFORE) or 0),
                client_context=headers.get(H_CLIENT_CONTEXT) or None,
                trace_id=headers.get(H_TRACE_ID) or None,
                last_status=int(last_status) if last_status else None,
                last_error=decode_text(last_error) if last_error is not None else None,
            )
        except (KeyError, ValueError) as exc:
            raise MalformedEvent(f"not a kubelambda event: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A failed event in the dead-letter queue; ``sequence`` is its DLQ stream sequence."""

    event: Event
    condition: str
    error_code: str
    error_message: str
    failed_ms: int
    sequence: int = 0

    @property
    def subject(self) -> str:
        return dlq_subject(self.event.namespace, self.event.function)

    def headers(self) -> dict[str, str]:
        headers = self.event.headers()
        headers.update(
            {
                H_DLQ_REQUEST_ID: self.event.request_id,
                H_DLQ_ERROR_CODE: self.error_code,
                H_DLQ_ERROR_MESSAGE: encode_text(self.error_message),
                H_DLQ_CONDITION: self.condition,
                H_DLQ_ATTEMPTS: str(self.event.attempts),
                H_DLQ_FAILED: str(self.failed_ms),
            }
        )
        return headers

    @classmethod
    def from_message(
        cls, headers: Mapping[str, str] | None, payload: bytes, sequence: int
    ) -> DeadLetter:
        event = Event.from_message(headers, payload)
        headers = headers or {}
        return cls(
            event=event,
            condition=headers.get(H_DLQ_CONDITION, ""),
            error_code=headers.get(H_DLQ_ERROR_CODE, ""),
            error_message=decode_text(headers.get(H_DLQ_ERROR_MESSAGE, "")),
            failed_ms=int(headers.get(H_DLQ_FAILED) or 0),
            sequence=sequence,
        )
