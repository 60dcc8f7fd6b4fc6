"""Table-driven tests of the pydantic models: edge values accepted, each rule rejected."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubelambda.api import (
    AliasSpec,
    ApiModel,
    ApiRouteSpec,
    CodeSource,
    Condition,
    ConditionStatus,
    FunctionSpec,
    FunctionStatus,
    FunctionVersion,
    LayerSpec,
    Replicas,
    Runtime,
    is_reserved_env_name,
)

SHA = "0123456789abcdef" * 4


def fn(**changes: Any) -> dict[str, Any]:
    return {
        "runtime": "python3.11",
        "handler": "app.handler",
        "code": {"inline": {"app.py": "def handler(e, c): return e\n"}},
        **changes,
    }


def route(**changes: Any) -> dict[str, Any]:
    return {"routeKey": "GET /pets", "target": {"function": {"name": "hello"}}, **changes}


def metered(usage_plan: dict[str, Any]) -> dict[str, Any]:
    """A route taking API keys from Secret "keys" under ``usage_plan``."""
    return route(
        auth={"type": "API_KEY", "apiKey": {"secretName": "keys", "usagePlan": usage_plan}}
    )


def alias(**changes: Any) -> dict[str, Any]:
    return {"function": "hello", "name": "live", "version": "1", **changes}


def env(variables: dict[str, str]) -> dict[str, Any]:
    return fn(environment={"variables": variables})


ACCEPTED: list[tuple[type[ApiModel], dict[str, Any]]] = [
    (FunctionSpec, fn(memoryMB=128, timeoutSeconds=1, ephemeralStorageMB=512)),
    (FunctionSpec, fn(memoryMB=10240, timeoutSeconds=900, ephemeralStorageMB=10240)),
    (FunctionSpec, fn(layers=[{"name": f"l{i}", "version": 1} for i in range(5)])),
    (FunctionSpec, env({"AB": "x" * 4094})),  # exactly 4096 bytes
    (FunctionSpec, env({"AWS_LAMBDA_EXEC_WRAPPER": "/opt/w", "AWS_ACCESS_KEY_ID": "k"})),
    (FunctionSpec, {"code": {"image": "registry.example/fn@sha256:" + SHA}}),
    (FunctionSpec, {"runtime": "provided", "code": {"zip": {"sha256": SHA}}}),
    (FunctionSpec, fn(code={"inline": {"lib/util.py": "", ".env": "", "a/b..c": ""}})),
    (FunctionSpec, fn(concurrency={"reserved": 0})),
    (FunctionSpec, fn(concurrency={"reserved": 2}, scaling={"minInstances": 2, "maxInstances": 2})),
    (FunctionSpec, fn(**{"async": {"onSuccess": {"url": "https://hooks.example/done"}}})),
    (FunctionSpec, fn(**{"async": {"onFailure": {"function": "dlq:$LATEST"}}})),
    (AliasSpec, alias(name="v1")),
    (AliasSpec, alias(name="blue_green-2", version="$LATEST")),
    (AliasSpec, alias(routing={"additionalVersion": "2", "weight": 0.0})),
    (AliasSpec, alias(routing={"additionalVersion": "2", "weight": 1})),
    (ApiRouteSpec, route(routeKey="$default")),
    (ApiRouteSpec, route(routeKey="ANY /{proxy+}")),
    (ApiRouteSpec, route(routeKey="GET /")),
    (ApiRouteSpec, route(routeKey="DELETE /v1/pets/{petId}/toys/{rest+}")),
    (ApiRouteSpec, route(auth={"type": "API_KEY", "apiKey": {"secretName": "keys"}})),
    (
        ApiRouteSpec,
        metered(
            {
                "throttle": {"rateLimit": 10, "burstLimit": 20},
                "quota": {"limit": 1000, "period": "MONTH"},
            }
        ),
    ),
    (ApiRouteSpec, route(cors={"allowOrigins": ["https://a.example"], "allowCredentials": True})),
    (ApiRouteSpec, route(throttling={"rateLimit": 0, "burstLimit": 0})),
    (LayerSpec, {"content": {"image": "registry.example/layer:1"}}),
]

REJECTED: list[tuple[type[ApiModel], dict[str, Any], str]] = [
    (FunctionSpec, fn(memory=256), "Extra inputs are not permitted"),
    (FunctionSpec, fn(code={"inline": {"a": "x" * 40000, "b": "x" * 30000}}), "total at most"),
    (FunctionSpec, fn(code={"inline": {"/abs.py": ""}}), "inline file names"),
    (FunctionSpec, fn(code={"inline": {"a/./b.py": ""}}), "inline file names"),
    (FunctionSpec, fn(code={"inline": {"a//b.py": ""}}), "inline file names"),
    (FunctionSpec, fn(code={"zip": {"sha256": SHA, "url": "ftp://x/y.zip"}}), "pattern"),
    (FunctionSpec, fn(code={"zip": {"url": "https://x/y.zip"}}), "sha256"),
    (FunctionSpec, env({"AB": "x" * 4095}), "4096 bytes"),
    (FunctionSpec, env({"AB": "é" * 2048}), "4096 bytes"),  # bytes, not characters
    (FunctionSpec, env({"AWS_LAMBDA_FUNCTION_NAME": "x"}), "reserved names"),
    (FunctionSpec, env({"LAMBDA_TASK_ROOT": "x"}), "reserved names"),
    (FunctionSpec, env({"A": "x"}), "names must start with a letter"),
    (FunctionSpec, env({"_HANDLER": "x"}), "names must start with a letter"),
    (
        FunctionSpec,
        fn(
            environment={
                "fromSecrets": [{"name": "T1", "secretKeyRef": {"name": "s", "key": "k"}}] * 2
            }
        ),
        "fromSecrets names must be unique",
    ),
    (FunctionSpec, fn(layers=[{"name": "deps", "version": 0}]), "greater than or equal to 1"),
    (FunctionSpec, fn(layers=[{"name": "Deps", "version": 1}]), "pattern"),
    (FunctionSpec, fn(scaling={"idleSeconds": 86401}), "less than or equal to 86400"),
    (FunctionSpec, fn(scaling={"maxInstances": 0}), "greater than or equal to 1"),
    (FunctionSpec, fn(concurrency={"reserved": 0}, scaling={"minInstances": 1}), "reserved"),
    (FunctionSpec, fn(**{"async": {"onSuccess": {}}}), "exactly one of function, subject"),
    (FunctionSpec, fn(**{"async": {"onSuccess": {"subject": "a.*"}}}), "pattern"),
    (FunctionSpec, fn(code={"image": "my image"}, runtime=None), "pattern"),
    (FunctionSpec, fn(handler="h" * 129), "at most 128 characters"),
    (FunctionSpec, fn(description="d" * 257), "at most 256 characters"),
    (AliasSpec, alias(name="a.b"), "pattern"),
    (AliasSpec, alias(name="a" * 129), "at most 128 characters"),
    (AliasSpec, alias(name="0"), "all digits"),
    (AliasSpec, alias(routing={"additionalVersion": "2", "weight": -0.1}), "greater than or equal"),
    (AliasSpec, alias(routing={"additionalVersion": "$LATEST", "weight": 0.5}), "pattern"),
    (AliasSpec, alias(function="hello:live"), "pattern"),
    (ApiRouteSpec, route(routeKey="GET /pets/"), "pattern"),
    (ApiRouteSpec, route(routeKey="GET pets"), "pattern"),
    (ApiRouteSpec, route(routeKey="get /pets"), "pattern"),
    (ApiRouteSpec, route(routeKey="GET /{a+}/{b+}"), "pattern"),
    (ApiRouteSpec, route(routeKey="GET /pets/{id}.json"), "pattern"),
    (ApiRouteSpec, route(routeKey="$connect"), "pattern"),
    (ApiRouteSpec, route(auth={"jwt": {"issuer": "https://i", "audience": ["a"]}}), "auth.jwt"),
    (ApiRouteSpec, route(auth={"type": "API_KEY"}), "auth.apiKey"),
    (ApiRouteSpec, metered({"quota": {"limit": 5, "period": "YEAR"}}), "'DAY', 'WEEK' or 'MONTH'"),
    (ApiRouteSpec, metered({"quota": {"limit": 0, "period": "DAY"}}), "greater than or equal to 1"),
    (
        ApiRouteSpec,
        route(auth={"type": "JWT", "jwt": {"issuer": "https://i", "audience": []}}),
        "at least 1",
    ),
    (
        ApiRouteSpec,
        route(auth={"type": "FUNCTION", "function": {"name": "authz", "cacheTtlSeconds": 3601}}),
        "less than or equal to 3600",
    ),
    (
        ApiRouteSpec,
        route(auth={"type": "FUNCTION", "function": {"name": "authz", "identitySources": ["x"]}}),
        "pattern",
    ),
    (ApiRouteSpec, route(timeoutMillis=30001), "less than or equal to 30000"),
    (ApiRouteSpec, route(throttling={"rateLimit": -1, "burstLimit": 1}), "greater than or equal"),
    (ApiRouteSpec, route(throttling={"rateLimit": 1}), "burstLimit"),
    (ApiRouteSpec, route(cors={"allowMethods": ["FETCH"]}), "pattern"),
    (ApiRouteSpec, route(target={"http": {"url": "backend:8080"}}), "pattern"),
    (ApiRouteSpec, route(target={}), "exactly one of function or http"),
    (LayerSpec, {"content": {"inline": {"a": ""}, "image": "x"}}, "exactly one of"),
    (LayerSpec, {"content": {"image": "x"}, "compatibleRuntimes": ["java21"]}, "python3.11"),
]


@pytest.mark.parametrize(("model", "data"), ACCEPTED, ids=[model.__name__ for model, _ in ACCEPTED])
def test_accepts(model: type[ApiModel], data: dict[str, Any]) -> None:
    model.model_validate(data)


@pytest.mark.parametrize(("model", "data", "reason"), REJECTED, ids=[c[2] for c in REJECTED])
def test_rejects(model: type[ApiModel], data: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)):
        model.model_validate(data)


def test_function_spec_defaults() -> None:
    spec = FunctionSpec.model_validate(fn())
    assert (spec.memory_mb, spec.timeout_seconds, spec.ephemeral_storage_mb) == (128, 3, 512)
    assert spec.layers == ()
    assert spec.environment is None
    assert (spec.concurrency.reserved, spec.concurrency.per_instance) == (None, 1)
    assert (spec.scaling.min_instances, spec.scaling.max_instances) == (0, None)
    assert (spec.scaling.idle_seconds, spec.scaling.linger_seconds) == (60, 0)
    assert spec.async_config.maximum_retry_attempts == 2
    assert spec.async_config.maximum_event_age_seconds == 21600
    assert spec.publish is False


def test_route_defaults() -> None:
    spec = ApiRouteSpec.model_validate(route())
    assert (spec.api, spec.payload_format_version, spec.timeout_millis) == ("default", "2.0", 30000)
    assert spec.auth.type == "NONE"


def test_snake_case_in_python_camel_case_on_the_wire() -> None:
    spec = FunctionSpec(
        runtime=Runtime.NODEJS18,
        handler="index.handler",
        code=CodeSource(inline={"index.js": ""}),
        memory_mb=256,
    )
    dumped = spec.model_dump(mode="json", exclude_none=True)
    assert dumped["memoryMB"] == 256
    assert dumped["async"]["maximumRetryAttempts"] == 2
    assert FunctionSpec.model_validate(dumped) == spec


def test_models_are_immutable() -> None:
    spec = FunctionSpec.model_validate(fn())
    with pytest.raises(ValidationError, match="frozen"):
        spec.memory_mb = 256  # type: ignore[misc]


def test_status_dumps_as_the_crd_expects() -> None:
    status = FunctionStatus(
        observed_generation=3,
        conditions=(
            Condition(
                type="Ready",
                status=ConditionStatus.TRUE,
                reason="Deployed",
                last_transition_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            ),
        ),
        latest_version=2,
        versions=(
            FunctionVersion(version="$LATEST"),
            FunctionVersion(version="2", code_sha256=SHA),
        ),
        replicas=Replicas(desired=1, ready=1),
    )
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert dumped == {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Deployed",
                "message": "",
                "lastTransitionTime": "2024-01-02T03:04:05Z",
            }
        ],
        "latestVersion": 2,
        "versions": [{"version": "$LATEST"}, {"version": "2", "codeSha256": SHA}],
        "replicas": {"desired": 1, "ready": 1},
    }
    assert FunctionStatus.model_validate(dumped) == status


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("AWS_REGION", True),
        ("AWS_LAMBDA_RUNTIME_API", True),
        ("LAMBDA_RUNTIME_DIR", True),
        ("AWS_LAMBDA_EXEC_WRAPPER", False),
        ("AWS_ACCESS_KEY_ID", False),
        ("MY_AWS_REGION", False),
    ],
)
def test_reserved_env_names(name: str, reserved: bool) -> None:
    assert is_reserved_env_name(name) is reserved
