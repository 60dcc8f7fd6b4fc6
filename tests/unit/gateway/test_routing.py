"""The routing table: names, ARNs and qualifiers, aliases, endpoints, error shapes."""

from __future__ import annotations

import random

import pytest

from kubelambda.gateway.routing import (
    ALIAS,
    ENDPOINT_SLICE,
    FUNCTION,
    RouteError,
    RoutingTable,
    Target,
    version_from_slug,
)
from tests.unit.gateway.objects import (
    add,
    add_alias,
    add_function,
    add_slice,
    alias_obj,
    function_obj,
    slice_obj,
)

ARN = "arn:aws:lambda:us-east-1:000000000000:function"


@pytest.fixture
def table() -> RoutingTable:
    table = RoutingTable()
    add_function(table, "hello", versions=("1", "2"), timeout=10, reserved=5, per_instance=2)
    add_function(table, "other", namespace="team-a")
    add_alias(table, "hello", "live", "1")
    add_alias(table, "hello", "latest-alias", "$LATEST")
    add_alias(table, "hello", "canary", "1", additional="2", weight=0.25)
    return table


def resolved(result: Target | RouteError) -> Target:
    assert isinstance(result, Target), result
    return result


@pytest.mark.parametrize(
    ("ref", "qualifier", "version", "invoked_arn"),
    [
        ("hello", None, "$LATEST", f"{ARN}:hello"),
        ("hello", "$LATEST", "$LATEST", f"{ARN}:hello:$LATEST"),
        ("hello:$LATEST", None, "$LATEST", f"{ARN}:hello:$LATEST"),
        ("hello:1", None, "1", f"{ARN}:hello:1"),
        ("hello", "2", "2", f"{ARN}:hello:2"),
        ("hello:2", "2", "2", f"{ARN}:hello:2"),  # the same qualifier twice is fine
        ("hello:live", None, "1", f"{ARN}:hello:live"),
        ("hello", "latest-alias", "$LATEST", f"{ARN}:hello:latest-alias"),
        (f"{ARN}:hello", None, "$LATEST", f"{ARN}:hello"),
        (f"{ARN}:hello:1", None, "1", f"{ARN}:hello:1"),
        (
            "arn:aws:lambda:eu-west-3:123456789012:function:hello:live",
            None,
            "1",
            f"{ARN}:hello:live",
        ),
        ("000000000000:function:hello", None, "$LATEST", f"{ARN}:hello"),
        ("000000000000:function:hello:2", None, "2", f"{ARN}:hello:2"),
    ],
)
def test_resolve_names_arns_and_qualifiers(table, ref, qualifier, version, invoked_arn):
    target = resolved(table.resolve("default", ref, qualifier))
    assert (target.namespace, target.function, target.version) == ("default", "hello", version)
    assert target.invoked_arn == invoked_arn
    assert target.key == ("default", "hello", version)
    assert target.function_key == ("default", "hello")


@pytest.mark.parametrize(
    ("namespace", "ref", "qualifier", "error"),
    [
        (
            "default",
            "nope",
            None,
            RouteError(404, "ResourceNotFoundException", f"Function not found: {ARN}:nope"),
        ),
        (
            "default",
            "other",
            None,
            RouteError(404, "ResourceNotFoundException", f"Function not found: {ARN}:other"),
        ),
        (
            "default",
            "hello",
            "3",
            RouteError(404, "ResourceNotFoundException", f"Function not found: {ARN}:hello:3"),
        ),
        (
            "default",
            "hello:ghost",
            None,
            RouteError(404, "ResourceNotFoundException", f"Function not found: {ARN}:hello:ghost"),
        ),
        (
            "team-a",
            "hello",
            None,
            RouteError(404, "ResourceNotFoundException", f"Function not found: {ARN}:hello"),
        ),
        (
            "default",
            "hello:1",
            "2",
            RouteError(
                400,
                "InvalidParameterValueException",
                "The derived qualifier from the function name does not match the specified"
                " qualifier.",
            ),
        ),
    ],
)
def test_resolve_errors(table, namespace, ref, qualifier, error):
    assert table.resolve(namespace, ref, qualifier) == error


@pytest.mark.parametrize(
    ("ref", "qualifier"),
    [("bad name", None), ("hello:a:b", None), ("", None), ("x" * 171, None), ("hello", "bad q")],
)
def test_resolve_rejects_malformed_names(table, ref, qualifier):
    error = table.resolve("default", ref, qualifier)
    assert isinstance(error, RouteError)
    assert (error.status, error.code) == (400, "ValidationException")


def test_namespaces_are_separate(table):
    assert resolved(table.resolve("team-a", "other")).namespace == "team-a"


def test_function_config_from_spec_and_defaults(table):
    config = resolved(table.resolve("default", "hello")).config
    assert (config.timeout_s, config.reserved, config.per_instance) == (10, 5, 2)
    assert config.published == frozenset({"1", "2"})
    defaults = resolved(table.resolve("team-a", "other")).config
    assert (defaults.timeout_s, defaults.reserved, defaults.per_instance) == (3, None, 1)


def test_version_timeout_known_only_for_latest_unless_status_says():
    table = RoutingTable()
    obj = function_obj("fn", timeout=7, versions=("1", "2"))
    obj["status"]["versions"][1]["timeoutSeconds"] = 60
    add(table, FUNCTION, obj)
    assert resolved(table.resolve("default", "fn")).timeout_s == 7
    assert resolved(table.resolve("default", "fn:1")).timeout_s == 60
    assert resolved(table.resolve("default", "fn:2")).timeout_s is None


def test_reserved_zero_is_kept():
    table = RoutingTable()
    add_function(table, "fn", reserved=0)
    assert resolved(table.resolve("default", "fn")).config.reserved == 0


def test_alias_weights_follow_the_random_draw(table):
    assert resolved(table.resolve("default", "hello:canary", rand=lambda: 0.24)).version == "2"
    assert resolved(table.resolve("default", "hello:canary", rand=lambda: 0.25)).version == "1"


def test_alias_weights_statistically(table):
    rng = random.Random(42)
    runs = 20000
    seen = [
        resolved(table.resolve("default", "hello:canary", rand=rng.random)).version
        for _ in range(runs)
    ]
    share = seen.count("2") / runs
    assert abs(share - 0.25) < 0.015  # > 5 standard deviations of a binomial(20000, 0.25)
    assert set(seen) == {"1", "2"}


def test_alias_to_an_unpublished_version_is_not_found():
    table = RoutingTable()
    add_function(table, "fn", versions=("1",))
    add_alias(table, "fn", "next", "5")
    error = table.resolve("default", "fn:next")
    assert isinstance(error, RouteError)
    assert error.status == 404


def test_alias_updates_renames_and_deletes():
    table = RoutingTable()
    add_function(table, "fn", versions=("1", "2"))
    add(table, ALIAS, alias_obj("fn", "live", "1", object_name="a"))
    assert resolved(table.resolve("default", "fn:live")).version == "1"
    table.apply(
        ALIAS, {"type": "MODIFIED", "object": alias_obj("fn", "live", "2", object_name="a")}
    )
    assert resolved(table.resolve("default", "fn:live")).version == "2"
    # Renamed: the old name is gone.
    table.apply(
        ALIAS, {"type": "MODIFIED", "object": alias_obj("fn", "prod", "2", object_name="a")}
    )
    assert isinstance(table.resolve("default", "fn:live"), RouteError)
    assert resolved(table.resolve("default", "fn:prod")).version == "2"
    # Two objects claim one name: deleting one leaves the other's.
    add(table, ALIAS, alias_obj("fn", "prod", "1", object_name="b"))
    table.apply(ALIAS, {"type": "DELETED", "object": alias_obj("fn", "prod", "1", object_name="b")})
    assert resolved(table.resolve("default", "fn:prod")).version == "2"
    table.apply(ALIAS, {"type": "DELETED", "object": alias_obj("fn", "prod", "2", object_name="a")})
    assert isinstance(table.resolve("default", "fn:prod"), RouteError)


def test_function_deleted():
    table = RoutingTable()
    add_function(table, "fn")
    table.apply(FUNCTION, {"type": "DELETED", "object": function_obj("fn")})
    assert isinstance(table.resolve("default", "fn"), RouteError)


def test_endpoints_from_slices():
    table = RoutingTable()
    changed: list[tuple[str, str, str]] = []
    table.on_endpoints_changed = changed.append
    add_slice(table, "fn", "$LATEST", ["10.0.0.1", "10.0.0.2"], name="s1")
    add_slice(table, "fn", "$LATEST", ["10.0.0.3"], port=9000, name="s2")
    add_slice(table, "fn", "3", ["10.0.1.1"], name="s3")
    latest = ("default", "fn", "$LATEST")
    assert table.endpoints(latest) == (("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 9000))
    assert table.endpoints(("default", "fn", "3")) == (("10.0.1.1", 8080),)
    assert changed == [latest, latest, ("default", "fn", "3")]
    table.apply(
        ENDPOINT_SLICE, {"type": "DELETED", "object": slice_obj("fn", "$LATEST", [], name="s1")}
    )
    assert table.endpoints(latest) == (("10.0.0.3", 9000),)
    table.apply(
        ENDPOINT_SLICE,
        {
            "type": "MODIFIED",
            "object": slice_obj("fn", "$LATEST", ["10.0.0.3"], port=9000, name="s2", ready=False),
        },
    )
    assert table.endpoints(latest) == ()


def test_endpoint_conditions():
    table = RoutingTable()
    obj = slice_obj("fn", "$LATEST", ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
    obj["endpoints"][1]["conditions"] = {"ready": False}
    obj["endpoints"][2]["conditions"] = {}  # unset means ready
    obj["endpoints"][3]["conditions"] = {"ready": False, "terminating": True}
    add(table, ENDPOINT_SLICE, obj)
    assert table.endpoints(("default", "fn", "$LATEST")) == (("10.0.0.1", 8080), ("10.0.0.3", 8080))


def test_foreign_slices_are_ignored():
    table = RoutingTable()
    obj = slice_obj("fn", "$LATEST", ["10.0.0.1"])
    del obj["metadata"]["labels"]["kubelambda.io/function"]
    add(table, ENDPOINT_SLICE, obj)
    weird = slice_obj("fn", "$LATEST", ["10.0.0.1"], name="w")
    weird["metadata"]["labels"]["kubelambda.io/version"] = "nonsense"
    add(table, ENDPOINT_SLICE, weird)
    assert table.endpoints(("default", "fn", "$LATEST")) == ()


def test_replace_drops_what_is_gone():
    table = RoutingTable()
    changed: list[tuple[str, str, str]] = []
    add_function(table, "old")
    add_slice(table, "old", "$LATEST", ["10.0.0.1"])
    table.on_endpoints_changed = changed.append
    table.replace(FUNCTION, [function_obj("new")])
    table.replace(ENDPOINT_SLICE, [slice_obj("new", "$LATEST", ["10.0.0.9"])])
    assert isinstance(table.resolve("default", "old"), RouteError)
    assert resolved(table.resolve("default", "new")).function == "new"
    assert table.endpoints(("default", "old", "$LATEST")) == ()
    assert table.endpoints(("default", "new", "$LATEST")) == (("10.0.0.9", 8080),)
    assert ("default", "old", "$LATEST") in changed


@pytest.mark.parametrize(
    ("slug", "version"), [("latest", "$LATEST"), ("v12", "12"), ("v", None), ("x1", None)]
)
def test_version_from_slug(slug, version):
    assert version_from_slug(slug) == version


def test_region_in_arns():
    table = RoutingTable("eu-west-1")
    assert (
        table.function_arn("fn", "live") == "arn:aws:lambda:eu-west-1:000000000000:function:fn:live"
    )
