"""How many refusals of one principal a session records, and the count of the others.

A refusal by the policy (``AccessDenied``) or for want of dust (``ChargeRefused``)
is written to the log for auditors. Written one by one without bound, a hostile
principal's flood of refused commands would fill the session's log and slow its
honest agents: each principal's refusals are recorded at a bounded rate (a token
bucket per principal and session), and past it they are still answered, but only
counted; the session records a ``RefusalsSuppressed`` summary for them once per
interval. The operator's own refusals (in-process code) are always recorded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True)
class RefusalLimit:
    """How fast one principal's refusals are recorded in one session.

    :param rate: refusals per second recorded one by one, sustained.
    :param burst: refusals recorded one by one at once, before the rate applies.
    :param interval: seconds between the summaries of the refusals counted instead.
    """

    rate: float = 10.0
    burst: int = 50
    interval: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1 and self.interval > 0):
            raise ValueError(f"a refusal limit needs rate > 0, burst >= 1, interval > 0: {self}")


@dataclasses.dataclass(frozen=True, slots=True)
class Suppressed:
    """The refusals of one principal counted (not recorded) since its last summary."""

    principal: str
    count: int
    commands: dict[str, int]
    seconds: float


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    count: int = 0
    since: float = 0.0
    commands: dict[str, int] | None = None


class RefusalMeter:
    """Token buckets of refusals, per principal, for one session (not thread-safe).

    :param limit: the rate, burst and summary interval.
    :param clock: seconds, monotonic (for tests).
    """

    #: Principals with a full bucket and nothing counted are forgotten past this many.
    max_principals = 10_000

    def __init__(self, limit: RefusalLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, principal: str, command: str) -> tuple[bool, bool]:
        """Whether to record a refusal of ``principal`` now; and if not, whether it is the
        first one counted since the last summary (then schedule :meth:`take`)."""
        now = self._clock()
        bucket = self._buckets.get(principal)
        if bucket is None:
            if len(self._buckets) >= self.max_principals:
                self._forget_idle(now)
            bucket = self._buckets[principal] = _Bucket(float(self.limit.burst), now)
        else:
            refill = (now - bucket.stamp) * self.limit.rate
            bucket.tokens = min(float(self.limit.burst), bucket.tokens + refill)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, False
        first = bucket.count == 0
        if first:
            bucket.since = now
            bucket.commands = {}
        bucket.count += 1
        commands = bucket.commands
        assert commands is not None
        if command in commands or len(commands) < 64:
            commands[command] = commands.get(command, 0) + 1
        return False, first

    def take(self, principal: str) -> Suppressed | None:
        """The refusals of ``principal`` counted since its last summary (and reset), if any."""
        bucket = self._buckets.get(principal)
        if bucket is None or bucket.count == 0:
            return None
        summary = Suppressed(
            principal, bucket.count, dict(bucket.commands or {}), self._clock() - bucket.since
        )
        bucket.count, bucket.commands = 0, None
        return summary

    def counting(self) -> list[str]:
        """Principals with refusals counted and not summarised yet."""
        return [p for p, bucket in self._buckets.items() if bucket.count]

    def _forget_idle(self, now: float) -> None:
        burst = float(self.limit.burst)
        for principal, bucket in list(self._buckets.items()):
            full = bucket.tokens + (now - bucket.stamp) * self.limit.rate >= burst
            if full and not bucket.count:
                del self._buckets[principal]
