"""Checks on what callers send: ids, axes, texts, metadata, regions, and the limits.

Pure validation the decider (:mod:`plantangenet.domain.decide`) runs on every command before
deciding it; anything out of bounds is an :class:`~plantangenet.errors.InvalidCommand`
or a :class:`~plantangenet.errors.LimitExceeded` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from plantangenet.errors import InvalidCommand
from plantangenet.events.fields import MetadataValue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: Ids of sessions, agents and cursors: safe as one NATS subject token.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


#: Axis names: dotted words, e.g. ``ocean.temperature``.
AXIS_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


#: Command and correlation ids: visible ASCII (they travel in NATS headers).
COMMAND_ID_PATTERN = re.compile(r"[!-~]{1,128}")


#: Principals: ``<user>@<account>`` as NATS names them, or the operator.
PRINCIPAL_PATTERN = re.compile(r"[!-~]{1,256}")


MAX_AXES = 64


#: The longest free text stored: names, reasons, memos, descriptions, metadata values.
MAX_TEXT = 1024


#: The longest metadata (and identity attribute) key.
MAX_KEY = 256


#: The longest string value of metadata and identity attributes (an event holds at most
#: 256 KiB in all: a larger one is refused with ``PayloadTooLarge``, nothing stored).
MAX_VALUE = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-session limits, enforced before any event is written (``LimitExceeded``).

    Payload sizes are bounded separately: 256 KiB per event by the codec, 256 KiB
    per request by the wire protocol.
    """

    max_agents: int = 1_000
    max_cursors_per_agent: int = 100
    max_metadata_keys: int = 256
    #: The most samples one data query may disclose (more: ``CompositorFailed``).
    max_samples_per_query: int = 100_000
    #: The most compositors a session coordinates with.
    max_compositors: int = 64


#: The limits used unless a runtime is configured with others.
DEFAULT_LIMITS = Limits()


_SHOW = reprlib.Repr()


_SHOW.maxlevel = 3


_SHOW.maxstring = 80


_SHOW.maxother = 80


_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 6


def show(value: object) -> str:
    """A short, safe ``repr`` for error messages (bounded depth and length)."""
    try:
        return _SHOW.repr(value)
    except Exception:  # RecursionError or a hostile __repr__
        return f"<{type(value).__name__}>"


#: Ids and axis names seen valid lately: most commands repeat the same few.
_VALID_IDS: set[str] = set()


_VALID_AXES: set[str] = set()


_REMEMBERED = 4096


def _remember(valid: set[str], value: str) -> None:
    if len(valid) >= _REMEMBERED:
        valid.clear()
    valid.add(value)


def check_id(value: object, label: str) -> str:
    """``value`` if it is a valid id, else :class:`InvalidCommand` naming ``label``."""
    if type(value) is str and value in _VALID_IDS:
        return value
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidCommand(
            f"{label} must be 1-128 characters of letters, digits, '_' or '-', got {show(value)}"
        )
    if type(value) is str:
        _remember(_VALID_IDS, value)
    return value


def _check_text(value: object, label: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidCommand(f"{label} must be a string of at most {MAX_TEXT} characters")
    return value


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_resolution(resolution: object) -> float | None:
    if resolution is None:
        return None
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | float)
        or not _finite(resolution)
        or resolution <= 0
    ):
        raise InvalidCommand(f"resolution must be a positive number or nil, got {show(resolution)}")
    return float(resolution)


def _check_region(axes: object, start: object, end: object) -> tuple[tuple[str, ...], float, float]:
    if (
        type(axes) is tuple
        and 0 < len(axes) <= MAX_AXES
        and all(type(axis) is str and axis in _VALID_AXES for axis in axes)
        and len(set(axes)) == len(axes)
        and type(start) is float
        and type(end) is float
        and math.isfinite(start)
        and math.isfinite(end)
        and start <= end
    ):
        return axes, start, end  # the common case: names seen valid, finite floats
    if not isinstance(axes, Sequence) or isinstance(axes, str) or not axes:
        raise InvalidCommand("axes must be a non-empty list of axis names")
    if len(axes) > MAX_AXES:
        raise InvalidCommand(f"a cursor watches at most {MAX_AXES} axes")
    for axis in axes:
        if not isinstance(axis, str) or len(axis) > 256 or not AXIS_PATTERN.fullmatch(axis):
            raise InvalidCommand(f"axis names are dotted words (e.g. 'ocean.temp'), got {axis!r}")
        _remember(_VALID_AXES, axis)
    if len(set(axes)) != len(axes):
        raise InvalidCommand("axes must not repeat")
    for label, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise InvalidCommand(f"{label} must be a finite number, got {show(value)}")
    assert isinstance(start, int | float) and isinstance(end, int | float)
    if start > end:
        raise InvalidCommand(f"start ({start}) must not be after end ({end})")
    return tuple(axes), float(start), float(end)


def _region(
    axes: object, start: object, end: object, resolution: object
) -> tuple[tuple[str, ...], float, float, float | None]:
    """The region of a cursor command whose shape :func:`_check_shape` already checked."""
    res = None if resolution is None else float(resolution)  # type: ignore[arg-type]
    return tuple(axes), float(start), float(end), res  # type: ignore[arg-type]


def _check_metadata(metadata: object, label: str) -> dict[str, MetadataValue]:
    if not isinstance(metadata, Mapping):
        raise InvalidCommand(f"{label} must be a map of string keys to scalar values")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise InvalidCommand(
                f"{label} keys must be strings of 1-{MAX_KEY} characters, got {show(key)}"
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidCommand(f"{label}[{show(key)}] must be a string, number, boolean or nil")
        if isinstance(value, str) and len(value) > MAX_VALUE:
            raise InvalidCommand(f"{label}[{show(key)}] holds at most {MAX_VALUE} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidCommand(f"{label}[{show(key)}] must be a finite number")
    return dict(metadata)


def check_principal(value: object, label: str) -> str:
    """``value`` if it is a valid principal name, else :class:`InvalidCommand`."""
    if type(value) is not str or not PRINCIPAL_PATTERN.fullmatch(value):
        raise InvalidCommand(
            f"{label} must be 1-256 printable ASCII characters without spaces "
            f"(a principal: <user>@<account>), got {show(value)}"
        )
    return value
