"""The autoscaler's use of the warm pool: a scale from zero takes a pool pod when the version
has a specialization, adopted pods count as instances, go first on scale-down, and are retired
when their version changes. The API server is faked; the decisions are real."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

from kubelambda.autoscaler.policy import Decision, ScalingPolicy
from kubelambda.autoscaler.scaler import ScaleAction, VersionKey
from kubelambda.controller import autoscaling
from kubelambda.controller.pool import Specialization
from kubelambda.resources.names import SCALING_ANNOTATION
from kubelambda.resources.pool import SPECIALIZATION_ANNOTATION, SPECIALIZED_LABEL

KEY: VersionKey = ("team-a", "hello", "$LATEST")
LABELS = {"kubelambda.io/function": "hello", "kubelambda.io/version": "latest"}


def deployment(replicas: int, plan_hash: str | None = "h1") -> dict[str, Any]:
    annotations = {SCALING_ANNOTATION: ScalingPolicy(per_instance=1).to_json()}
    if plan_hash is not None:
        plan = {"pool": "python3.11", "hash": plan_hash, "request": {"env": {}, "unpack": {}}}
        annotations[SPECIALIZATION_ANNOTATION] = json.dumps(plan)
    return {
        "metadata": {
            "name": "fn-hello-latest",
            "namespace": "team-a",
            "uid": "u1",
            "labels": LABELS,
            "annotations": annotations,
        },
        "spec": {"replicas": replicas},
        "status": {"readyReplicas": replicas},
    }


def adopted_pod(name: str, plan_hash: str = "h1", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {**LABELS, SPECIALIZED_LABEL: plan_hash},
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class FakeCluster:
    def __init__(self) -> None:
        self.scaled: list[int] = []
        self.deleted: list[str] = []
        self.pool: list[str] = []
        self.adoptions: list[str] = []
        self.gone: set[str] = set()
        """Pods deleted before their relabel."""

    def scale(self, name: str, namespace: str, replicas: int, manager: str) -> bool:
        self.scaled.append(replicas)
        return True

    def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        self.deleted.append(name)

    async def adopt(
        self, deployment: Any, plan: Specialization, signing_key: str
    ) -> tuple[str, Awaitable[bool]] | None:
        if not self.pool:
            return None
        name = self.pool.pop(0)
        self.adoptions.append(f"{name}:{plan.plan_hash}")
        return name, self.relabel(name)

    async def relabel(self, name: str) -> bool:
        return name not in self.gone


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    fake = FakeCluster()
    monkeypatch.setattr(autoscaling, "_deployments", {})
    monkeypatch.setattr(autoscaling, "_adopted", {})
    monkeypatch.setattr(autoscaling.kube, "scale", fake.scale)
    monkeypatch.setattr(autoscaling.kube, "delete", fake.delete)
    monkeypatch.setattr(autoscaling.kube, "apply_status", lambda *args: None)
    monkeypatch.setattr(autoscaling, "adopt_pool_pod", fake.adopt)
    monkeypatch.setattr(autoscaling.SERVICE, "signing_key", "key")
    yield fake
    autoscaling.SERVICE.scaler.forget(KEY)


def run(coroutine: Any) -> Any:
    async def with_background_tasks() -> Any:
        result = await coroutine
        await asyncio.sleep(0.05)  # let deletions in threads finish
        return result

    return asyncio.run(with_background_tasks())


def decide(current: int, replicas: int) -> bool:
    action = ScaleAction(KEY, current, Decision(replicas, "test"))
    autoscaling.SERVICE.scaler.scaled(action)  # as the decision pass does
    return bool(run(autoscaling.apply_decision(action)))


def instances() -> int:
    return autoscaling.SERVICE.scaler.workloads[KEY].replicas


def test_a_scale_from_zero_takes_a_pool_pod_and_the_deployment_the_rest(
    cluster: FakeCluster,
) -> None:
    cluster.pool = ["pool-a"]
    autoscaling.observe_deployment("ADDED", deployment(0))
    assert decide(0, 3)
    assert cluster.adoptions == ["pool-a:h1"]
    assert cluster.scaled == [2]
    # The watch catches up: two Deployment pods plus the adopted one.
    autoscaling.observe_deployment("MODIFIED", deployment(2))
    assert instances() == 3


def test_an_empty_pool_leaves_the_scale_up_to_the_deployment(cluster: FakeCluster) -> None:
    autoscaling.observe_deployment("ADDED", deployment(0))
    assert decide(0, 1)
    assert cluster.scaled == [1]


def test_a_version_without_a_specialization_never_asks_the_pool(cluster: FakeCluster) -> None:
    cluster.pool = ["pool-a"]
    autoscaling.observe_deployment("ADDED", deployment(0, plan_hash=None))
    assert decide(0, 1)
    assert cluster.adoptions == []
    assert cluster.scaled == [1]


def test_only_a_scale_from_zero_asks_the_pool(cluster: FakeCluster) -> None:
    cluster.pool = ["pool-a"]
    autoscaling.observe_deployment("ADDED", deployment(1))
    assert decide(1, 2)
    assert cluster.adoptions == []
    assert cluster.scaled == [2]


def test_adopted_pods_count_as_instances_and_go_first(cluster: FakeCluster) -> None:
    autoscaling.observe_deployment("ADDED", deployment(1))
    autoscaling.observe_adopted_pod("ADDED", adopted_pod("pool-a"))
    autoscaling.observe_adopted_pod("ADDED", adopted_pod("pool-b", ready=False))
    assert instances() == 3
    assert autoscaling.SERVICE.scaler.workloads[KEY].ready == 2
    assert decide(3, 1)
    assert sorted(cluster.deleted) == ["pool-a", "pool-b"]
    assert cluster.scaled == [1]
    autoscaling.observe_adopted_pod("DELETED", adopted_pod("pool-a"))
    autoscaling.observe_adopted_pod("DELETED", adopted_pod("pool-b"))
    assert instances() == 1


def test_scale_to_zero_lets_the_adopted_pod_go(cluster: FakeCluster) -> None:
    autoscaling.observe_deployment("ADDED", deployment(0))
    autoscaling.observe_adopted_pod("ADDED", adopted_pod("pool-a"))
    assert instances() == 1
    assert decide(1, 0)
    assert cluster.deleted == ["pool-a"]
    assert cluster.scaled == [0]


def test_a_changed_version_retires_pods_specialised_with_the_old_one(
    cluster: FakeCluster,
) -> None:
    autoscaling.observe_deployment("ADDED", deployment(0, plan_hash="h1"))
    autoscaling.observe_adopted_pod("ADDED", adopted_pod("pool-a", plan_hash="h1"))
    run(asyncio.sleep(0))
    assert cluster.deleted == []

    async def change() -> None:
        autoscaling.observe_deployment("MODIFIED", deployment(0, plan_hash="h2"))

    run(change())
    assert cluster.deleted == ["pool-a"]
    assert instances() == 0


def test_a_pod_that_went_away_no_longer_counts(cluster: FakeCluster) -> None:
    autoscaling.observe_deployment("ADDED", deployment(0))
    autoscaling.observe_adopted_pod("ADDED", adopted_pod("pool-a"))
    failed = adopted_pod("pool-a")
    failed["status"]["phase"] = "Failed"
    autoscaling.observe_adopted_pod("MODIFIED", failed)
    assert instances() == 0


def test_a_pool_pod_gone_before_its_relabel_no_longer_counts(cluster: FakeCluster) -> None:
    cluster.pool = ["pool-a"]
    cluster.gone = {"pool-a"}
    autoscaling.observe_deployment("ADDED", deployment(0))
    assert decide(0, 1)
    assert cluster.adoptions == ["pool-a:h1"]
    assert cluster.scaled == [0]
    assert autoscaling._adopted[KEY] == {}
    assert instances() == 0


def test_a_deployment_event_during_the_specialisation_does_not_hide_the_pool_pod(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch may report the Deployment (still at zero) while the pool pod is being
    specialised: the pod counts once it is taken, or the next pass would take another."""
    autoscaling.observe_deployment("ADDED", deployment(0))
    adopt = cluster.adopt

    async def slow_adopt(*args: Any) -> Any:
        taken = await adopt(*args)
        autoscaling.observe_deployment("MODIFIED", deployment(0))  # arrives meanwhile
        return taken

    monkeypatch.setattr(autoscaling, "adopt_pool_pod", slow_adopt)
    cluster.pool = ["pool-a"]
    assert decide(0, 1)
    assert instances() == 1
