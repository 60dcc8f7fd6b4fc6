"""Taking a pod from the warm pool: which pods are on offer, the specialisation as the claim
(a pod another claimant got is skipped, one that refuses the code is deleted), the relabel
once the runtime is up, and the pool Deployments a namespace's annotation asks for. Pool pods
are real HTTP servers; the API server is faked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from kubelambda.controller import pool
from kubelambda.controller.config import OperatorConfig
from kubelambda.controller.pool import PoolPods, Specialization, adopt_pool_pod, reconcile_pools
from kubelambda.resources.pool import POOL_ANNOTATION, SPECIALIZATION_ANNOTATION, pool_token
from tests.unit.ports import free_port

NAMESPACE = "team-a"
PLAN = {"pool": "python3.11", "hash": "h1", "request": {"env": {"A": "1"}, "unpack": {}}}
DEPLOYMENT = {
    "metadata": {
        "name": "fn-hello-latest",
        "namespace": NAMESPACE,
        "uid": "u1",
        "labels": {"kubelambda.io/function": "hello", "kubelambda.io/version": "latest"},
        "annotations": {SPECIALIZATION_ANNOTATION: json.dumps(PLAN)},
    }
}


def pool_pod(
    name: str, ip: str = "127.0.0.1", ready: bool = True, state: str = "idle"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubelambda.io/pool": "python3-11", "kubelambda.io/pool-state": state},
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_only_ready_idle_live_pool_pods_are_on_offer() -> None:
    pods = PoolPods()
    pods.observe("ADDED", pool_pod("a"))
    pods.observe("ADDED", pool_pod("starting", ready=False))
    pods.observe("ADDED", pool_pod("no-ip", ip=""))
    pods.observe("ADDED", pool_pod("going"))
    pods.observe("DELETED", pool_pod("going"))
    assert pods.take(NAMESPACE, "nodejs18") is None
    assert pods.take("elsewhere", "python3-11") is None
    assert pods.take(NAMESPACE, "python3-11") == ("a", "127.0.0.1")
    assert pods.take(NAMESPACE, "python3-11") is None  # taken once only


def test_a_pod_that_left_its_pool_is_no_longer_on_offer() -> None:
    pods = PoolPods()
    pods.observe("ADDED", pool_pod("a"))
    adopted = pool_pod("a")
    adopted["metadata"]["labels"] = {"kubelambda.io/function": "hello"}
    pods.observe("MODIFIED", adopted)
    assert pods.take(NAMESPACE, "python3-11") is None


class FakeAgent:
    """A pool pod's agent: answers specialisations with ``status``, then reports ready."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts: list[tuple[str, Any]] = []
        self.health_checks = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/specialize", self.specialize)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def specialize(self, request: web.Request) -> web.Response:
        self.posts.append((request.headers["Authorization"], await request.json()))
        return web.json_response({"errorMessage": "no"}, status=self.status)

    async def healthz(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.json_response({}, status=503 if self.health_checks < 3 else 200)


class FakeApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []

    def patch(self, api: str, kind: str, name: str, namespace: str, body: Any) -> bool:
        self.patches.append((name, body))
        return True

    def delete(self, api: str, kind: str, name: str, namespace: str) -> None:
        self.deleted.append(name)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(pool.kube, "patch", fake.patch)
    monkeypatch.setattr(pool.kube, "delete", fake.delete)
    monkeypatch.setattr(pool, "POOL_PODS", PoolPods())
    monkeypatch.setattr(pool, "INIT_POLL_S", 0.01)
    return fake


def run_with_agents(
    monkeypatch: pytest.MonkeyPatch, agents: dict[str, FakeAgent]
) -> tuple[str, bool] | None:
    """Pool pods named like ``agents``, on 127.0.0.x; adopt one, await the relabel."""
    port = free_port()
    monkeypatch.setattr(pool, "INVOKE_PORT", port)

    async def scenario() -> tuple[str, bool] | None:
        runners = []
        for index, (name, agent) in enumerate(agents.items()):
            runner = web.AppRunner(agent.app())
            await runner.setup()
            await web.TCPSite(runner, f"127.0.0.{index + 1}", port).start()
            runners.append(runner)
            pool.POOL_PODS.observe("ADDED", pool_pod(name, ip=f"127.0.0.{index + 1}"))
        try:
            plan = Specialization.of(DEPLOYMENT)
            assert plan is not None
            taken = await adopt_pool_pod(DEPLOYMENT, plan, "key")
            if taken is None:
                return None
            name, relabel = taken
            return name, await relabel
        finally:
            for runner in runners:
                await runner.cleanup()

    return asyncio.run(scenario())


def test_the_specialisation_is_the_claim_and_the_relabel_follows_the_init(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = FakeAgent(200)
    assert run_with_agents(monkeypatch, {"pod-a": agent}) == ("pod-a", True)
    ((authorization, body),) = agent.posts
    assert authorization == f"Bearer {pool_token('key', NAMESPACE)}"
    assert body == PLAN["request"]
    assert agent.health_checks == 3  # relabelled once it said ready, not before
    ((name, patch),) = api.patches
    assert name == "pod-a"
    assert patch["metadata"]["labels"]["kubelambda.io/specialized"] == "h1"
    assert patch["metadata"]["labels"]["kubelambda.io/pool"] is None
    assert patch["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert api.deleted == []


@pytest.mark.parametrize("taken_status", [404, 409])
def test_a_pod_someone_else_specialised_is_skipped(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, taken_status: int
) -> None:
    agents = {"pod-a": FakeAgent(taken_status), "pod-b": FakeAgent(200)}
    assert run_with_agents(monkeypatch, agents) == ("pod-b", True)
    assert api.deleted == []
    assert [name for name, _ in api.patches] == ["pod-b"]


def test_a_pod_that_refuses_the_code_is_deleted_and_the_deployment_takes_over(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_with_agents(monkeypatch, {"pod-a": FakeAgent(422)}) is None
    assert api.deleted == ["pod-a"]
    assert api.patches == []


def test_an_empty_pool_gives_nothing(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_with_agents(monkeypatch, {}) is None


def test_a_namespace_gets_the_pools_its_annotation_asks_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applied: list[dict[str, Any]] = []
    deleted: list[str] = []
    existing = [
        {
            "metadata": {
                "name": "kubelambda-pool-nodejs18",
                "labels": {"kubelambda.io/pool": "nodejs18"},
            }
        },
        {
            "metadata": {
                "name": "kubelambda-pool-python3-11",
                "labels": {"kubelambda.io/pool": "python3-11"},
            }
        },
    ]
    monkeypatch.setattr(pool.kube, "list_objects", lambda *args: existing)
    monkeypatch.setattr(pool.kube, "apply", lambda body, ns: applied.append(body) or body)
    monkeypatch.setattr(pool.kube, "delete", lambda api, kind, name, ns: deleted.append(name))
    config = OperatorConfig(store_signing_key="key")
    reconcile_pools(NAMESPACE, {POOL_ANNOTATION: "python3.11=3"}, config)
    assert [(d["metadata"]["name"], d["spec"]["replicas"]) for d in applied] == [
        ("kubelambda-pool-python3-11", 3)
    ]
    env = applied[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBELAMBDA_POOL_TOKEN", "value": pool_token("key", NAMESPACE)} in env
    assert deleted == ["kubelambda-pool-nodejs18"]
