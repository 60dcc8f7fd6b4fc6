"""When a schedule fires: the next fire time after a moment, and the last one at or before it.

Pure functions of a parsed expression (``kubelambda.api.schedule.parse_expression``) and an
aware datetime, in UTC. ``rate()`` fires at whole multiples of its period since the epoch, so
every invoker replica computes the same times without talking to the others. ``cron()``
fires on whole minutes and is searched field by field (year, month, day, hour, minute),
skipping whole years and months that cannot match, so even a yearly expression is cheap.
``None`` means the expression never fires in that direction again (e.g. a past year).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta

from kubelambda.api.schedule import (
    CronExpression,
    DaysOfMonth,
    DaysOfWeek,
    RateExpression,
    ScheduleExpression,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SATURDAY = 5  # date.weekday()
_SUNDAY = 6


def next_fire(expression: ScheduleExpression, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after``."""
    if isinstance(expression, RateExpression):
        return _rate_floor(expression, after) + timedelta(seconds=expression.period_s)
    return next(_cron_times(expression, after, forward=True), None)


def last_fire(expression: ScheduleExpression, at: datetime) -> datetime | None:
    """The latest fire time at or before ``at``."""
    if isinstance(expression, RateExpression):
        return _rate_floor(expression, at)
    return next(_cron_times(expression, at, forward=False), None)


def _rate_floor(expression: RateExpression, moment: datetime) -> datetime:
    elapsed = (moment - _EPOCH) // timedelta(seconds=expression.period_s)
    return _EPOCH + elapsed * timedelta(seconds=expression.period_s)


def cron_weekday(day: date) -> int:
    """Day of the week as cron numbers it: 1 is Sunday, 7 Saturday."""
    return (day.weekday() + 1) % 7 + 1


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """The weekday closest to ``day`` without leaving the month (EventBridge's ``W``)."""
    weekday = date(year, month, day).weekday()
    if weekday == _SATURDAY:
        return day - 1 if day > 1 else day + 2
    if weekday == _SUNDAY:
        return day + 1 if day < length else day - 2
    return day


def _days_of_month(spec: DaysOfMonth, year: int, month: int, length: int) -> set[int]:
    days = {day for day in spec.days if day <= length}
    if spec.last_day:
        days.add(length)
    if spec.last_weekday:
        days.add(_nearest_weekday(year, month, length, length))
    days.update(
        _nearest_weekday(year, month, day, length)
        for day in spec.nearest_weekday_to
        if day <= length
    )
    return days


def _days_of_week(spec: DaysOfWeek, year: int, month: int, length: int) -> set[int]:
    days = set()
    for day in range(1, length + 1):
        weekday = cron_weekday(date(year, month, day))
        if (
            weekday in spec.weekdays
            or (weekday in spec.last_of_month and day + 7 > length)
            or (weekday, (day - 1) // 7 + 1) in spec.nth_of_month
        ):
            days.add(day)
    return days


def matching_days(expression: CronExpression, year: int, month: int) -> set[int]:
    """The days of one month the expression fires on."""
    length = calendar.monthrange(year, month)[1]
    if expression.days_of_month is not None:
        return _days_of_month(expression.days_of_month, year, month, length)
    assert expression.days_of_week is not None  # the parser guarantees one of the two
    return _days_of_week(expression.days_of_week, year, month, length)


def _cron_times(expression: CronExpression, origin: datetime, forward: bool) -> Iterator[datetime]:
    """Fire times moving away from ``origin``: after it (forward) or at/before it (backward).

    A prefix (year, month, ...) that lies wholly on the wrong side of ``origin`` is skipped
    without looking inside it; only the prefixes of ``origin`` itself are entered partially.
    """
    utc = origin.astimezone(UTC)
    start = (utc.year, utc.month, utc.day, utc.hour, utc.minute)

    def ordered(values: Iterable[int]) -> list[int]:
        return sorted(values, reverse=not forward)

    def skipped(prefix: tuple[int, ...]) -> bool:
        mine = start[: len(prefix)]
        return prefix < mine if forward else prefix > mine

    for year in ordered(expression.years):
        if skipped((year,)):
            continue
        for month in ordered(expression.months):
            if skipped((year, month)):
                continue
            for day in ordered(matching_days(expression, year, month)):
                if skipped((year, month, day)):
                    continue
                for hour in ordered(expression.hours):
                    if skipped((year, month, day, hour)):
                        continue
                    for minute in ordered(expression.minutes):
                        moment = (year, month, day, hour, minute)
                        # Whole minutes: "after 10:05:30" excludes 10:05, "at 10:05:30" has it.
                        if (moment > start) if forward else (moment <= start):
                            yield datetime(*moment, tzinfo=UTC)
