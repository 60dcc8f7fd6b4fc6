"""Watch loops feeding the routing table from a scripted API: lists, events, bookmarks, 410
Gone, reconnects; and the HTTP client's kubeconfig and Secret reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest

from kubelambda.gateway.apiroutes import API_ROUTE
from kubelambda.gateway.routing import ENDPOINT_SLICE, FUNCTION, RouteError, RoutingTable
from kubelambda.gateway.watch import RESOURCES
from kubelambda.kubeapi import (
    ApiError,
    Gone,
    HttpKubeApi,
    JsonObject,
    KubeConnection,
    ResourceWatch,
    WatchedResource,
    from_kubeconfig,
    in_cluster,
)
from tests.unit.gateway.apiobjects import route_obj
from tests.unit.gateway.objects import function_obj, slice_obj

FUNCTIONS = RESOURCES[0]


class Stop(BaseException):
    """Ends a scripted run (a BaseException: the watch loop survives any Exception)."""


class FakeApi:
    """Answers list and watch calls from scripts; records the calls' parameters."""

    def __init__(self, lists, watches):
        self.lists = list(lists)  # pages (dicts) or ApiError to raise
        self.watches = list(watches)  # lists of events, or an exception to raise
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def list(self, path, params):
        self.calls.append(("list", dict(params)))
        if not self.lists:
            raise Stop
        page = self.lists.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    async def watch(self, path, params):
        self.calls.append(("watch", dict(params)))
        if not self.watches:
            raise Stop
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for event in script:
            yield event


def page(items, resource_version, cont=None):
    metadata = {"resourceVersion": resource_version}
    if cont:
        metadata["continue"] = cont
    return {"items": items, "metadata": metadata}


def event(kind, obj):
    return {"type": kind, "object": obj}


def run(watch: ResourceWatch) -> None:
    with pytest.raises(Stop):
        asyncio.run(watch.run())


def names(table: RoutingTable, *candidates: str) -> set[str]:
    return {n for n in candidates if not isinstance(table.resolve("default", n), RouteError)}


def test_list_then_watch_applies_events_and_tracks_versions():
    table = RoutingTable()
    synced: list[str] = []
    api = FakeApi(
        [page([function_obj("a")], "10")],
        [
            [
                event("ADDED", function_obj("b", resource_version="11")),
                event("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
                event("DELETED", function_obj("a", resource_version="16")),
            ]
        ],
    )
    watch = ResourceWatch(api, FUNCTIONS, table, synced.append)
    run(watch)
    assert names(table, "a", "b") == {"b"}
    assert synced == [FUNCTION]
    assert watch.resource_version == "16"
    (_, list_params), (_, first), (_, second) = api.calls
    assert list_params == {"limit": "500"}
    assert first["resourceVersion"] == "10"
    assert first["allowWatchBookmarks"] == "true"
    assert first["watch"] == "true"
    assert second["resourceVersion"] == "16"  # a renewed watch resumes


def test_paged_list():
    table = RoutingTable()
    api = FakeApi(
        [page([function_obj("a")], "5", cont="tok"), page([function_obj("b")], "6")],
        [],
    )
    run(ResourceWatch(api, FUNCTIONS, table))
    assert names(table, "a", "b") == {"a", "b"}
    assert api.calls[1] == ("list", {"limit": "500", "continue": "tok"})
    assert api.calls[2][1]["resourceVersion"] == "6"


def test_expired_continue_token_restarts_the_list():
    table = RoutingTable()
    api = FakeApi(
        [
            page([function_obj("a")], "5", cont="tok"),
            ApiError(410, "expired"),
            page([function_obj("c")], "9"),
        ],
        [],
    )
    run(ResourceWatch(api, FUNCTIONS, table))
    assert names(table, "a", "c") == {"c"}
    assert api.calls[2] == ("list", {"limit": "500"})


@pytest.mark.parametrize(
    "gone",
    [
        [event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})],
        ApiError(410, "too old"),
    ],
)
def test_gone_lists_again_and_drops_vanished_objects(gone):
    table = RoutingTable()
    synced: list[str] = []
    api = FakeApi(
        [page([function_obj("a"), function_obj("b")], "10"), page([function_obj("b")], "30")],
        [[event("MODIFIED", function_obj("b", resource_version="12"))], gone, []],
    )
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)

    run(ResourceWatch(api, FUNCTIONS, table, synced.append, sleep=sleep))
    assert names(table, "a", "b") == {"b"}
    assert [c[0] for c in api.calls] == ["list", "watch", "watch", "list", "watch", "watch"]
    assert api.calls[2][1]["resourceVersion"] == "12"
    assert api.calls[4][1]["resourceVersion"] == "30"
    assert synced == [FUNCTION, FUNCTION]
    assert sleeps == []  # 410 is not a failure: no backoff


def test_failures_back_off_and_resume_from_the_last_version():
    table = RoutingTable()
    api = FakeApi(
        [page([], "10")],
        [
            ApiError(500, "internal"),
            [event("ERROR", {"kind": "Status", "code": 500, "message": "etcd"})],
            [event("ADDED", function_obj("a", resource_version="20"))],
        ],
    )
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)

    run(ResourceWatch(api, FUNCTIONS, table, sleep=sleep))
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.75
    assert 0.5 <= sleeps[1] <= 1.5  # doubled
    assert [c[0] for c in api.calls] == ["list", "watch", "watch", "watch", "watch"]
    assert all(c[1].get("resourceVersion") == "10" for c in api.calls[1:4])
    assert api.calls[4][1]["resourceVersion"] == "20"
    assert names(table, "a") == {"a"}


def test_a_sink_that_raises_does_not_end_the_watch():
    """A bug while applying an object must not leave the watcher stale for good: it lists
    everything again after a pause and goes on."""

    failures: list[str] = []

    class FlakyTable(RoutingTable):
        def apply(self, kind, event):
            name = event["object"]["metadata"]["name"]
            if name == "bad" and not failures:
                failures.append(name)
                raise KeyError("a bug")
            super().apply(kind, event)

    table = FlakyTable()
    api = FakeApi(
        [page([], "10"), page([function_obj("bad"), function_obj("good")], "30")],
        [[event("ADDED", function_obj("bad", resource_version="20"))], []],
    )
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)

    run(ResourceWatch(api, FUNCTIONS, table, sleep=sleep))
    assert [c[0] for c in api.calls] == ["list", "watch", "list", "watch", "watch"]
    assert len(sleeps) == 1
    assert names(table, "bad", "good") == {"bad", "good"}


def test_endpoint_slices_are_selected_by_label_and_fed():
    table = RoutingTable()
    slices = RESOURCES[2]
    assert slices == WatchedResource(
        ENDPOINT_SLICE,
        "/apis/discovery.k8s.io/v1/endpointslices",
        "app.kubernetes.io/managed-by=kubelambda",
    )
    api = FakeApi(
        [page([slice_obj("fn", "$LATEST", ["10.0.0.1"])], "3")],
        [[event("MODIFIED", slice_obj("fn", "$LATEST", ["10.0.0.1", "10.0.0.2"]))]],
    )
    run(ResourceWatch(api, slices, table))
    assert api.calls[0][1]["labelSelector"] == "app.kubernetes.io/managed-by=kubelambda"
    assert table.endpoints(("default", "fn", "$LATEST")) == (("10.0.0.1", 8080), ("10.0.0.2", 8080))


def test_handle_error_events():
    watch = ResourceWatch(FakeApi([], []), FUNCTIONS, RoutingTable())
    with pytest.raises(Gone):
        watch.handle(event("ERROR", {"code": 410}))
    with pytest.raises(ApiError):
        watch.handle(event("ERROR", {"code": 403, "message": "forbidden"}))


def test_in_cluster_needs_the_service_env():
    assert in_cluster({}) is None


def test_kubeconfig(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    config = tmp_path / "config"
    config.write_text(
        f"""
apiVersion: v1
kind: Config
current-context: c
contexts:
- name: c
  context: {{cluster: k, user: u}}
clusters:
- name: k
  cluster: {{server: "https://127.0.0.1:6443/", insecure-skip-tls-verify: true}}
users:
- name: u
  user: {{tokenFile: {token_file.name}}}
"""
    )
    connection = from_kubeconfig(str(config))
    assert connection.server == "https://127.0.0.1:6443"
    assert connection.ssl is False
    assert connection.headers() == {"Authorization": "Bearer abc"}


def test_kubeconfig_missing_context(tmp_path: Path):
    config = tmp_path / "config"
    config.write_text("current-context: nope\ncontexts: []\n")
    with pytest.raises(ValueError, match="no context named 'nope'"):
        from_kubeconfig(str(config))


def test_api_routes_are_watched_and_fed():
    routes = next(r for r in RESOURCES if r.kind == API_ROUTE)
    assert routes.path == "/apis/kubelambda.io/v1alpha1/apiroutes"
    table = RoutingTable()
    seen: list[bool] = []

    def listed(kind: str) -> None:
        seen.append(table.api_routes.table("default", "default") is not None)

    api = FakeApi(
        [page([route_obj("GET /a")], "5")],
        [[event("ADDED", route_obj("GET /b")), event("DELETED", route_obj("GET /a"))]],
    )
    run(ResourceWatch(api, routes, table, listed))
    assert seen == [True]
    api_table = table.api_routes.table("default", "default")
    assert api_table is not None
    assert api_table.match("GET", "/a") is None
    assert api_table.match("GET", "/b") is not None


@contextlib.contextmanager
def api_server(answers: dict[str, tuple[int, bytes]]) -> Iterator[tuple[KubeConnection, list]]:
    """A local HTTP server answering GETs by path (404 for others); yields a connection to it
    (bearer token "t") and the (path, Authorization) of every request."""
    requests: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append((self.path, self.headers.get("Authorization")))
            status, data = answers.get(self.path, (404, b'{"reason": "NotFound"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield KubeConnection(f"http://127.0.0.1:{port}", False, token="t"), requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_read_secret_through_the_api_server():
    answers = {
        "/api/v1/namespaces/team/secrets/keys": (200, json.dumps({"data": {"k": "a2V5"}}).encode()),
        "/api/v1/namespaces/team/secrets/broken": (500, b'{"message": "oops"}'),
    }

    async def scenario(connection: KubeConnection) -> None:
        async with aiohttp.ClientSession() as session:
            kube = HttpKubeApi(connection, session)
            assert await kube.read_secret("team", "keys") == {"k": "a2V5"}
            assert await kube.read_secret("team", "missing") is None
            with pytest.raises(ApiError):
                await kube.read_secret("team", "broken")

    with api_server(answers) as (connection, requests):
        asyncio.run(scenario(connection))
    assert requests[0] == ("/api/v1/namespaces/team/secrets/keys", "Bearer t")


def test_watch_stream_through_the_api_server():
    added = event("ADDED", function_obj("a", resource_version="7"))
    stream = json.dumps(added).encode() + b"\n\n" + json.dumps(event("BOOKMARK", {})).encode()
    answers = {"/fns?watch=true": (200, stream + b"\n"), "/gone?watch=true": (410, b"too old")}

    async def scenario(connection: KubeConnection) -> list[JsonObject]:
        async with aiohttp.ClientSession() as session:
            kube = HttpKubeApi(connection, session)
            with pytest.raises(ApiError) as gone:
                async for _ in kube.watch("/gone", {"watch": "true"}):
                    pass
            assert gone.value.status == 410
            return [e async for e in kube.watch("/fns", {"watch": "true"})]

    with api_server(answers) as (connection, _):
        assert asyncio.run(scenario(connection)) == [added, event("BOOKMARK", {})]
