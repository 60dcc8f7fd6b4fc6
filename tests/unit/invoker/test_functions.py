"""The Function directory's list+watch, driven by a scripted API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubelambda.invoker.functions import FUNCTIONS, ApiDirectory
from kubelambda.kubeapi import ApiError


def fn(name: str, version: str, namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": version,
        },
        "spec": spec,
    }


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


@dataclass
class ScriptedApi:
    """List pages and watch streams, consumed in order; an exception in a script is raised."""

    pages: list[dict[str, Any] | Exception] = field(default_factory=list)
    watches: list[list[dict[str, Any]] | Exception] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    exhausted: asyncio.Event = field(default_factory=asyncio.Event)

    async def list(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        assert path == FUNCTIONS.path
        self.calls.append(("list", dict(params)))
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        assert path == FUNCTIONS.path
        self.calls.append(("watch", dict(params)))
        if not self.watches:
            self.exhausted.set()
            await asyncio.Event().wait()  # a watch that stays open
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for item in script:
            yield item


def page(*items: dict[str, Any], version: str = "10", token: str | None = None) -> dict[str, Any]:
    metadata = {"resourceVersion": version} | ({"continue": token} if token else {})
    return {"items": list(items), "metadata": metadata}


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def run_directory(api: ScriptedApi) -> tuple[ApiDirectory, list[int]]:
    """Runs the directory until the script is used up; returns it and its change count."""
    changes: list[int] = []

    async def scenario() -> ApiDirectory:
        directory = ApiDirectory(api, sleep=no_sleep)
        directory.subscribe(lambda: changes.append(len(list(directory.keys()))))
        task = asyncio.create_task(directory.run())
        await asyncio.wait_for(api.exhausted.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return directory

    return asyncio.run(scenario()), changes


def test_list_then_watch_applies_changes_at_once() -> None:
    api = ScriptedApi(
        pages=[page(fn("a", "5", concurrency={"reserved": 2}), version="10")],
        watches=[
            [
                event("ADDED", fn("b", "11")),
                event("MODIFIED", fn("a", "12", concurrency={"reserved": 0})),
                # A status-only update: same settings, nobody is told.
                event("MODIFIED", fn("a", "13", concurrency={"reserved": 0})),
                event("BOOKMARK", {"metadata": {"resourceVersion": "14"}}),
                event("DELETED", fn("b", "15")),
                event(
                    "ADDED",
                    fn("c", "16", schedules=[{"name": "t", "expression": "rate(1 hour)"}]),
                ),
            ]
        ],
    )
    directory, changes = run_directory(api)
    assert changes == [1, 2, 2, 1, 2]
    a = directory.get("ns", "a")
    assert a is not None
    assert (a.reserved, a.uid) == (0, "uid-a")
    assert directory.get("ns", "b") is None
    c = directory.get("ns", "c")
    assert c is not None
    assert [s.expression for s in c.schedules] == ["rate(1 hour)"]
    watches = [params for call, params in api.calls if call == "watch"]
    assert watches[0] == {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
        "resourceVersion": "10",
    }
    # The watch ended (server timeout): the next one resumes from the last version seen.
    assert watches[1]["resourceVersion"] == "16"
    assert directory.synced.is_set()


def test_410_lists_again_and_errors_reconnect() -> None:
    api = ScriptedApi(
        pages=[
            page(fn("a", "5"), version="10", token="next"),
            ApiError(410, "continue token expired"),  # the second page: start over
            page(fn("a", "5"), version="10", token="next"),
            page(fn("b", "6"), version="11"),
            page(fn("c", "20"), version="21"),  # after the Gone below
        ],
        watches=[
            ApiError(500, "etcd hiccup"),  # reconnect with backoff, same version
            [event("ERROR", {"code": 410, "message": "too old"})],
            [event("ADDED", fn("d", "22"))],
        ],
    )
    directory, _ = run_directory(api)
    assert sorted(directory.keys()) == [("ns", "c"), ("ns", "d")]
    lists = [params for call, params in api.calls if call == "list"]
    assert [params.get("continue") for params in lists] == [None, "next", None, "next", None]
    versions = [params.get("resourceVersion") for call, params in api.calls if call == "watch"]
    assert versions == ["11", "11", "21", "22"]


def test_unreadable_spec_keeps_the_last_known_settings() -> None:
    api = ScriptedApi(
        pages=[page(fn("a", "5", timeoutSeconds=30))],
        watches=[
            [
                event("MODIFIED", fn("a", "6", timeoutSeconds=30, **{"async": {"x": 1}})),
                event("ADDED", fn("b", "7", schedules=[{"name": "t", "expression": "rate(1)"}])),
            ]
        ],
    )
    directory, changes = run_directory(api)
    a = directory.get("ns", "a")
    assert a is not None
    assert a.timeout_s == 30
    assert directory.get("ns", "b") is None
    assert changes == [1]
