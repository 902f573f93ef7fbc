"""Seek, don't scan: time positions found by JetStream's start-time direct get.

``Journal.sequence_at`` / ``sequence_after`` against a full read, for random times;
``state_at`` a time against the fold; how little a seek reads; and ``history
--since/--until`` against filtering a full read. Real nats-server of the test run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet import (
    CODEC,
    AgentAttached,
    DetachAgent,
    Envelope,
    Journal,
    Plantangenet,
    SessionStarted,
    SessionState,
    fold,
)
from plantangenet.cli import main
from plantangenet.errors import UnknownPosition
from plantangenet.events import new_id
from plantangenet.events.codec import EventCodec
from plantangenet.timetravel.history import StreamSequence, state_at, states_at

#: Pauses (seconds) between the commands of a spaced session: longer and shorter than the
#: small clock skews tried, so events fall on both sides of a seek's window.
PAUSES = (0.0, 0.09, 0.0, 0.15, 0.02, 0.11, 0.0, 0.06, 0.13, 0.0)
SKEWS = (0.0, 0.04, 5.0)


class CountingCodec(EventCodec):
    """The codec, counting the envelopes it decodes (what a read costs, in events)."""

    def __init__(self) -> None:
        super().__init__(CODEC.registry, max_event_bytes=CODEC.max_event_bytes)
        self.decoded = 0

    def decode(
        self, payload: bytes, *, sequence: int | None = None, digest: bool = True
    ) -> Envelope:
        self.decoded += 1
        return super().decode(payload, sequence=sequence, digest=digest)


def journal_with(runtime: Plantangenet, skew: float, codec: EventCodec = CODEC) -> Journal:
    """Another journal on ``runtime``'s connection and stream, with its own clock skew."""
    config = dataclasses.replace(runtime.journal_config, clock_skew=skew)
    return Journal(runtime.journal.nc, config, codec)


def spaced_session(runtime: Plantangenet, session_id: str = "s") -> list[Envelope]:
    """A session whose events are spread over ~0.7 s, interleaved with another session's
    (its sequences have gaps), ending with one command of three events (one time)."""
    session = runtime.session(session_id)
    other = runtime.session(f"{session_id}-other")
    session.start({"n": -1})
    other.start()
    session.attach("bot")
    for i, pause in enumerate(PAUSES):
        time.sleep(pause)
        session.change_metadata({"n": i})
        if i % 3 == 0:
            other.change_metadata({"n": i})
    session.add_cursor("bot", "c1", ["x"], 0, 1)
    session.add_cursor("bot", "c2", ["x"], 0, 1)
    time.sleep(0.05)
    assert len(session.execute(DetachAgent(agent_id="bot", reason="done")).events) == 3
    return runtime.history(session_id)


def last_at(history: list[Envelope], moment: datetime) -> int:
    """The full-scan answer: how many events up to the last (in log order) at or before."""
    count = 0
    for i, envelope in enumerate(history, 1):
        if envelope.occurred_at <= moment:
            count = i
    return count


def first_from(history: list[Envelope], moment: datetime) -> int | None:
    """The full-scan answer: the sequence of the first event at or after ``moment``."""
    return next((e.sequence for e in history if e.occurred_at >= moment), None)


def moments(history: list[Envelope]) -> st.SearchStrategy[datetime]:
    """Times before, between, at and after the events (and far off)."""
    start, end = history[0].occurred_at, history[-1].occurred_at
    span = int((end - start) / timedelta(microseconds=1))
    at_event = st.builds(
        lambda e, d: e.occurred_at + timedelta(microseconds=d),
        st.sampled_from(history),
        st.sampled_from([-1, 0, 0, 1]),
    )
    anywhere = st.integers(-1_500_000, span + 1_500_000).map(
        lambda d: start + timedelta(microseconds=d)
    )
    far = st.sampled_from(
        [
            datetime(1999, 1, 1, tzinfo=UTC),
            datetime(2999, 1, 1, tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=UTC),
        ]
    )
    return st.one_of(at_event, anywhere, far)


def test_time_seeks_equal_the_full_scan(runtime: Plantangenet) -> None:
    history = spaced_session(runtime)
    journals = {skew: journal_with(runtime, skew) for skew in SKEWS}

    def folded(count: int) -> SessionState:
        return fold("s", history[:count])

    @settings(max_examples=40, deadline=None)
    @given(moment=moments(history), skew=st.sampled_from(SKEWS), naive=st.booleans())
    def check(moment: datetime, skew: float, naive: bool) -> None:
        journal = journals[skew]
        count = last_at(history, moment)
        expected = history[count - 1].sequence if count else 0
        after = first_from(history, moment)
        if naive:  # naive times are UTC
            moment = moment.replace(tzinfo=None)
        assert runtime.run(journal.sequence_at("s", moment)) == expected
        assert runtime.run(journal.sequence_after("s", moment)) == after
        if count:
            assert runtime.run(state_at(journal, "s", moment)) == folded(count)
        else:
            with pytest.raises(UnknownPosition, match="before its first event"):
                runtime.run(state_at(journal, "s", moment))

    check()


def test_diff_positions_by_time_seek_both(runtime: Plantangenet) -> None:
    history = spaced_session(runtime)
    journal = journal_with(runtime, 0.04)
    a, b = history[3], history[-1]
    # The later one first, a time and a sequence mixed: one pass, up to the last bound.
    after, before, by_sequence = runtime.run(
        states_at(journal, "s", [b.occurred_at, a.occurred_at, StreamSequence(a.sequence or 0)])
    )
    assert after == fold("s", history)
    assert before == by_sequence == fold("s", history[: last_at(history, a.occurred_at)])
    # Empty session and unknown session: as before.
    assert runtime.run(journal.sequence_at("nobody", b.occurred_at)) == 0
    assert runtime.run(journal.sequence_after("nobody", a.occurred_at)) is None


def test_a_seek_reads_a_window_not_the_log(runtime: Plantangenet) -> None:
    bursts, size = 20, 10
    session = runtime.session("long")
    session.start()
    for burst in range(bursts):
        time.sleep(0.15)
        for i in range(size):
            session.change_metadata({"burst": burst, "i": i})
    history = runtime.history("long")
    n = len(history)
    assert n == 1 + bursts * size
    codec = CountingCodec()
    journal = journal_with(runtime, 0.02, codec)

    seeks: list[int] = []
    for k in (n // 4, n // 2, n - 15, 3):
        moment = history[k - 1].occurred_at
        codec.decoded = 0
        assert runtime.run(journal.sequence_at("long", moment)) == history[k - 1].sequence
        seeks.append(codec.decoded)
        assert codec.decoded <= 2 * size, (k, codec.decoded)
        # state_at a time reads the window, then the log up to the event: not past it.
        codec.decoded = 0
        assert runtime.run(state_at(journal, "long", moment)) == fold("long", history[:k])
        assert codec.decoded <= k + 2 * size
    codec.decoded = 0
    assert runtime.run(journal.read_all("long")) == history
    full = codec.decoded
    assert full == n
    print(f"seek decoded {seeks} events; a full read {full}")


def run_cli(runtime: Plantangenet, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    config = runtime.journal_config
    status = main(
        [
            *args,
            "--nats-url",
            runtime.url,
            "--stream",
            config.stream,
            "--subject-prefix",
            config.subject_prefix,
        ],
        out=out,
    )
    return status, out.getvalue()


def test_cli_history_since_until_prints_the_filtered_full_read(runtime: Plantangenet) -> None:
    history = spaced_session(runtime)
    status, text = run_cli(runtime, "history", "s", "--json")
    records = [json.loads(line) for line in text.splitlines()]
    assert status == 0 and [r["sequence"] for r in records] == [e.sequence for e in history]
    status, table = run_cli(runtime, "history", "s")
    header, *rows = table.splitlines()
    row_of = {int(row.split()[1]): row for row in rows}  # REV, SEQ, ...

    def when(record: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(record["occurred_at"])

    def expect(
        since: datetime | None, until: datetime | None, lo: int, hi: int, key: str
    ) -> list[int]:
        return [
            r["sequence"]
            for r in records
            if lo <= r[key] <= hi
            and (since is None or when(r) >= since)
            and (until is None or when(r) <= until)
        ]

    first, last = history[0].occurred_at, history[-1].occurred_at
    times = [
        *(e.occurred_at for e in history[::3]),
        history[5].occurred_at + timedelta(microseconds=1),
        history[5].occurred_at - timedelta(microseconds=1),
        first - timedelta(seconds=1),
        last + timedelta(seconds=1),
    ]
    cases: list[tuple[datetime | None, datetime | None, list[str]]] = [
        (times[1], None, []),
        (None, times[2], []),
        (times[1], times[4], []),
        (times[5], times[6], []),
        (times[4], times[1], []),  # empty: since after until
        (times[-2], times[-1], []),  # all
        (times[-1], None, []),  # after the end: nothing
        (None, times[-2], []),  # before the start: nothing
        (times[0], times[3], ["--from", "seq:4", "--to", "seq:12"]),
        (times[0], times[3], ["--from", "4", "--to", "12"]),  # revisions
        (times[2], None, ["--type", "SessionMetadataChanged"]),
    ]
    for since, until, extra in cases:
        options = [*extra]
        if since is not None:
            options += ["--since", since.isoformat()]
        if until is not None:
            options += ["--until", until.isoformat()]
        bounds = [extra[extra.index(o) + 1] for o in ("--from", "--to") if o in extra]
        key = "sequence" if any(b.startswith("seq:") for b in bounds) else "revision"
        lo = int(bounds[0].removeprefix("seq:")) if bounds else 1
        hi = int(bounds[1].removeprefix("seq:")) if bounds else 1 << 62
        wanted = expect(since, until, lo, hi, key)
        if "--type" in extra:
            wanted = [s for s in wanted if row_of[s].split()[4] == "SessionMetadataChanged"]
        status, text = run_cli(runtime, "history", "s", *options, "--json")
        assert status == 0 and [json.loads(line)["sequence"] for line in text.splitlines()] == (
            wanted
        ), options
        status, text = run_cli(runtime, "history", "s", *options)
        lines = text.splitlines()
        assert status == 0 and lines[0] == header
        if wanted:
            assert lines[1:] == [row_of[s] for s in wanted], options
        else:
            in_range = len([r for r in records if lo <= r[key] <= hi])
            assert lines[1:] == [f"(none of the {in_range} events matches the filters)"]
    # A session without events is still an error, time filters or not.
    moment = first.isoformat()
    assert run_cli(runtime, "history", "nobody", "--since", moment)[0] == 2
    assert run_cli(runtime, "history", "nobody", "--until", moment, "--json") == (2, "")
    assert run_cli(runtime, "history", "s", "--from", "9999", "--since", moment)[0] == 2


def test_clocks_further_apart_than_the_margin_are_answered_as_a_full_read(
    runtime: Plantangenet,
) -> None:
    """An event stored before it occurred (by more than the skew): the seek notices it on
    the session's last event, and reads the session from its start instead."""
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    events = [
        Envelope(SessionStarted("x", {}), "x", new_id(), "c1", "c1", now - hour),
        Envelope(AgentAttached("a", "bot", ""), "x", new_id(), "c2", "c2", now + hour),
    ]
    journal = runtime.journal
    for i, envelope in enumerate(events):
        runtime.run(journal.append("x", [envelope], expected_sequence=i))
    history = runtime.history("x")
    for moment in (now, now + hour / 2, now + 2 * hour, now - 2 * hour):
        count = last_at(history, moment)
        assert runtime.run(journal.sequence_at("x", moment)) == (
            history[count - 1].sequence if count else 0
        )
        assert runtime.run(journal.sequence_after("x", moment)) == first_from(history, moment)
