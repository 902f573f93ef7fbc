"""The CLI's one-line event summaries (``describe``) and clock text, against their plain forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.events import CursorMoved, Envelope
from plantangenet.projections.views import clock_text, describe, plain
from tests.test_codec import ANY_ENVELOPE, envelope_of

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def described_from_plain(envelope: Envelope) -> str:
    """The summary as the plain form of the event gives it (the definition ``describe``
    keeps while it takes shortcuts for common field types)."""
    data: dict[str, Any] = plain(envelope.event)
    parts = []
    for key, value in data.items():
        if value in ({}, [], None, ""):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return " ".join(parts)


@SETTINGS
@given(ANY_ENVELOPE)
def test_describe_equals_the_summary_of_the_plain_form(envelope: Envelope) -> None:
    assert describe(envelope) == described_from_plain(envelope)


def test_describe_shows_fields_with_values_and_leaves_empty_ones_out() -> None:
    moved = envelope_of(CursorMoved("bot", "c1", ("x", "y"), 0.0, 2.5, None))
    assert describe(moved) == "agent_id=bot cursor_id=c1 axes=x,y start=0.0 end=2.5"
    empty = envelope_of(CursorMoved("", "c1", (), 1.0, 2.0, 3.0))
    assert describe(empty) == "cursor_id=c1 start=1.0 end=2.0 resolution=3.0"


@SETTINGS
@given(
    st.datetimes(timezones=st.just(UTC) | st.just(timezone(timedelta(hours=-5)))),
    st.integers(0, 3),
)
def test_clock_text_is_strftime_with_microseconds(moment: datetime, seconds_later: int) -> None:
    for at in (moment, moment + timedelta(microseconds=seconds_later * 333_333)):
        assert clock_text(at) == at.strftime("%Y-%m-%d %H:%M:%S.%f")
