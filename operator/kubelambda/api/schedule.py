"""Scheduled triggers: EventBridge-style ``rate()`` and ``cron()`` expressions on a Function.

An expression is checked twice with the same words: the CRD carries one CEL rule per syntax
check (regular expressions, so ``kubectl apply`` refuses a malformed expression naming the
field), and :func:`parse_expression` applies the same rules in the same order before the checks
a regular expression cannot make (a range that runs backwards). The parsed form
(:class:`RateExpression` / :class:`CronExpression`) is what the invoker's evaluator reads.

Semantics are EventBridge's, in UTC: ``cron(minutes hours day-of-month month day-of-week
year)`` with ``?`` in exactly one of the two day fields, ``L`` (last day of the month; alone
in day-of-week: Saturday), ``W`` (nearest weekday), ``LW`` (last weekday of the month),
``nL`` (last n-day of the month), ``n#k`` (k-th n-day of the month), ranges, lists, ``/``
steps, and the names JAN-DEC and SUN-SAT (day-of-week 1 is Sunday). ``rate(1 minute)``,
``rate(N minutes|hours|days)`` with N > 1, and, a kubelambda extension, ``rate(N seconds)``
with N >= 10.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from kubelambda.api.base import ApiModel
from kubelambda.api.cel import CelRule, JsonDict, cel_rules, require

MAX_SCHEDULES = 16
MAX_EXPRESSION_LENGTH = 256
MAX_INPUT_LENGTH = 8192  # EventBridge's limit on a target's constant input
MIN_RATE_SECONDS = 10
SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
QUALIFIER_PATTERN = r"^(\$LATEST|[A-Za-z0-9_-]{1,128})$"

RATE_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# --- the syntax, as regular expressions valid in both RE2 (CEL) and Python ---------------------

_COUNT = r"[1-9][0-9]{1,5}"  # 10 .. 999999
RATE_PATTERN = (
    r"^rate\((1 (minute|hour|day)"
    rf"|([2-9]|{_COUNT}) (minutes|hours|days)"
    rf"|{_COUNT} seconds)\)$"
)
CRON_FIELDS_PATTERN = r"^cron\(\S+( \S+){5}\)$"

_MINUTE = r"[0-5]?[0-9]"
_HOUR = r"(2[0-3]|[01]?[0-9])"
_DAY = r"(3[01]|[12][0-9]|0?[1-9])"
_MONTH = r"(1[0-2]|0?[1-9]|(?i:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC))"
_WEEKDAY = r"([1-7]|(?i:SUN|MON|TUE|WED|THU|FRI|SAT))"
_YEAR = r"(19[7-9][0-9]|2[01][0-9][0-9])"
_STEP = r"/[1-9][0-9]{0,2}"


def _list_of(item: str) -> str:
    return f"({item})(,({item}))*"


def _stepped(value: str) -> str:
    """``*``, a value or a range, each optionally with a ``/step``."""
    return rf"(\*|{value}(-{value})?)({_STEP})?"


_DAY_OF_MONTH_ITEM = rf"{_stepped(_DAY)}|L|LW|{_DAY}W"
_DAY_OF_WEEK_ITEM = rf"\*|{_WEEKDAY}(-{_WEEKDAY})?|L|{_WEEKDAY}L|{_WEEKDAY}#[1-5]"
CRON_FIELD_PATTERNS = (
    _list_of(_stepped(_MINUTE)),
    _list_of(_stepped(_HOUR)),
    rf"(\?|{_list_of(_DAY_OF_MONTH_ITEM)})",
    _list_of(_stepped(_MONTH)),
    rf"(\?|{_list_of(_DAY_OF_WEEK_ITEM)})",
    _list_of(_stepped(_YEAR)),
)
# '?' in day-of-month and not in day-of-week, or the other way round.
CRON_ONE_QUESTION_MARK_PATTERN = r"^cron\(\S+ \S+ (\? \S+ [^?\s]\S*|[^?\s]\S* \S+ \?) \S+\)$"


def _field_at(position: int, pattern: str) -> str:
    """A regular expression for a whole cron() whose field ``position`` matches ``pattern``."""
    before = r"\S+ " * position
    after = r" \S+" * (len(CRON_FIELD_PATTERNS) - 1 - position)
    return rf"^cron\({before}({pattern}){after}\)$"


# --- the rules, shared by the CRD and the model ----------------------------------------------

EXPRESSION_KIND = CelRule(
    rule="self.startsWith('rate(') || self.startsWith('cron(')",
    message=(
        "schedule expression must be rate(value unit) or"
        " cron(minutes hours day-of-month month day-of-week year)"
    ),
)
RATE_SYNTAX = CelRule(
    rule=f"!self.startsWith('rate(') || self.matches(r'{RATE_PATTERN}')",
    message=(
        "rate() takes '1 minute|hour|day', 'N minutes|hours|days' with N > 1,"
        f" or 'N seconds' with N >= {MIN_RATE_SECONDS}"
    ),
)
CRON_SIX_FIELDS = CelRule(
    rule=f"!self.startsWith('cron(') || self.matches(r'{CRON_FIELDS_PATTERN}')",
    message=(
        "cron() takes six fields separated by single spaces:"
        " minutes hours day-of-month month day-of-week year"
    ),
)
_FIELD_TEXTS = (
    "minutes must be 0-59, with , - * /",
    "hours must be 0-23, with , - * /",
    "day-of-month must be ? or 1-31, with , - * / L W",
    "month must be 1-12 or JAN-DEC, with , - * /",
    "day-of-week must be ? or 1-7 or SUN-SAT (1 is Sunday), with , - * L #",
    "year must be 1970-2199, with , - * /",
)
CRON_FIELD_RULES = tuple(
    CelRule(
        rule=(
            f"!self.matches(r'{CRON_FIELDS_PATTERN}')"
            f" || self.matches(r'{_field_at(position, pattern)}')"
        ),
        message=f"cron() {text}",
    )
    for position, (pattern, text) in enumerate(zip(CRON_FIELD_PATTERNS, _FIELD_TEXTS, strict=True))
)
CRON_ONE_QUESTION_MARK = CelRule(
    rule=(
        f"!self.matches(r'{CRON_FIELDS_PATTERN}')"
        f" || self.matches(r'{CRON_ONE_QUESTION_MARK_PATTERN}')"
    ),
    message="cron() needs ? in exactly one of day-of-month and day-of-week",
)
EXPRESSION_RULES = (
    EXPRESSION_KIND,
    RATE_SYNTAX,
    CRON_SIX_FIELDS,
    *CRON_FIELD_RULES,
    CRON_ONE_QUESTION_MARK,
)

# --- the parsed form -------------------------------------------------------------------------


@dataclass(frozen=True)
class RateExpression:
    period_s: int


@dataclass(frozen=True)
class DaysOfMonth:
    days: frozenset[int] = frozenset()
    last_day: bool = False  # L
    last_weekday: bool = False  # LW
    nearest_weekday_to: frozenset[int] = frozenset()  # nW


@dataclass(frozen=True)
class DaysOfWeek:
    """Days numbered as in cron: 1 is Sunday, 7 Saturday."""

    weekdays: frozenset[int] = frozenset()
    last_of_month: frozenset[int] = frozenset()  # nL: the last n-day of the month
    nth_of_month: frozenset[tuple[int, int]] = frozenset()  # n#k: (n, k)


@dataclass(frozen=True)
class CronExpression:
    """Exactly one of ``days_of_month`` and ``days_of_week`` is set (the other was ``?``)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: DaysOfMonth | None
    months: frozenset[int]
    days_of_week: DaysOfWeek | None
    years: frozenset[int]


ScheduleExpression = RateExpression | CronExpression

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i

    def value(self, text: str) -> int:
        upper = text.upper()
        return self.low + self.names.index(upper) if upper in self.names else int(text)

    def values(self, item: str) -> frozenset[int]:
        """``*``, ``a``, ``a-b``, each optionally followed by ``/step``."""
        spread, _, step = item.partition("/")
        if spread == "*":
            first, last = self.low, self.high
        else:
            start, _, end = spread.partition("-")
            first = self.value(start)
            # "a/step" runs to the end of the field, as in EventBridge's 0/15.
            last = self.value(end) if end else (self.high if step else first)
            if first > last:
                raise ValueError(f"cron() {self.name}: the range {spread} runs backwards")
        return frozenset(range(first, last + 1, int(step) if step else 1))


_MINUTES = _Field("minutes", 0, 59)
_HOURS = _Field("hours", 0, 23)
_DAYS_OF_MONTH = _Field("day-of-month", 1, 31)
_MONTHS = _Field("month", 1, 12, _MONTH_NAMES)
_DAYS_OF_WEEK = _Field("day-of-week", 1, 7, _WEEKDAY_NAMES)
_YEARS = _Field("year", 1970, 2199)
SATURDAY = 7


def _union(field: _Field, text: str) -> frozenset[int]:
    return frozenset().union(*(field.values(item) for item in text.split(",")))


def _days_of_month(text: str) -> DaysOfMonth | None:
    if text == "?":
        return None
    days: set[int] = set()
    nearest: set[int] = set()
    last_day = last_weekday = False
    for item in text.split(","):
        if item == "L":
            last_day = True
        elif item == "LW":
            last_weekday = True
        elif item.endswith("W"):
            nearest.add(int(item[:-1]))
        else:
            days |= _DAYS_OF_MONTH.values(item)
    return DaysOfMonth(frozenset(days), last_day, last_weekday, frozenset(nearest))


def _days_of_week(text: str) -> DaysOfWeek | None:
    if text == "?":
        return None
    weekdays: set[int] = set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for item in text.split(","):
        if item == "L":
            weekdays.add(SATURDAY)  # the last day of the week
        elif item.endswith("L"):
            last.add(_DAYS_OF_WEEK.value(item[:-1]))
        elif "#" in item:
            day, _, week = item.partition("#")
            nth.add((_DAYS_OF_WEEK.value(day), int(week)))
        else:
            weekdays |= _DAYS_OF_WEEK.values(item)
    return DaysOfWeek(frozenset(weekdays), frozenset(last), frozenset(nth))


def check_syntax(expression: str) -> None:
    """The CRD's CEL rules, in Python: raises ``ValueError`` with the first failing message."""
    require(expression.startswith(("rate(", "cron(")), EXPRESSION_KIND)
    if expression.startswith("rate("):
        require(re.search(RATE_PATTERN, expression) is not None, RATE_SYNTAX)
        return
    require(re.search(CRON_FIELDS_PATTERN, expression) is not None, CRON_SIX_FIELDS)
    for position, rule in enumerate(CRON_FIELD_RULES):
        pattern = _field_at(position, CRON_FIELD_PATTERNS[position])
        require(re.search(pattern, expression) is not None, rule)
    matched = re.search(CRON_ONE_QUESTION_MARK_PATTERN, expression)
    require(matched is not None, CRON_ONE_QUESTION_MARK)


def parse_expression(expression: str) -> ScheduleExpression:
    """The parsed form of a schedule expression; raises ``ValueError`` naming the problem."""
    check_syntax(expression)
    kind, _, rest = expression.partition("(")
    body = rest.removesuffix(")")
    if kind == "rate":
        count, unit = body.split(" ")
        return RateExpression(int(count) * RATE_UNIT_SECONDS[unit.removesuffix("s")])
    minutes, hours, day_of_month, month, day_of_week, year = body.split(" ")
    return CronExpression(
        minutes=_union(_MINUTES, minutes),
        hours=_union(_HOURS, hours),
        days_of_month=_days_of_month(day_of_month),
        months=_union(_MONTHS, month),
        days_of_week=_days_of_week(day_of_week),
        years=_union(_YEARS, year),
    )


def _check_expression(expression: str) -> str:
    parse_expression(expression)
    return expression


def _check_input(text: str | None) -> str | None:
    if text is not None:
        try:
            json.loads(text)
        except ValueError:
            raise ValueError("input must be a JSON document (it is the event)") from None
    return text


class Schedule(ApiModel):
    """A scheduled trigger: an asynchronous (Event) invocation at each time the expression
    names, like an EventBridge schedule rule targeting the function. Times are UTC."""

    name: str = Field(pattern=SCHEDULE_NAME_PATTERN)
    """Unique among the function's schedules (letters, digits, '-' and '_')."""
    expression: Annotated[
        str,
        Field(max_length=MAX_EXPRESSION_LENGTH, json_schema_extra=cel_rules(*EXPRESSION_RULES)),
        AfterValidator(_check_expression),
    ]
    """rate(1 minute), rate(N minutes|hours|days), rate(N seconds) with N >= 10 (kubelambda
    only), or cron(minutes hours day-of-month month day-of-week year) as in EventBridge, UTC.
    rate() fires at whole multiples of its period since 1970-01-01T00:00:00Z."""
    qualifier: str | None = Field(default=None, max_length=128, pattern=QUALIFIER_PATTERN)
    """Version or alias to invoke; $LATEST when unset."""
    input: Annotated[
        str | None, Field(max_length=MAX_INPUT_LENGTH), AfterValidator(_check_input)
    ] = None
    """JSON event to deliver; by default EventBridge's Scheduled Event (source aws.events)."""
    enabled: bool = True
    """A disabled schedule does not fire; enabling it again does not catch up."""


def check_unique_names(schedules: tuple[Schedule, ...]) -> tuple[Schedule, ...]:
    """The API server enforces this through ``x-kubernetes-list-type: map``."""
    names = [schedule.name for schedule in schedules]
    if len(set(names)) != len(names):
        raise ValueError("schedules names must be unique")
    return schedules


SCHEDULES_LIST: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
"""``json_schema_extra`` of the schedules list: one entry per name, merged by name under SSA."""
