"""Reserved concurrency over every gateway: slots granted against the cap, released, freed by a
holder's report or by its silence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from kubelambda.autoscaler.leases import ConcurrencyLeases, HeldLeases, held_from_json

TTL = 3.0
A, B = "gw-a", "gw-b"
FN, OTHER = ("team", "hello"), ("team", "other")


@dataclass(frozen=True)
class Acquire:
    holder: str
    lease: int
    granted: bool = True
    reserved: int = 2
    function: tuple[str, str] = FN
    now: float = 0.0


@dataclass(frozen=True)
class Release:
    holder: str
    lease: int
    now: float = 0.0


@dataclass(frozen=True)
class Report:
    holder: str
    last: int | None  # None: a report without the leases field (an older gateway)
    held: tuple[int, ...] = ()
    now: float = 0.0


@dataclass(frozen=True)
class Held:
    expected: dict[tuple[str, str], int]
    now: float = 0.0


Step = Acquire | Release | Report | Held

CASES: dict[str, list[Step]] = {
    "the cap holds over all holders": [
        Acquire(A, 1),
        Acquire(B, 1),
        Acquire(A, 2, granted=False),
        Acquire(B, 2, granted=False),
        Held({FN: 2}),
    ],
    "a release frees the slot for any holder": [
        Acquire(A, 1),
        Acquire(A, 2),
        Acquire(B, 1, granted=False),
        Release(A, 1),
        Acquire(B, 2),
        Acquire(B, 3, granted=False),
        Held({FN: 2}),
    ],
    "each function has its own count": [
        Acquire(A, 1, reserved=1),
        Acquire(A, 2, reserved=1, function=OTHER),
        Acquire(B, 1, reserved=1, granted=False),
        Held({FN: 1, OTHER: 1}),
    ],
    "a cap of 0 grants nothing": [Acquire(A, 1, reserved=0, granted=False), Held({})],
    "a lowered cap grants again once enough slots ended": [
        Acquire(A, 1),
        Acquire(A, 2),
        Acquire(A, 3, reserved=1, granted=False),
        Release(A, 1),
        Acquire(A, 4, reserved=1, granted=False),
        Release(A, 2),
        Acquire(A, 5, reserved=1),
    ],
    "an acquire repeated counts once": [Acquire(A, 1), Acquire(A, 1), Acquire(A, 2), Held({FN: 2})],
    "a release repeated or unknown changes nothing": [
        Acquire(A, 1),
        Acquire(B, 1),
        Release(A, 1),
        Release(A, 1),
        Release(A, 7),
        Release(B, 9),
        Held({FN: 1}),
    ],
    "a report frees the holder's older leases it does not list (lost releases)": [
        Acquire(A, 1),
        Acquire(A, 2),
        Acquire(B, 1, granted=False),
        Report(A, last=2, held=(2,)),
        Held({FN: 1}),
        Acquire(B, 2),
    ],
    "a report keeps leases newer than itself (their acquire overtook it)": [
        Acquire(A, 1),
        Acquire(A, 3),
        Report(A, last=2, held=()),
        Held({FN: 1}),
        Release(A, 3),
        Held({}),
    ],
    "a report only touches its holder's leases": [
        Acquire(A, 1),
        Acquire(B, 1),
        Report(A, last=5, held=()),
        Held({FN: 1}),
    ],
    "a report never adds a lease": [Report(A, last=5, held=(1, 2)), Held({})],
    "a holder silent for longer than the TTL loses its slots": [
        Acquire(A, 1, now=0),
        Acquire(B, 1, now=1),
        Held({FN: 2}, now=TTL),
        Acquire(B, 2, granted=False, now=TTL),
        Held({FN: 1}, now=TTL + 0.5),
        Acquire(B, 3, now=TTL + 0.5),
        Held({FN: 2}, now=TTL + 0.5),
    ],
    "any word from a holder keeps it alive, a report without leases too": [
        Acquire(A, 1, now=0),
        Acquire(A, 2, granted=False, reserved=1, now=2),
        Report(A, last=None, now=4),
        Release(A, 9, now=6),
        Held({FN: 1}, now=6 + TTL),
        Held({}, now=6 + TTL + 0.1),
    ],
    "a holder back after its slots were freed starts over": [
        Acquire(A, 1, now=0),
        Held({}, now=TTL + 1),
        Release(A, 1, now=TTL + 1),
        Acquire(A, 2, now=TTL + 1),
        Held({FN: 1}, now=TTL + 1),
    ],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_leases(steps: list[Step]) -> None:
    leases = ConcurrencyLeases(ttl_s=TTL)
    for i, step in enumerate(steps):
        match step:
            case Acquire(holder, lease, granted, reserved, function, now):
                got = leases.acquire(holder, lease, function, reserved, now)
                assert got is granted, (i, step)
            case Release(holder, lease, now):
                leases.release(holder, lease, now)
            case Report(holder, last, held, now):
                account = None if last is None else HeldLeases(last, frozenset(held))
                leases.report(holder, account, now)
            case Held(expected, now):
                assert leases.held(now) == expected, (i, step)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"last": 4, "held": [2, 4]}, HeldLeases(4, frozenset({2, 4}))),
        ({"last": 0}, HeldLeases(0, frozenset())),
        ({"last": 3, "held": []}, HeldLeases(3, frozenset())),
    ],
)
def test_held_from_json(value: Any, expected: HeldLeases) -> None:
    assert held_from_json(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"held": [1]},
        {"last": -1},
        {"last": "3"},
        {"last": True},
        {"last": 3, "held": 2},
        {"last": 3, "held": [1.5]},
    ],
)
def test_held_from_json_refuses_malformed(value: Any) -> None:
    with pytest.raises(ValueError, match="lease"):
        held_from_json(value)
