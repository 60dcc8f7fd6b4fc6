"""Usage plans: each API key's throttle and quota, as API Gateway's usage plans apply them.

A request whose key the route accepted is admitted by its plan in two steps:

- **Throttle**: a token bucket per key and throttle setting, per gateway replica (the
  trade-off route throttling makes too: N replicas admit up to N times the rate). Over it:
  429 "Too Many Requests".
- **Quota**: requests per key and period (UTC day, ISO week from Monday, calendar month),
  counted by a ``QuotaCounter`` that every gateway replica shares, so the limit holds exactly
  behind a Service and across restarts. Over it: 429 "Limit Exceeded". A request refused by
  its quota gives its count back, so the count is of the requests the plan admitted (whatever
  the integration then answered). A replica remembers a spent key until the period ends, so
  hammering it costs the counter nothing. While the counter cannot be reached the request
  gets 503: a quota that cannot be checked is not waived.

A key's count covers every route of its API that names the same Secret and quota period.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from kubelambda.gateway.apiroutes import ApiKeyPolicy
from kubelambda.gateway.throttle import Throttles

log = logging.getLogger(__name__)

WARNING_INTERVAL_S = 10.0  # an unreachable counter is logged this often, not per request
MAX_SPENT_KEYS = 10_000


class CounterUnavailable(Exception):
    """The shared count could not be read or changed."""


class QuotaCounter(Protocol):
    async def add(self, counter: str, delta: int) -> int:
        """Adds ``delta`` to ``counter`` (created at 0) and returns its new value; raises
        ``CounterUnavailable``."""
        ...

    def give_back(self, counter: str) -> None:
        """Subtracts one without waiting for the answer (best effort)."""
        ...

    async def close(self) -> None:
        """Finishes what ``give_back`` started."""
        ...


class Admission(enum.Enum):
    ADMITTED = "admitted"
    THROTTLED = "throttled"  # 429 Too Many Requests
    OVER_QUOTA = "over quota"  # 429 Limit Exceeded
    UNAVAILABLE = "unavailable"  # 503: the quota could not be checked


def period_label(period: str, epoch_s: float) -> str:
    """The period an instant falls in: ``20261123`` (DAY), ``2026W48`` (WEEK), ``202611``."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    if period == "DAY":
        return moment.strftime("%Y%m%d")
    if period == "WEEK":
        year, week, _ = moment.isocalendar()
        return f"{year}W{week:02d}"
    if period == "MONTH":
        return moment.strftime("%Y%m")
    raise ValueError(f"unknown quota period {period!r}")


KeyIdentity = tuple[str, str, str, str]  # namespace, API, Secret, key id


def counter_name(key: KeyIdentity, period: str, epoch_s: float) -> str:
    """A NATS-subject-safe name of one key's count in one period.

    Secret names and key ids may hold dots, which subjects cannot; a digest of the parts keeps
    the name safe and fixed in length, and the period label stays readable after it."""
    digest = hashlib.sha256("\0".join((*key, period)).encode())
    return f"{digest.hexdigest()[:32]}.{period_label(period, epoch_s)}"


class UsagePlans:
    def __init__(
        self,
        counter: QuotaCounter | None,
        monotonic: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._counter = counter
        self._monotonic = monotonic
        self._throttles = Throttles(monotonic)
        self._wall_clock = wall_clock
        self._spent: dict[str, int] = {}  # counter name -> the limit it reached
        self._warned_at = -WARNING_INTERVAL_S

    async def admit(self, namespace: str, api: str, policy: ApiKeyPolicy, key_id: str) -> Admission:
        identity: KeyIdentity = (namespace, api, policy.secret_name, key_id)
        # Routes with different throttles keep apart buckets: a shared one would start full
        # again at every switch between them.
        if policy.throttle is not None and not self._throttles.allow(
            (*identity, *policy.throttle), *policy.throttle
        ):
            return Admission.THROTTLED
        if policy.quota is None:
            return Admission.ADMITTED
        limit, period = policy.quota
        name = counter_name(identity, period, self._wall_clock())
        if self._spent.get(name, 0) >= limit:
            return Admission.OVER_QUOTA
        if self._counter is None:
            self._warn("%s/%s: quotas need the shared counter (NATS); none is set", namespace, api)
            return Admission.UNAVAILABLE
        try:
            used = await self._counter.add(name, 1)
        except CounterUnavailable as exc:
            self._warn("%s/%s: quota of key %s not checked: %s", namespace, api, key_id, exc)
            return Admission.UNAVAILABLE
        if used > limit:
            self._counter.give_back(name)
            if len(self._spent) >= MAX_SPENT_KEYS:
                self._spent.clear()  # mostly names of past periods
            self._spent[name] = limit
            return Admission.OVER_QUOTA
        return Admission.ADMITTED

    def _warn(self, message: str, *args: object) -> None:
        now = self._monotonic()
        if now - self._warned_at >= WARNING_INTERVAL_S:
            self._warned_at = now
            log.warning(message, *args)
