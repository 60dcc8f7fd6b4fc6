"""Schedule expressions: what the model accepts, and the message of each rejection.

The messages of syntax errors are the CRD's CEL messages (the API server says the same words);
the regular expressions behind them are also checked to mean the same in Python and RE2.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from kubelambda.api import FunctionSpec
from kubelambda.api.schedule import (
    CRON_FIELDS_PATTERN,
    EXPRESSION_RULES,
    CronExpression,
    DaysOfMonth,
    DaysOfWeek,
    RateExpression,
    Schedule,
    parse_expression,
)


def fn(*schedules: dict[str, Any]) -> dict[str, Any]:
    return {
        "runtime": "python3.11",
        "handler": "app.handler",
        "code": {"inline": {"app.py": ""}},
        "schedules": list(schedules),
    }


ALL_MINUTES = frozenset(range(60))
ALL_HOURS = frozenset(range(24))
ALL_MONTHS = frozenset(range(1, 13))
ALL_YEARS = frozenset(range(1970, 2200))
EVERY_DAY = DaysOfMonth(days=frozenset(range(1, 32)))


@pytest.mark.parametrize(
    ("expression", "period_s"),
    [
        ("rate(1 minute)", 60),
        ("rate(2 minutes)", 120),
        ("rate(1 hour)", 3600),
        ("rate(12 hours)", 43200),
        ("rate(1 day)", 86400),
        ("rate(7 days)", 604800),
        ("rate(10 seconds)", 10),
        ("rate(90 seconds)", 90),
    ],
)
def test_rate(expression: str, period_s: int) -> None:
    assert parse_expression(expression) == RateExpression(period_s)


# EventBridge's documented examples, and one of each special character.
CRONS = [
    (
        "cron(0 10 * * ? *)",
        CronExpression(frozenset({0}), frozenset({10}), EVERY_DAY, ALL_MONTHS, None, ALL_YEARS),
    ),
    (
        "cron(15 12 * * ? *)",
        CronExpression(frozenset({15}), frozenset({12}), EVERY_DAY, ALL_MONTHS, None, ALL_YEARS),
    ),
    (
        "cron(0 18 ? * MON-FRI *)",
        CronExpression(
            frozenset({0}),
            frozenset({18}),
            None,
            ALL_MONTHS,
            DaysOfWeek(weekdays=frozenset({2, 3, 4, 5, 6})),
            ALL_YEARS,
        ),
    ),
    (
        "cron(0 8 1 * ? *)",
        CronExpression(
            frozenset({0}),
            frozenset({8}),
            DaysOfMonth(days=frozenset({1})),
            ALL_MONTHS,
            None,
            ALL_YEARS,
        ),
    ),
    (
        "cron(0/15 * * * ? *)",
        CronExpression(
            frozenset({0, 15, 30, 45}), ALL_HOURS, EVERY_DAY, ALL_MONTHS, None, ALL_YEARS
        ),
    ),
    (
        "cron(0/5 8-17 ? * MON-FRI *)",
        CronExpression(
            frozenset(range(0, 60, 5)),
            frozenset(range(8, 18)),
            None,
            ALL_MONTHS,
            DaysOfWeek(weekdays=frozenset({2, 3, 4, 5, 6})),
            ALL_YEARS,
        ),
    ),
    (
        "cron(0 9 ? * 2#1 *)",
        CronExpression(
            frozenset({0}),
            frozenset({9}),
            None,
            ALL_MONTHS,
            DaysOfWeek(nth_of_month=frozenset({(2, 1)})),
            ALL_YEARS,
        ),
    ),
    (
        "cron(5,35 */6 L,LW,15W jan-mar/2,Dec ? 2025/5)",
        CronExpression(
            frozenset({5, 35}),
            frozenset({0, 6, 12, 18}),
            DaysOfMonth(last_day=True, last_weekday=True, nearest_weekday_to=frozenset({15})),
            frozenset({1, 3, 12}),
            None,
            frozenset(range(2025, 2200, 5)),
        ),
    ),
    (
        "cron(0 0 ? * L,6L,SUN *)",
        CronExpression(
            frozenset({0}),
            frozenset({0}),
            None,
            ALL_MONTHS,
            DaysOfWeek(weekdays=frozenset({7, 1}), last_of_month=frozenset({6})),
            ALL_YEARS,
        ),
    ),
]


@pytest.mark.parametrize(("expression", "parsed"), CRONS, ids=[c[0] for c in CRONS])
def test_cron(expression: str, parsed: CronExpression) -> None:
    assert parse_expression(expression) == parsed


KIND = "schedule expression must be rate(value unit) or cron("
RATE = "rate() takes '1 minute|hour|day'"
SIX = "cron() takes six fields"
QUESTION = "cron() needs ? in exactly one of day-of-month and day-of-week"
REJECTED = [
    ("every 5 minutes", KIND),
    ("Rate(1 minute)", KIND),
    ("rate(1 minutes)", RATE),
    ("rate(5 minute)", RATE),
    ("rate(0 minutes)", RATE),
    ("rate(1 second)", RATE),
    ("rate(9 seconds)", RATE),
    ("rate(1.5 hours)", RATE),
    ("rate(2 weeks)", RATE),
    ("rate( 5 minutes)", RATE),
    ("rate(5 minutes", RATE),
    ("cron(0 10 * * ?)", SIX),
    ("cron(0 10 * * ? * *)", SIX),
    ("cron(0  10 * * ? *)", SIX),
    ("cron(60 10 * * ? *)", "cron() minutes must be 0-59"),
    ("cron(0/0 10 * * ? *)", "cron() minutes must be 0-59"),
    ("cron(0 24 * * ? *)", "cron() hours must be 0-23"),
    ("cron(0 1 32 * ? *)", "cron() day-of-month must be ? or 1-31"),
    ("cron(0 1 0 * ? *)", "cron() day-of-month must be ? or 1-31"),
    ("cron(0 1 1-5W * ? *)", "cron() day-of-month must be ? or 1-31"),
    ("cron(0 1 * 13 ? *)", "cron() month must be 1-12 or JAN-DEC"),
    ("cron(0 1 * JANUARY ? *)", "cron() month must be 1-12 or JAN-DEC"),
    ("cron(0 1 ? * 8 *)", "cron() day-of-week must be ? or 1-7"),
    ("cron(0 1 ? * MON/2 *)", "cron() day-of-week must be ? or 1-7"),
    ("cron(0 1 ? * 2#6 *)", "cron() day-of-week must be ? or 1-7"),
    ("cron(0 1 * * ? 1969)", "cron() year must be 1970-2199"),
    ("cron(0 1 * * ? 2200)", "cron() year must be 1970-2199"),
    ("cron(0 10 * * * *)", QUESTION),
    ("cron(0 10 ? * ? *)", QUESTION),
    ("cron(0 10 1 * MON *)", QUESTION),
    ("cron(30-10 * * * ? *)", "cron() minutes: the range 30-10 runs backwards"),
    ("cron(0 0 ? * FRI-MON *)", "cron() day-of-week: the range FRI-MON runs backwards"),
    ("cron(0 0 * * ? 2030-2025)", "cron() year: the range 2030-2025 runs backwards"),
]


@pytest.mark.parametrize(("expression", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_expression(expression: str, message: str) -> None:
    with pytest.raises(ValidationError) as rejected:
        FunctionSpec.model_validate(fn({"name": "s", "expression": expression}))
    assert rejected.value.error_count() == 1
    assert message in str(rejected.value)


def cel_patterns(rule: str) -> list[str]:
    return re.findall(r"r'([^']*)'", rule)


def test_cel_rules_use_python_compatible_regexes() -> None:
    """Every pattern in the CRD's rules is a raw CEL string that compiles here too, and the
    rules' shape is what ``check_syntax`` mirrors: a guard, then the check."""
    for rule in EXPRESSION_RULES:
        for pattern in cel_patterns(rule.rule):
            re.compile(pattern)
    assert cel_patterns(EXPRESSION_RULES[2].rule) == [CRON_FIELDS_PATTERN]


@pytest.mark.parametrize(("expression", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_cel_rules_agree_with_the_model(expression: str, message: str) -> None:
    """The CEL rules, evaluated with Python's re: the first failing one is the model's message
    (for syntax errors; backward ranges only the model sees)."""

    def holds(rule: str) -> bool:
        # Each rule is "guard || check": `!startsWith(p) || matches(x)` or `!matches(a) ||
        # matches(b)`, or the kind rule (two startsWith).
        if rule.startswith("self.startsWith('rate(')"):
            return expression.startswith(("rate(", "cron("))
        guard, check = rule.split(" || ")
        if guard.startswith("!self.startsWith("):
            applies = expression.startswith(guard.split("'")[1])
        else:
            applies = re.search(cel_patterns(guard)[0], expression) is not None
        return not applies or re.search(cel_patterns(check)[0], expression) is not None

    failing = [rule.message for rule in EXPRESSION_RULES if not holds(rule.rule)]
    if "runs backwards" in message:
        assert failing == []
    else:
        assert failing
        assert message in failing[0]


def test_schedule_defaults_and_fields() -> None:
    schedule = Schedule.model_validate({"name": "nightly", "expression": "cron(0 3 * * ? *)"})
    assert schedule.enabled
    assert schedule.qualifier is None
    assert schedule.input is None
    dumped = Schedule(
        name="n", expression="rate(1 day)", qualifier="live", input='{"a": 1}'
    ).model_dump(mode="json")
    assert dumped == {
        "name": "n",
        "expression": "rate(1 day)",
        "qualifier": "live",
        "input": '{"a": 1}',
        "enabled": True,
    }


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "a b", "expression": "rate(1 day)"}, "String should match pattern"),
        ({"name": "x" * 65, "expression": "rate(1 day)"}, "String should match pattern"),
        ({"name": "a", "expression": "rate(1 day)", "input": "{not json"}, "must be a JSON"),
        ({"name": "a", "expression": "rate(1 day)", "qualifier": "a:b"}, "should match"),
        ({"name": "a", "expression": "rate(1 day)", "every": 1}, "Extra inputs"),
    ],
)
def test_rejected_schedule(schedule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        FunctionSpec.model_validate(fn(schedule))


def test_names_are_unique_and_the_list_is_bounded() -> None:
    same = {"name": "a", "expression": "rate(1 day)"}
    with pytest.raises(ValidationError, match="schedules names must be unique"):
        FunctionSpec.model_validate(fn(same, same))
    many = [{"name": f"s{i}", "expression": "rate(1 day)"} for i in range(17)]
    with pytest.raises(ValidationError, match="at most 16"):
        FunctionSpec.model_validate(fn(*many))
    assert len(FunctionSpec.model_validate(fn(*many[:16])).schedules) == 16
