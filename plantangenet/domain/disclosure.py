"""Disclosure: how much of a compositor's data an agent may see, and the shaping that does it.

A policy statement that allows a query may carry a :class:`Disclosure`. Its
``level`` says what the agent receives:

``full``
    every sample as the compositor returned it;
``degraded``
    coarser data: with ``resolution``, samples are averaged into buckets of
    that many time units (bucket start as time, mean as value, extra fields
    dropped); with ``decimals``, values are rounded;
``masked``
    fields removed: the names in ``mask`` (``"value"`` or extra field names)
    are dropped from each sample; an empty ``mask`` drops the value and every
    extra field, leaving only where and when data exists;
``denied``
    nothing (the query is refused and recorded as ``AccessDenied``).

Shaping is pure: :func:`shape` turns samples into what a level discloses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from plantangenet.errors import InvalidPolicy
from plantangenet.events.fields import MetadataValue
from plantangenet.events.policy_values import DENIED as DENIED
from plantangenet.events.policy_values import FULL as FULL
from plantangenet.events.policy_values import LEVELS as LEVELS
from plantangenet.events.policy_values import MIN_RESOLUTION as MIN_RESOLUTION
from plantangenet.events.policy_values import RANK as RANK
from plantangenet.events.policy_values import Disclosure as Disclosure
from plantangenet.events.policy_values import Level as Level


def least(disclosures: Iterable[Disclosure]) -> Level:
    """The level that discloses least among ``disclosures`` (``full`` if none)."""
    levels = [d.level for d in disclosures]
    return min(levels, key=RANK.__getitem__) if levels else "full"


def parse_disclosure(raw: object, label: str = "disclosure") -> Disclosure:
    """A :class:`Disclosure` from a level name, a mapping or a disclosure; validated.

    :raises InvalidPolicy: naming the offending field.
    """
    if isinstance(raw, Disclosure):
        raw = dataclasses.asdict(raw)
    if isinstance(raw, str):
        raw = {"level": raw}
    if not isinstance(raw, Mapping):
        raise InvalidPolicy(
            f"{label}: a level name or a map with level, resolution, decimals, mask"
        )
    unknown = set(raw) - {"level", "resolution", "decimals", "mask"}
    if unknown:
        raise InvalidPolicy(f"{label}: unknown field {sorted(map(str, unknown))[0]!r}")
    level = raw.get("level", "full")
    if level not in ("full", "degraded", "masked"):
        raise InvalidPolicy(f"{label}.level: one of full, degraded, masked; got {level!r}")
    resolution = raw.get("resolution")
    if resolution is not None and (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | float)
        or not math.isfinite(resolution)
        or not resolution >= MIN_RESOLUTION
    ):
        raise InvalidPolicy(
            f"{label}.resolution: a number of at least {MIN_RESOLUTION:g}, got {resolution!r}"
        )
    decimals = raw.get("decimals")
    if decimals is not None and (
        isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 15
    ):
        raise InvalidPolicy(f"{label}.decimals: an integer from 0 to 15, got {decimals!r}")
    mask = raw.get("mask", ())
    if isinstance(mask, str) or not isinstance(mask, Sequence):
        raise InvalidPolicy(f"{label}.mask: a list of field names")
    for name in mask:
        if not isinstance(name, str) or not name or len(name) > 64:
            raise InvalidPolicy(f"{label}.mask: field names are 1-64 characters, got {name!r}")
    if level == "degraded" and resolution is None and decimals is None:
        raise InvalidPolicy(f"{label}: 'degraded' needs a resolution or decimals")
    if level != "degraded" and (resolution is not None or decimals is not None):
        raise InvalidPolicy(f"{label}: resolution and decimals apply to 'degraded' only")
    if level != "masked" and mask:
        raise InvalidPolicy(f"{label}: mask applies to 'masked' only")
    return Disclosure(
        cast(Level, level),
        None if resolution is None else float(resolution),
        decimals,
        tuple(mask),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Region:
    """What a compositor is asked for: ``axes`` over ``[start, end]``, at ``resolution``."""

    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One data point: ``value`` of ``axis`` at ``time``, with extra ``fields``.

    ``value`` is ``None`` when masked.
    """

    axis: str
    time: float
    value: float | None
    fields: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (for JSON and the wire)."""
        return {
            "axis": self.axis,
            "time": self.time,
            "value": self.value,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        """The sample :meth:`to_dict` gave ``data`` for."""
        return cls(data["axis"], data["time"], data["value"], dict(data.get("fields") or {}))


def shape(samples: Iterable[Sample], disclosure: Disclosure) -> list[Sample]:
    """What ``disclosure`` lets through of ``samples`` (pure; order is kept)."""
    match disclosure.level:
        case "full":
            return list(samples)
        case "degraded":
            return _degrade(samples, disclosure.resolution, disclosure.decimals)
        case "masked":
            return [_mask(s, disclosure.mask) for s in samples]
    return []


def _degrade(
    samples: Iterable[Sample], resolution: float | None, decimals: int | None
) -> list[Sample]:
    if resolution is None:
        return [
            Sample(
                s.axis, s.time, None if s.value is None else round(s.value, decimals or 0), s.fields
            )
            for s in samples
        ]
    buckets: dict[tuple[str, float], list[float]] = {}
    for s in samples:
        steps = s.time / resolution
        # A time too far from 0 for this resolution (or not finite) is its own bucket.
        start = math.floor(steps) * resolution if math.isfinite(steps) else s.time
        values = buckets.setdefault((s.axis, start), [])
        if s.value is not None:
            values.append(s.value)
    out = []
    for (axis, time), values in buckets.items():
        mean = _mean(values)
        if mean is not None and decimals is not None:
            mean = round(mean, decimals)
        out.append(Sample(axis, time, mean))
    return out


def _mean(values: list[float]) -> float | None:
    """The mean, without overflowing on large values (``fsum`` of the sum would)."""
    if not values:
        return None
    count = len(values)
    try:
        return math.fsum(v / count for v in values)
    except (OverflowError, ValueError):  # infinities of both signs, or inf - inf
        return math.nan


def _mask(sample: Sample, mask: tuple[str, ...]) -> Sample:
    if not mask:
        return Sample(sample.axis, sample.time, None)
    value = None if "value" in mask else sample.value
    fields = {k: v for k, v in sample.fields.items() if k not in mask}
    return Sample(sample.axis, sample.time, value, fields)
