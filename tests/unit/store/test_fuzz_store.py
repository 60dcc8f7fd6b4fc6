"""Fuzzing the code store's HTTP API over raw sockets (the real aiohttp app, in this process).

Two stored blobs; a read token for the first. Whatever the request (malformed paths, digests,
tokens, bodies, framing), answers have documented statuses and every error is a
``{"message": ...}`` JSON one (those aiohttp makes up included: a request it cannot parse, an
unknown path or method, an Expect it does not know), nothing but the upload token writes,
lists or deletes, a read token reads its own blob only, and the store logs no crash.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import event, given, note
from hypothesis import strategies as st

from kubelambda.store.server import JsonApiServer, StoreConfig, build_app
from kubelambda.store.tokens import read_token
from tests.unit.httpfuzz import (
    EDITS,
    FUZZ_SETTINGS,
    LAST_REQUEST,
    MALFORMATIONS,
    CrashLog,
    Fuzzed,
    LoopThread,
    RawResponse,
    build_request,
    edited,
    exchange,
    methods,
    request,
)

UPLOAD = "upload-secret"
SIGNING = "signing-secret"
LIMIT = 64 * 1024


def zip_bytes(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, name.encode())
    return buffer.getvalue()


BLOBS = {name: zip_bytes(name) for name in ("mine", "other")}
SHAS = {name: hashlib.sha256(data).hexdigest() for name, data in BLOBS.items()}
# 405 and 417: a method a path does not take, an Expect other than 100-continue.
DOCUMENTED = {200, 201, 204, 400, 401, 404, 405, 413, 417}


class RunningStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.thread = LoopThread()
        self.server = JsonApiServer(build_app(StoreConfig(root, 0, UPLOAD, SIGNING, LIMIT)))
        self.port = self.thread.run(self.server.start("127.0.0.1", 0))

    def blob_path(self, name: str) -> Path:
        return self.root / "blobs" / SHAS[name][:2] / SHAS[name]

    def put(self, name: str) -> None:
        data = request(
            b"PUT",
            f"/v1/blobs/{SHAS[name]}".encode(),
            ((b"Authorization", f"Bearer {UPLOAD}".encode()),),
            BLOBS[name],
        )
        response, _ = exchange(self.port, data + LAST_REQUEST, [b"PUT", b"GET"], half_close=False)
        assert response.status in (200, 201), response

    def stop(self) -> None:
        self.thread.run(self.server.stop())
        self.thread.stop()


@pytest.fixture(scope="module")
def crash_log() -> Iterator[CrashLog]:
    with CrashLog.on("aiohttp", (HttpProcessingError,)) as log:
        yield log


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, crash_log: CrashLog) -> Iterator[RunningStore]:
    running = RunningStore(tmp_path_factory.mktemp("store"))
    for name in BLOBS:
        running.put(name)
    yield running
    running.stop()


AUTHORIZATIONS = (
    None,
    f"Bearer {UPLOAD}",
    f"bearer {UPLOAD}",
    f"Bearer  {UPLOAD} ",
    f"Bearer {read_token(SIGNING, SHAS['mine'])}",
    f"Bearer {read_token(SIGNING, SHAS['mine']).upper()}",
    f"Basic {UPLOAD}",
    "Bearer",
    "Bearer \xff\xfe",
    f"Bearer {UPLOAD}\xe9",
    "Bearer " + "0" * 64,
)
PATHS = (
    b"/v1/blobs/" + SHAS["mine"].encode(),
    b"/v1/blobs/" + SHAS["other"].encode(),
    b"/v1/blobs/" + SHAS["mine"].upper().encode(),
    b"/v1/blobs/" + SHAS["mine"].encode() + b"/../" + SHAS["other"].encode(),
    b"/v1/blobs/%2e%2e%2f" + SHAS["other"].encode(),
    b"/v1/blobs",
    b"/v1/blobs/",
    b"/v1/blobs/" + b"0" * 64,
    b"/healthz",
)
BODIES = st.one_of(
    st.sampled_from(
        (b"", BLOBS["mine"], BLOBS["other"], b"PK\x03\x04 not a zip", b"x" * (LIMIT + 1))
    ),
    st.binary(max_size=64),
)
METHODS = st.one_of(st.sampled_from((b"GET", b"PUT", b"POST", b"DELETE", b"HEAD")), methods(b"GET"))


@st.composite
def store_requests(draw: st.DrawFn) -> tuple[Fuzzed, str | None]:
    """A fuzzed store request, and the Authorization it carries (None: none, or a broken one)."""
    authorization = draw(st.sampled_from(AUTHORIZATIONS))
    headers = (
        [] if authorization is None else [b"Authorization: " + authorization.encode("latin-1")]
    )
    path = edited(draw(st.sampled_from(PATHS)), draw(EDITS))
    fuzzed = build_request(draw(MALFORMATIONS), draw(METHODS), path, headers, draw(BODIES))
    return fuzzed, authorization


def check_answer(response: RawResponse, authorization: str | None, method: bytes) -> None:
    assert response.status in DOCUMENTED, response
    admin = authorization in (f"Bearer {UPLOAD}", f"bearer {UPLOAD}", f"Bearer  {UPLOAD} ")
    if response.status >= 400:
        assert response.header("content-type") == "application/json; charset=utf-8", response
        if method != b"HEAD":
            assert isinstance(response.json()["message"], str), response
        return
    body = response.body
    if body.startswith(b"PK"):  # a package: its own read token or the upload token
        mine = authorization == f"Bearer {read_token(SIGNING, SHAS['mine'])}"
        assert admin or (mine and body == BLOBS["mine"]), response
    elif response.status in (201, 204) or body.startswith(b"["):  # upload, delete, list
        assert admin, response
    elif method != b"HEAD":
        assert response.json() in (
            {"status": "ok"},
            *({"sha256": s, "size": len(BLOBS[n])} for n, s in SHAS.items()),
        ), response


@FUZZ_SETTINGS
@given(case=store_requests())
def test_store_answers_only_documented_shapes(
    store: RunningStore, crash_log: CrashLog, case: tuple[Fuzzed, Any]
) -> None:
    fuzzed, authorization = case
    crash_log.take()  # what an earlier (failing) example left
    responses = exchange(
        store.port, fuzzed.data + LAST_REQUEST, [*fuzzed.methods, b"GET"], 2, half_close=False
    )
    note(f"answers: {responses!r}")
    for response, method in zip(responses, fuzzed.methods + [b"GET"] * 2, strict=False):
        event(str(response.status))
        check_answer(response, authorization, method)
    assert crash_log.take() == []
    for name in BLOBS:
        if not store.blob_path(name).exists():  # deleted: only the upload token may do that
            assert authorization is not None
            assert UPLOAD in authorization, fuzzed
            store.put(name)


@pytest.mark.parametrize("token", [b"\xff\xfe", b"upload-secret\xe9", "é".encode()])
def test_non_ascii_token_is_refused_not_a_crash(
    store: RunningStore, crash_log: CrashLog, token: bytes
) -> None:
    """Regression: compare_digest raised TypeError on a non-ASCII bearer token (a 500)."""
    for method, path in ((b"GET", f"/v1/blobs/{SHAS['mine']}".encode()), (b"GET", b"/v1/blobs")):
        data = request(method, path, ((b"Authorization", b"Bearer " + token),)) + LAST_REQUEST
        response, _ = exchange(store.port, data, [method, b"GET"], half_close=False)
        assert response.status == 401, response
    assert crash_log.take() == []


# What aiohttp answers itself, before (or instead of) the store's handlers.
MADE_UP_ERRORS = {
    "unknown path": (request(b"GET", b"/v2/blobs"), 404, "Not Found"),
    "wrong method": (request(b"PATCH", b"/v1/blobs"), 405, "Method Not Allowed"),
    "unknown expect": (
        request(b"PUT", b"/v1/blobs/" + SHAS["mine"].encode(), ((b"Expect", b"200-ok"),)),
        417,
        "Unknown Expect: 200-ok",
    ),
    "unparseable": (b"GET /v1/blobs HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "Invalid"),
}


@pytest.mark.parametrize("case", MADE_UP_ERRORS)
def test_errors_aiohttp_makes_up_are_json(store: RunningStore, case: str) -> None:
    """Regression: unknown paths and methods, an Expect it does not know and requests it could
    not parse got aiohttp's text/plain answers, not the store's ``{"message": ...}``."""
    data, status, message = MADE_UP_ERRORS[case]
    response = exchange(store.port, data + LAST_REQUEST, [b"GET"] * 2, half_close=False)[0]
    assert response.status == status, response
    assert response.header("content-type") == "application/json; charset=utf-8"
    assert response.json()["message"].startswith(message), response
    if status == 405:
        assert response.header("allow") == "GET,HEAD,POST"
