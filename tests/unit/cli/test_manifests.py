"""Pure builders: Function, Alias and ApiRoute objects from flags and manifests."""

from __future__ import annotations

import pytest

from kubelambda.cli.errors import UsageError
from kubelambda.cli.manifests import (
    FunctionOptions,
    alias_manifest,
    alias_object_name,
    function_manifest,
    parse_assignments,
    parse_layer,
    parse_weight,
    route_manifest,
    route_object_name,
    route_path,
)

SHA = "a" * 64


def test_function_from_flags():
    options = FunctionOptions(
        name="hello",
        runtime="python3.11",
        handler="app.handler",
        memory_mb=256,
        environment={"GREETING": "hi"},
        layers=(("shared", 2),),
        publish=True,
    )
    assert function_manifest(options, SHA) == {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "hello"},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "memoryMB": 256,
            "publish": True,
            "environment": {"variables": {"GREETING": "hi"}},
            "layers": [{"name": "shared", "version": 2}],
            "code": {"zip": {"sha256": SHA}},
        },
    }


def test_manifest_with_flags_over_it_and_server_fields_dropped():
    manifest = {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "hello", "uid": "u", "resourceVersion": "9", "labels": {"a": "b"}},
        "spec": {
            "runtime": "python3.11",
            "handler": "app.handler",
            "memoryMB": 128,
            "environment": {"variables": {"AA": "1"}},
            "code": {"inline": {"app.py": "x"}},
        },
        "status": {"latestVersion": 3},
    }
    body = function_manifest(FunctionOptions(memory_mb=512, environment={"BB": "2"}), SHA, manifest)
    assert body["metadata"] == {"name": "hello", "labels": {"a": "b"}}
    assert body["spec"]["memoryMB"] == 512
    assert body["spec"]["environment"] == {"variables": {"AA": "1", "BB": "2"}}
    assert body["spec"]["code"] == {"zip": {"sha256": SHA}}
    assert "status" not in body
    assert manifest["spec"]["memoryMB"] == 128, "the manifest itself is left alone"


def test_invalid_settings_name_the_field():
    options = FunctionOptions(name="hello", runtime="python3.11", handler="a.b", memory_mb=64)
    with pytest.raises(UsageError, match=r"spec\.memoryMB"):
        function_manifest(options, SHA)


def test_a_name_is_required():
    with pytest.raises(UsageError, match="needs a name"):
        function_manifest(FunctionOptions(runtime="provided"), SHA)


def test_other_kinds_are_refused():
    with pytest.raises(UsageError, match="not a Function"):
        function_manifest(FunctionOptions(), SHA, {"kind": "Layer", "metadata": {"name": "x"}})


def test_flag_parsers():
    assert parse_assignments(["A=1", "B=x=y"], "--env") == {"A": "1", "B": "x=y"}
    assert parse_layer("shared:2") == ("shared", 2)
    assert parse_weight("3=0.25") == ("3", 0.25)
    for bad, parser in (("A", parse_assignments), ("shared", parse_layer), ("3=2", parse_weight)):
        with pytest.raises(UsageError):
            parser([bad], "--env") if parser is parse_assignments else parser(bad)


def test_alias_with_routing_and_provisioned_concurrency():
    body = alias_manifest("hello", "prod", "2", weight=("3", 0.1), provisioned=4)
    assert body["metadata"] == {"name": "hello-prod"}
    assert body["spec"] == {
        "function": "hello",
        "name": "prod",
        "version": "2",
        "routing": {"additionalVersion": "3", "weight": 0.1},
        "provisionedConcurrency": 4,
    }
    with pytest.raises(UsageError, match="routing"):
        alias_manifest("hello", "prod", "$LATEST", weight=("3", 0.1))


def test_object_names_are_dns_labels_and_distinct():
    odd = alias_object_name("hello", "Prod_1")
    assert odd.startswith("hello-prod-1-")
    assert odd == odd.lower()
    assert odd != alias_object_name("hello", "prod-1")
    names = {route_object_name("api", key) for key in ("GET /pets/{id}", "GET /pets/id")}
    assert len(names) == 2
    assert all(len(name) <= 63 for name in names)
    assert len(route_object_name("a" * 60, "GET /" + "b" * 300)) <= 63


def test_route_to_a_function():
    body = route_manifest("api", "GET /pets/{id}", function="pets", qualifier="prod")
    assert body["spec"] == {
        "api": "api",
        "routeKey": "GET /pets/{id}",
        "target": {"function": {"name": "pets", "qualifier": "prod"}},
    }
    with pytest.raises(UsageError):
        route_manifest("api", "FETCH /pets", function="pets")
    with pytest.raises(UsageError, match="exactly one"):
        route_manifest("api", "GET /pets", function="pets", http_url="http://x")
    assert route_path("GET /pets/{id}") == "/pets/{id}"
    assert route_path("$default") == "/"
