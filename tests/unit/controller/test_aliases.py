"""Alias readiness: which versions an alias names, and whether they exist."""

from __future__ import annotations

from typing import Any

import pytest

from kubelambda.controller.aliases import alias_problem

FUNCTION = {"metadata": {"name": "hello"}}


@pytest.mark.parametrize(
    ("spec", "function", "published", "problem"),
    [
        ({"function": "hello", "version": "1"}, FUNCTION, {"1"}, None),
        ({"function": "hello", "version": "$LATEST"}, FUNCTION, set(), None),
        ({"function": "gone", "version": "1"}, None, set(), "function gone does not exist"),
        (
            {"function": "hello", "version": "2"},
            FUNCTION,
            {"1"},
            "version 2 of hello is not published",
        ),
        (
            {"function": "hello", "version": "1", "routing": {"additionalVersion": "3"}},
            FUNCTION,
            {"1", "2"},
            "version 3 of hello is not published",
        ),
        (
            {"function": "hello", "version": "1", "routing": {"additionalVersion": "2"}},
            FUNCTION,
            {"1", "2"},
            None,
        ),
    ],
)
def test_alias_problem(
    spec: dict[str, Any], function: dict[str, Any] | None, published: set[str], problem: str | None
) -> None:
    assert alias_problem(spec, function, published) == problem
