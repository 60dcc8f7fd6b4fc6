"""The schedule evaluator: next and last fire times of rate() and cron(), EventBridge semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubelambda.api.schedule import parse_expression
from kubelambda.invoker.schedule import last_fire, next_fire


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NEXT = [
    # rate(): whole multiples of the period since the epoch.
    ("rate(10 seconds)", "2024-03-05T12:00:05", "2024-03-05T12:00:10"),
    ("rate(10 seconds)", "2024-03-05T12:00:10", "2024-03-05T12:00:20"),
    ("rate(1 minute)", "2024-03-05T12:00:59.999", "2024-03-05T12:01:00"),
    ("rate(5 minutes)", "2024-03-05T12:03:00", "2024-03-05T12:05:00"),
    ("rate(1 hour)", "2024-03-05T12:30:00", "2024-03-05T13:00:00"),
    ("rate(1 day)", "2024-03-05T12:00:00", "2024-03-06T00:00:00"),
    # EventBridge's examples.
    ("cron(0 10 * * ? *)", "2024-03-05T09:59:59", "2024-03-05T10:00:00"),
    ("cron(0 10 * * ? *)", "2024-03-05T10:00:00", "2024-03-06T10:00:00"),
    ("cron(15 12 * * ? *)", "2024-03-05T12:15:30", "2024-03-06T12:15:00"),
    ("cron(0 18 ? * MON-FRI *)", "2024-03-08T18:00:00", "2024-03-11T18:00:00"),  # Fri -> Mon
    ("cron(0 8 1 * ? *)", "2024-01-01T08:00:00", "2024-02-01T08:00:00"),
    ("cron(0/15 * * * ? *)", "2024-03-05T10:07:00", "2024-03-05T10:15:00"),
    ("cron(0/15 * * * ? *)", "2024-12-31T23:50:00", "2025-01-01T00:00:00"),
    ("cron(0/10 * ? * MON-FRI *)", "2024-03-09T00:00:00", "2024-03-11T00:00:00"),  # Sat
    ("cron(0/5 8-17 ? * MON-FRI *)", "2024-03-08T17:55:00", "2024-03-11T08:00:00"),
    ("cron(0 9 ? * 2#1 *)", "2024-03-01T00:00:00", "2024-03-04T09:00:00"),  # 1st Monday
    ("cron(0 9 ? * 2#1 *)", "2024-03-04T09:00:00", "2024-04-01T09:00:00"),
    # L, W, LW, nL, and L alone in day-of-week (Saturday).
    ("cron(0 0 L * ? *)", "2024-02-01T00:00:00", "2024-02-29T00:00:00"),  # leap year
    ("cron(0 0 L * ? *)", "2023-02-01T00:00:00", "2023-02-28T00:00:00"),
    ("cron(0 0 LW * ? *)", "2024-03-01T00:00:00", "2024-03-29T00:00:00"),  # 31st a Sunday
    ("cron(0 0 15W * ? *)", "2024-06-01T00:00:00", "2024-06-14T00:00:00"),  # 15th a Saturday
    ("cron(0 0 1W * ? *)", "2024-05-31T01:00:00", "2024-06-03T00:00:00"),  # 1st a Saturday
    ("cron(0 0 31W * ? *)", "2024-03-01T00:00:00", "2024-03-29T00:00:00"),  # 31st a Sunday
    ("cron(0 0 31 * ? *)", "2024-04-01T00:00:00", "2024-05-31T00:00:00"),  # April has 30
    ("cron(0 0 ? * 6L *)", "2024-03-01T00:00:00", "2024-03-29T00:00:00"),  # last Friday
    ("cron(0 0 ? * L *)", "2024-03-05T00:00:00", "2024-03-09T00:00:00"),  # Saturday
    ("cron(0 0 ? * SUN#5 *)", "2024-01-01T00:00:00", "2024-03-31T00:00:00"),  # 5th Sunday
    # Months, years, names, lists.
    ("cron(0 12 29 2 ? *)", "2024-03-01T00:00:00", "2028-02-29T12:00:00"),
    ("cron(30 6 1 JAN,JUL ? 2025-2026)", "2024-08-01T00:00:00", "2025-01-01T06:30:00"),
    ("cron(30 6 1 JAN,JUL ? 2025-2026)", "2026-07-01T06:30:00", None),
    ("cron(0 0 30 2 ? *)", "2024-01-01T00:00:00", None),  # never
]


@pytest.mark.parametrize(("expression", "after", "expected"), NEXT, ids=[n[0] for n in NEXT])
def test_next_fire(expression: str, after: str, expected: str | None) -> None:
    fire = next_fire(parse_expression(expression), utc(after))
    assert fire == (utc(expected) if expected else None)


LAST = [
    ("rate(10 seconds)", "2024-03-05T12:00:19.9", "2024-03-05T12:00:10"),
    ("rate(10 seconds)", "2024-03-05T12:00:20", "2024-03-05T12:00:20"),
    ("rate(1 day)", "2024-03-05T12:00:00", "2024-03-05T00:00:00"),
    ("cron(0/15 * * * ? *)", "2024-03-05T10:07:30", "2024-03-05T10:00:00"),
    ("cron(0/15 * * * ? *)", "2024-03-05T10:15:00", "2024-03-05T10:15:00"),
    ("cron(0 9 ? * 2#1 *)", "2024-03-03T00:00:00", "2024-02-05T09:00:00"),
    ("cron(0 18 ? * MON-FRI *)", "2024-03-11T17:00:00", "2024-03-08T18:00:00"),
    ("cron(0 0 1 1 ? 2020)", "2024-06-01T00:00:00", "2020-01-01T00:00:00"),
    ("cron(0 0 1 1 ? 2030)", "2024-06-01T00:00:00", None),
]


@pytest.mark.parametrize(("expression", "at", "expected"), LAST, ids=[n[0] for n in LAST])
def test_last_fire(expression: str, at: str, expected: str | None) -> None:
    fire = last_fire(parse_expression(expression), utc(at))
    assert fire == (utc(expected) if expected else None)


def test_a_time_zone_other_than_utc_is_the_same_moment() -> None:
    expression = parse_expression("cron(0 10 * * ? *)")
    paris = datetime.fromisoformat("2024-03-05T10:30:00+01:00")  # 09:30 UTC
    assert next_fire(expression, paris) == utc("2024-03-05T10:00:00")


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0/7 */5 ? * MON,WED,6L *)",
        "cron(13 1,13 LW,1,15W * ? *)",
        "cron(0 0 ? FEB-APR 2#2,L 2024-2025)",
        "rate(7 minutes)",
    ],
)
def test_walking_forward_and_backward_meet_the_same_fire_times(expression: str) -> None:
    parsed = parse_expression(expression)
    start, end = utc("2024-01-30T00:00:00"), utc("2024-04-02T00:00:00")
    forward = []
    fire = next_fire(parsed, start)
    while fire is not None and fire < end:
        forward.append(fire)
        fire = next_fire(parsed, fire)
    backward = []
    fire = last_fire(parsed, end - timedelta(microseconds=1))
    while fire is not None and fire > start:
        backward.append(fire)
        fire = last_fire(parsed, fire - timedelta(seconds=1))
    assert forward
    assert forward == backward[::-1]
