"""Reserved concurrency counted over every gateway replica: the one count per function.

A function's reserved concurrency caps its invocations in flight over all gateways, so no
gateway can count it alone. A gateway (a *holder*) asks for a slot before it invokes a function
with a reserved cap (``acquire``) and gives it back afterwards (``release``). A slot is a *lease*
the holder numbers itself, counting up and never reusing a number: a release names exactly the
slot it ends (a duplicate counts once), and the holder's periodic report can say exactly which of
its slots are still in use.

A slot can outlive its invocation in two ways, and each has its end here:

- Its release was lost (the post failed; or the acquire's answer never came back, so the
  gateway counted that invocation locally): the holder's report lists the leases it still holds
  or still awaits an answer for, with the last number it had given out then. Its older leases
  missing from the list are over (``report``). Newer ones are kept: their acquire may have
  overtaken the report, which travels on another connection.
- The holder is gone (gateway pod deleted, crashed, cut off): once it has been silent (no
  report, acquire or release) for longer than the TTL, all its slots are freed.

A count only grows through ``acquire``, which checks the cap, and a report never adds a lease: so
the cap holds exactly while every gateway asks. It can be exceeded when a gateway counts locally
because the autoscaler does not answer, and after an autoscaler restart (the slots in flight
then are unknown to the new process until they end). Pure: the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubelambda.autoscaler.scaler import REPORT_TTL_S

FunctionKey = tuple[str, str]
"""(namespace, function)."""


@dataclass(frozen=True)
class HeldLeases:
    """A holder's own account, sent with its report: of the leases it numbered up to ``last``,
    those still in use or awaiting the acquire's answer (``ids``)."""

    last: int
    ids: frozenset[int]


@dataclass
class _Holder:
    seen: float
    leases: dict[int, FunctionKey] = field(default_factory=dict)


class ConcurrencyLeases:
    """Slots per function over live holders. A holder is known only while it holds a slot."""

    def __init__(self, ttl_s: float = REPORT_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._holders: dict[str, _Holder] = {}
        self._held: dict[FunctionKey, int] = {}

    def acquire(
        self, holder: str, lease: int, function: FunctionKey, reserved: int, now: float
    ) -> bool:
        """A slot of ``function`` for ``holder``'s lease ``lease``, if fewer than ``reserved``
        are held over all live holders; False (counting nothing) if not."""
        self.expire(now)
        state = self._holders.get(holder)
        if state is not None:
            state.seen = now
            if lease in state.leases:  # asked twice: it is counted already
                return True
        held = self._held.get(function, 0)
        if held >= reserved:
            return False
        if state is None:
            state = self._holders[holder] = _Holder(now)
        state.leases[lease] = function
        self._held[function] = held + 1
        return True

    def release(self, holder: str, lease: int, now: float) -> None:
        """The lease's invocation ended. Unknown leases are ignored: released already, freed by a
        report or a timeout, or never granted."""
        state = self._holders.get(holder)
        if state is None:
            return
        state.seen = now
        function = state.leases.pop(lease, None)
        if function is not None:
            self._free(function)
        if not state.leases:
            del self._holders[holder]

    def report(self, holder: str, held: HeldLeases | None, now: float) -> None:
        """``holder`` is alive; with ``held`` (its own account), its leases numbered up to
        ``held.last`` and not listed are over: their releases were lost."""
        state = self._holders.get(holder)
        if state is None:
            return
        state.seen = now
        if held is None:
            return
        for lease, function in list(state.leases.items()):
            if lease <= held.last and lease not in held.ids:
                del state.leases[lease]
                self._free(function)
        if not state.leases:
            del self._holders[holder]

    def expire(self, now: float) -> None:
        """Free every slot of the holders silent for longer than the TTL."""
        for name, state in list(self._holders.items()):
            if now - state.seen > self._ttl_s:
                for function in state.leases.values():
                    self._free(function)
                del self._holders[name]

    def held(self, now: float) -> dict[FunctionKey, int]:
        """Slots in use per function (with at least one), over live holders."""
        self.expire(now)
        return dict(self._held)

    def _free(self, function: FunctionKey) -> None:
        count = self._held[function] - 1
        if count:
            self._held[function] = count
        else:
            del self._held[function]


def number_from_json(value: Any, name: str) -> int:
    """A lease number or a reserved cap from JSON; raises ValueError if it is not one."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def held_from_json(value: Any) -> HeldLeases:
    """A report's ``leases`` object, ``{"last": N, "held": [ids]}``; raises ValueError if
    malformed."""
    if not isinstance(value, dict):
        raise ValueError("leases must be an object")
    ids: Iterable[Any] = value.get("held") or []
    if not isinstance(ids, list):
        raise ValueError("leases.held must be a list")
    return HeldLeases(
        number_from_json(value.get("last"), "leases.last"),
        frozenset(number_from_json(i, "each held lease") for i in ids),
    )
