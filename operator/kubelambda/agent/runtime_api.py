"""The Lambda Runtime API (base ``/2018-06-01``) served to one runtime process."""

from __future__ import annotations

from kubelambda.agent import errors
from kubelambda.agent.httpio import Connection, Request, Response, json_response
from kubelambda.agent.runtime import RuntimeSlot

PREFIX = "/2018-06-01/runtime/"
_NEXT = "invocation/next"
_INIT_ERROR = "init/error"
_INVOCATION = "invocation/"

_NOT_FOUND = json_response(404, errors.NOT_FOUND)
_NOT_ALLOWED = json_response(405, errors.METHOD_NOT_ALLOWED)


class RuntimeApi:
    def __init__(self, slot: RuntimeSlot) -> None:
        self._slot = slot

    def handle(self, request: Request, conn: Connection) -> None:
        response = self._route(request, conn)
        if response is not None:
            conn.respond(response)

    def _route(self, request: Request, conn: Connection) -> Response | None:
        """The immediate answer, or None when the slot answers (/next holds the request for
        an invocation; /response and /error are answered after the invoke request)."""
        target = request.target
        if not target.startswith(PREFIX):
            return _NOT_FOUND
        route = target[len(PREFIX) :].split("?", 1)[0]
        if route == _NEXT:
            if request.method != "GET":
                return _NOT_ALLOWED
            self._slot.next_invocation(conn)
            return None
        if route == _INIT_ERROR:
            if request.method != "POST":
                return _NOT_ALLOWED
            return self._slot.post_init_error(request)
        if not route.startswith(_INVOCATION):
            return _NOT_FOUND
        request_id, _, action = route[len(_INVOCATION) :].rpartition("/")
        if action not in ("response", "error") or not request_id:
            return _NOT_FOUND
        if request.method != "POST":
            return _NOT_ALLOWED
        if action == "response":
            self._slot.post_response(request_id, request, conn)
        else:
            self._slot.post_error(request_id, request, conn)
        return None
