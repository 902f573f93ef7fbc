"""The journal against a real JetStream stream: concurrency, dedup, atomic batches, replay."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig

from plantangenet import (
    CODEC,
    AgentAttached,
    ConcurrencyError,
    CursorAdded,
    CursorMoved,
    DuplicateCommand,
    EmbeddedNats,
    Envelope,
    Journal,
    JournalConfig,
    JournalError,
    SessionStarted,
)
from plantangenet.events import MessageQuarantined, new_id, utc_now
from plantangenet.events.envelope import CheckedEvent
from plantangenet.log.journal import AppendResult, HistoryPage, InvalidJournalConfig
from plantangenet.log.server_version import OLDEST_SERVER, check_server_version
from tests.conftest import AsyncJournal, LateCreates, wait_until


def env(event: object, command_id: str, session_id: str = "s1") -> Envelope:
    return Envelope(event, session_id, new_id(), command_id, command_id, utc_now())  # type: ignore[arg-type]


def read(j: AsyncJournal, session_id: str = "s1", **kw: object) -> list[Envelope]:
    async def collect() -> list[Envelope]:
        return [e async for e in j.journal.read(session_id, **kw)]  # type: ignore[arg-type]

    return j.run(collect())  # type: ignore[no-any-return]


def test_append_assigns_contiguous_sequences_and_reads_back(journal: AsyncJournal) -> None:
    j = journal.journal
    first = journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    assert (first.first_sequence, first.last_sequence) == (1, 1)
    batch = [env(AgentAttached(f"a{i}", "bot", ""), "c2") for i in range(5)]
    second = journal.run(j.append("s1", batch, expected_sequence=1))
    assert [e.sequence for e in second.envelopes] == [2, 3, 4, 5, 6]
    stored = read(journal)
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5, 6]
    assert [e.event for e in stored] == [e.event for e in [*first.envelopes, *batch]]
    # Envelopes appended without a revision are numbered by the reader, also mid-session.
    assert [e.revision for e in stored] == [1, 2, 3, 4, 5, 6]
    middle = read(journal, from_sequence=3, to_sequence=4)
    assert middle == [e.with_revision(i) for i, e in enumerate(second.envelopes[1:3], 3)]


def test_stale_writer_gets_concurrency_error_and_writes_nothing(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    journal.run(j.append("s1", [env(AgentAttached("a", "bot", ""), "c2")], expected_sequence=1))
    with pytest.raises(ConcurrencyError) as info:
        journal.run(j.append("s1", [env(AgentAttached("b", "bot", ""), "c3")], expected_sequence=1))
    assert (info.value.expected, info.value.actual) == (1, 2)
    # A stale multi-event command is refused as a whole.
    stale = [env(AgentAttached(f"x{i}", "bot", ""), "c4") for i in range(3)]
    with pytest.raises(ConcurrencyError):
        journal.run(j.append("s1", stale, expected_sequence=1))
    assert len(read(journal)) == 2


def test_retried_command_is_stored_once(journal: AsyncJournal) -> None:
    j = journal.journal
    start = [env(SessionStarted("s1", {}), "start")]
    journal.run(j.append("s1", start, expected_sequence=0))
    multi = [env(AgentAttached(f"a{i}", "bot", ""), "attach-all") for i in range(3)]
    journal.run(j.append("s1", multi, expected_sequence=1))
    # The same command again, even as if the writer had not seen its own append.
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", multi, expected_sequence=1))
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", multi, expected_sequence=4))
    with pytest.raises((DuplicateCommand, ConcurrencyError)):
        journal.run(j.append("s1", start, expected_sequence=0))
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", start, expected_sequence=4))
    assert [e.sequence for e in read(journal)] == [1, 2, 3, 4]


def test_multi_event_append_is_all_or_nothing(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    # The third message of the batch is a duplicate of a stored one: the batch is refused
    # and none of its messages is stored.
    stored = env(AgentAttached("a", "bot", ""), "c2")
    journal.run(j.append("s1", [stored], expected_sequence=1))
    fresh = [env(AgentAttached("b", "bot", ""), "c2"), env(AgentAttached("c", "bot", ""), "c3")]
    # (c2, index 0) already exists, so this batch carries a duplicate message id.
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", fresh, expected_sequence=2))
    assert [e.event for e in read(journal)] == [SessionStarted("s1", {}), stored.event]


def test_sessions_are_separate_subjects(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "a")], expected_sequence=0))
    journal.run(j.append("s2", [env(SessionStarted("s2", {}), "b", "s2")], expected_sequence=0))
    journal.run(
        j.append("s2", [env(AgentAttached("x", "bot", ""), "c", "s2")], expected_sequence=2)
    )
    assert journal.run(j.sessions()) == {"s1": 1, "s2": 2}
    assert [e.session_id for e in read(journal, "s2")] == ["s2", "s2"]
    assert journal.run(j.last_sequence("s1")) == 1
    assert journal.run(j.last_sequence("nobody")) == 0
    assert read(journal, "nobody") == []


def test_read_reports_progress(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c0")], expected_sequence=0))
    seq = 1
    for n in range(3):
        batch = [env(CursorAdded("a", f"c{n}-{i}", ("x",), 0.0, 1.0), f"k{n}") for i in range(900)]
        seq = journal.run(j.append("s1", batch, expected_sequence=seq)).last_sequence
    seen: list[tuple[int, int]] = []
    read(journal, progress=lambda at, end: seen.append((at, end)))
    assert seen[-1] == (2701, 2701)
    assert [at for at, _ in seen[:-1]] == [1000, 2000]


def test_tail_delivers_new_events_live(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c0")], expected_sequence=0))

    async def scenario() -> list[int]:
        got: list[int] = []

        async def follow() -> None:
            async for e in j.tail("s1", from_sequence=1):
                got.append(e.sequence or 0)
                if len(got) == 3:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.1)
        await j.append("s1", [env(AgentAttached("a", "bot", ""), "c1")], expected_sequence=1)
        await j.append("s1", [env(AgentAttached("b", "bot", ""), "c2")], expected_sequence=2)
        await asyncio.wait_for(task, 10)
        return got

    assert journal.run(scenario()) == [1, 2, 3]


def test_append_to_missing_stream_is_a_clear_error(journal: AsyncJournal) -> None:
    async def scenario() -> None:
        await journal.journal.js.delete_stream(journal.journal.config.stream)
        await journal.journal.append(
            "s1", [env(SessionStarted("s1", {}), "c")], expected_sequence=0
        )

    with pytest.raises(JournalError, match="no stream"):
        journal.run(scenario())


def test_stored_digests_are_the_payloads_sha256_given_or_computed(journal: AsyncJournal) -> None:
    import hashlib

    from plantangenet import CODEC

    j = journal.journal
    envelopes = [env(SessionStarted("s1", {}), "c1"), env(AgentAttached("a", "bot", ""), "c2")]
    payloads = [CODEC.encode(e) for e in envelopes]
    expected = [hashlib.sha256(p).digest() for p in payloads]
    first = journal.run(j.append_encoded("s1", [(envelopes[0], payloads[0])], expected_sequence=0))
    assert [e.digest for e in first.envelopes] == expected[:1]  # computed by the journal
    second = journal.run(
        j.append_encoded(
            "s1", [(envelopes[1], payloads[1])], expected_sequence=1, digests=expected[1:]
        )
    )
    assert [e.digest for e in second.envelopes] == expected[1:]  # the writer's own
    assert [e.digest for e in read(journal)] == expected  # what a reader computes
    with pytest.raises(ValueError, match="digests"):
        journal.run(
            j.append_encoded(
                "s1", [(envelopes[1], payloads[1])], expected_sequence=2, digests=expected
            )
        )
    assert len(read(journal)) == 2


def test_append_payloads_takes_envelopes_and_encodings_side_by_side(
    journal: AsyncJournal,
) -> None:
    from plantangenet import CODEC

    j = journal.journal
    envelopes = [env(SessionStarted("s1", {}), "c1"), env(AgentAttached("a", "bot", ""), "c1")]
    payloads = [CODEC.encode(e) for e in envelopes]
    with pytest.raises(ValueError, match="1 payloads for 2 envelopes"):
        journal.run(j.append_payloads("s1", envelopes, payloads[:1], expected_sequence=0))
    with pytest.raises(ValueError, match="at least one"):
        journal.run(j.append_payloads("s1", [], [], expected_sequence=0))
    assert read(journal) == []  # nothing half-written
    stored = journal.run(j.append_payloads("s1", envelopes, payloads, expected_sequence=0))
    assert [e.sequence for e in stored.envelopes] == [1, 2]
    assert [e.event for e in read(journal)] == [e.event for e in envelopes]


# -- live republish ---------------------------------------------------------------------------


async def append_raw(
    j: Journal, session_id: str, payloads: list[bytes], expected: int
) -> AppendResult:
    """Store ``payloads`` as one append (an atomic batch if several) under a fresh command id."""
    command = new_id()
    envelopes = [
        env(AgentAttached(f"a{i}", "bot", ""), command, session_id) for i in range(len(payloads))
    ]
    return await j.append_payloads(session_id, envelopes, payloads, expected_sequence=expected)


async def collect_live(nc: Any, subject: str, into: list[Msg]) -> Any:
    async def keep(msg: Msg) -> None:
        into.append(msg)

    sub = await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return sub


def test_live_subject_gets_every_stored_event_of_its_session_only(journal: AsyncJournal) -> None:
    j = journal.journal
    prefix = j.config.live_prefix
    assert j.live_subject("s1") == f"{prefix}.s1"
    s1 = [env(SessionStarted("s1", {}), "c1")]
    batch = [env(AgentAttached(f"a{i}", "bot", ""), "c2") for i in range(3)]
    s2 = [env(SessionStarted("s2", {}), "c3", "s2")]

    async def scenario() -> tuple[list[Msg], list[Msg]]:
        live: list[Msg] = []
        every: list[Msg] = []
        subs = [
            await collect_live(journal.nc, j.live_subject("s1"), live),
            await collect_live(journal.nc, f"{prefix}.>", every),
        ]
        await j.append("s1", s1, expected_sequence=0)  # 1
        await j.append("s2", s2, expected_sequence=0)  # 2
        await j.append("s1", batch, expected_sequence=1)  # 3, 4, 5: one atomic batch
        for _ in range(200):
            if len(live) == 4 and len(every) == 5:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # nothing more comes
        for sub in subs:
            await sub.unsubscribe()
        return live, every

    live, every = journal.run(scenario())
    headers = [m.headers or {} for m in live]
    assert [m.subject for m in live] == [j.live_subject("s1")] * 4
    assert [h["Nats-Sequence"] for h in headers] == ["1", "3", "4", "5"]
    assert [h["Nats-Last-Sequence"] for h in headers] == ["0", "1", "3", "4"]
    assert {h["Nats-Stream"] for h in headers} == {j.config.stream}
    assert {h["Nats-Subject"] for h in headers} == {j.subject("s1")}
    assert "Nats-Time-Stamp" in headers[0]
    assert [m.data for m in live] == [CODEC.encode(e) for e in [*s1, *batch]]
    # The other session's event went to its own live subject, and nowhere else.
    assert sorted(m.subject for m in every) == sorted(
        [j.live_subject("s1")] * 4 + [j.live_subject("s2")]
    )
    (other,) = [m for m in every if m.subject == j.live_subject("s2")]
    assert (other.headers or {})["Nats-Sequence"] == "2"
    assert other.data == CODEC.encode(s2[0])


def test_ensure_stream_gives_an_existing_stream_the_live_republish(journal: AsyncJournal) -> None:
    j = journal.journal
    cfg = j.config
    expected = RePublish(
        src=f"{cfg.subject_prefix}.*", dest=f"{cfg.live_prefix}.{{{{wildcard(1)}}}}"
    )

    async def scenario() -> list[Msg]:
        # A deployment of before: same subjects, no republish, settings of its own.
        await j.js.delete_stream(cfg.stream)
        await j.js.add_stream(
            StreamConfig(
                name=cfg.stream,
                subjects=[f"{cfg.subject_prefix}.*"],
                storage=StorageType.FILE,
                max_bytes=1_000_000,
                max_msgs_per_subject=5000,
                discard=DiscardPolicy.NEW,
                duplicate_window=60.0,
                allow_atomic=True,
                allow_direct=True,
                deny_delete=False,
                description="older deployment",
            )
        )
        await j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0)
        await j.ensure_stream()
        info = await j.js.stream_info(cfg.stream)
        assert info.config.republish == expected
        c = info.config
        assert (c.max_bytes, c.max_msgs_per_subject, c.duplicate_window) == (1_000_000, 5000, 60.0)
        assert (c.deny_delete, c.description, c.discard) == (False, "older deployment", "new")
        assert info.state.messages == 1  # nothing lost

        # A republish elsewhere (another live prefix) is replaced by this config's.
        elsewhere = RePublish(src=f"{cfg.subject_prefix}.*", dest="elsewhere.{{wildcard(1)}}")
        await j.js.update_stream(dataclasses.replace(c, republish=elsewhere))
        await j.ensure_stream()
        again = await j.js.stream_info(cfg.stream)
        assert again.config.republish == expected
        assert dataclasses.replace(again.config, republish=None) == dataclasses.replace(
            c, republish=None
        )
        await j.ensure_stream()  # idempotent

        live: list[Msg] = []
        sub = await collect_live(journal.nc, j.live_subject("s1"), live)
        await j.append("s1", [env(AgentAttached("a", "bot", ""), "c2")], expected_sequence=1)
        for _ in range(200):
            if live:
                break
            await asyncio.sleep(0.01)
        await sub.unsubscribe()
        return live

    live = journal.run(scenario())
    assert [(m.headers or {}).get("Nats-Sequence") for m in live] == ["2"]


def test_ensure_stream_still_refuses_a_stream_with_other_subjects(journal: AsyncJournal) -> None:
    j = journal.journal

    async def scenario() -> None:
        await j.js.delete_stream(j.config.stream)
        await j.js.add_stream(name=j.config.stream, subjects=["elsewhere.*"])
        await j.ensure_stream()

    with pytest.raises(JournalError, match="exists with subjects"):
        journal.run(scenario())


def test_ensure_stream_refuses_a_server_older_than_it_needs_naming_both_versions(
    journal: AsyncJournal,
) -> None:
    """A server before 2.15 refuses (2.12-2.14) or ignores (before 2.12) the atomic
    batches the journal appends: it is refused up front, and no stream is made."""
    j = journal.journal
    server = journal.nc._current_server
    assert server is not None
    real = server.server_version
    assert real is not None and tuple(map(int, real.split(".")[:2])) >= OLDEST_SERVER
    check_server_version(journal.nc)  # the wheel's server is recent enough

    async def scenario(version: str) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await j.js.delete_stream(j.config.stream)
        server.server_version = version  # what its INFO would have said
        try:
            await j.ensure_stream()
        finally:
            server.server_version = real

    for version in ["2.14.6", "2.12.0", "2.11.9", "1.4.1"]:
        with pytest.raises(JournalError, match=rf"runs nats-server {version}; .* 2\.15 or later"):
            journal.run(scenario(version))
        with pytest.raises(nats.js.errors.NotFoundError):
            journal.run(j.js.stream_info(j.config.stream))
    for version in ["2.15.0", "2.15.1-beta.2", "2.16.0", "3.0.0", "my-own-build"]:
        journal.run(scenario(version))
        assert journal.run(j.js.stream_info(j.config.stream)).config.allow_atomic


def test_live_prefix_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert JournalConfig().live_prefix == "plantangenet.live"
    for subject_prefix, live_prefix in [
        ("a.events", "a.events"),
        ("a.events", "a.events.live"),
        ("a.events", "a"),
        ("events", "events.live"),
    ]:
        with pytest.raises(InvalidJournalConfig, match="overlap"):
            JournalConfig(subject_prefix=subject_prefix, live_prefix=live_prefix)
    for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a.", "_INBOX.live", "$JS.live"]:
        with pytest.raises(ValueError, match="prefix"):
            JournalConfig(live_prefix=bad)
        with pytest.raises(JournalError, match="prefix"):
            JournalConfig(subject_prefix=bad)
    JournalConfig(subject_prefix="a.events", live_prefix="a.live")  # siblings are fine
    monkeypatch.setenv("PLANTANGENET_LIVE_PREFIX", "x.live")
    assert JournalConfig.from_env().live_prefix == "x.live"
    monkeypatch.setenv("PLANTANGENET_LIVE_PREFIX", "")
    assert JournalConfig.from_env().live_prefix == "plantangenet.live"


# -- pages --------------------------------------------------------------------------------


def interleaved(journal: AsyncJournal, rounds: int) -> dict[str, list[tuple[int, bytes]]]:
    """Sessions s1 and s2 (and a few others) written in turns; what each holds."""
    j = journal.journal
    stored: dict[str, list[tuple[int, bytes]]] = {}

    async def scenario() -> None:
        for r in range(rounds):
            for session, count in (("s1", 1 + r % 3), ("s2", 1), (f"o{r % 2}", 1)):
                held = stored.setdefault(session, [])
                payloads = [
                    f"{session}:{r}:{i}:".encode() + b"x" * (r * 7 % 50) for i in range(count)
                ]
                result = await append_raw(j, session, payloads, held[-1][0] if held else 0)
                held += [
                    (e.sequence or 0, p) for e, p in zip(result.envelopes, payloads, strict=True)
                ]

    journal.run(scenario())
    return stored


def consumers(journal: AsyncJournal) -> int:
    info = journal.run(journal.journal.js.stream_info(journal.journal.config.stream))
    return int(info.state.consumer_count)


def test_page_reads_a_sessions_messages_among_others(journal: AsyncJournal) -> None:
    j = journal.journal
    stored = interleaved(journal, 6)
    s1 = stored["s1"]
    last = s1[-1][0]
    whole = journal.run(j.page("s1"))
    assert whole == HistoryPage(tuple(s1), last, False)
    first = journal.run(j.page("s1", max_events=3))
    assert first == HistoryPage(tuple(s1[:3]), last, True)
    # From a sequence that holds another session's event: the session's next one on.
    s2_seq = stored["s2"][2][0]
    after = [m for m in s1 if m[0] > s2_seq]
    assert journal.run(j.page("s1", s2_seq, max_events=2)) == HistoryPage(
        tuple(after[:2]), last, len(after) > 2
    )
    assert journal.run(j.page("s1", last)) == HistoryPage((s1[-1],), last, False)
    assert journal.run(j.page("s1", 0)) == whole  # below 1: from the start
    assert journal.run(j.page("s2", max_events=1000, max_bytes=1 << 24)).messages == tuple(
        stored["s2"]
    )
    assert consumers(journal) == 0  # paging creates no consumer


def test_page_of_nothing_is_empty_and_ends(journal: AsyncJournal) -> None:
    j = journal.journal
    assert journal.run(j.page("s1")) == HistoryPage((), 0, False)
    stored = interleaved(journal, 2)
    last = stored["s1"][-1][0]
    assert journal.run(j.page("nobody")) == HistoryPage((), 0, False)
    assert journal.run(j.page("s1", last + 1)) == HistoryPage((), last, False)
    assert journal.run(j.page("s1", 10**9)) == HistoryPage((), last, False)
    with pytest.raises(ValueError, match="max_events"):
        journal.run(j.page("s1", max_events=0))
    with pytest.raises(ValueError, match="max_bytes"):
        journal.run(j.page("s1", max_bytes=0))


def test_page_makes_progress_whatever_max_bytes(journal: AsyncJournal) -> None:
    j = journal.journal
    big = [b"B" * 5000, b"small", b"C" * 3000]
    journal.run(append_raw(j, "s1", big, 0))
    # A message larger than max_bytes still comes, one per page...
    pages = []
    at = 1
    while True:
        page = journal.run(j.page("s1", at, max_bytes=1))
        pages.append(page)
        if not page.more:
            break
        at = page.messages[-1][0] + 1
    assert [p.messages for p in pages] == [((1, big[0]),), ((2, big[1]),), ((3, big[2]),)]
    assert [p.last_sequence for p in pages] == [3, 3, 3]
    # ... and the server counts subject + stored headers + payload of each message, and
    # sends messages while its count is below max_bytes: the one that reaches it is the last.
    first = journal.run(j.nc.request(f"$JS.API.STREAM.MSG.GET.{j.config.stream}", b'{"seq":1}'))
    stored = json.loads(first.data)["message"]
    size = len(stored["subject"]) + len(base64.b64decode(stored["hdrs"])) + len(big[0])
    assert journal.run(j.page("s1", max_bytes=size)).messages == ((1, big[0]),)
    assert journal.run(j.page("s1", max_bytes=size + 1)).messages == ((1, big[0]), (2, big[1]))
    assert len(journal.run(j.page("s1", max_bytes=size + 1, max_events=1)).messages) == 1


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_events=st.integers(1, 40),
    max_bytes=st.one_of(st.integers(1, 400), st.just(1 << 20)),
    start=st.integers(0, 80),
)
def test_paging_through_a_session_yields_what_read_does(
    journal: AsyncJournal, max_events: int, max_bytes: int, start: int
) -> None:
    j = journal.journal
    if not journal.run(j.sessions()):
        interleaved(journal, 20)  # once per test, not per example

    async def paged() -> tuple[list[tuple[int, bytes]], list[HistoryPage]]:
        out: list[tuple[int, bytes]] = []
        pages: list[HistoryPage] = []
        at = start
        while True:
            page = await j.page("s1", at, max_events=max_events, max_bytes=max_bytes)
            pages.append(page)
            assert 1 <= len(page.messages) <= max_events or not page.more
            out += page.messages
            if not page.more:
                return out, pages
            at = page.messages[-1][0] + 1

    async def raw() -> list[tuple[int, bytes]]:
        return [m async for m in j.read_raw("s1", from_sequence=max(start, 1))]

    messages, pages = journal.run(paged())
    assert messages == journal.run(raw())
    assert {p.last_sequence for p in pages} == {journal.run(j.last_sequence("s1"))}
    # Paging creates no consumer; read_raw's own is deleted as it ends (a request the
    # server carries out a moment later).
    wait_until(lambda: consumers(journal) == 0)


def test_a_checked_read_gives_what_a_read_does_without_building_what_it_checks(
    journal: AsyncJournal,
) -> None:
    j = journal.journal
    events: list[object] = [SessionStarted("s1", {}), AgentAttached("a", "bot", "")]
    events += [CursorAdded("a", "c", ("x",), 0.0, 1.0)]
    events += [CursorMoved("a", "c", ("x",), float(i), float(i + 1)) for i in range(20)]
    envelopes = [dataclasses.replace(env(e, f"c{n}"), revision=n + 1) for n, e in enumerate(events)]
    envelopes.append(env(CursorMoved("a", "c", ("x",), 0.0, 2.0), "unnumbered"))  # no revision
    journal.run(j.append("s1", envelopes, expected_sequence=0))
    # Bytes written behind the writer's back, then their quarantine: read skips them.
    journal.run(j.js.publish(j.subject("s1"), b"\xc1 not an event"))
    quarantine = MessageQuarantined(sequence=25, problem="decode_error", reason="test")
    journal.run(j.append("s1", [env(quarantine, "q")], expected_sequence=25))
    plain = read(journal)

    async def read_checked() -> list[Envelope | CheckedEvent]:
        batches = [b async for b in j.read_event_batches("s1", checked=True)]
        assert all(batches)  # never an empty one
        return [e for batch in batches for e in batch]

    checked = journal.run(read_checked())
    assert [(e.sequence, e.event_id, e.type_name) for e in checked] == [
        (e.sequence, e.event_id, e.type_name) for e in plain
    ]
    assert [e.sequence for e in plain] == [*range(1, 25), 26]
    by_kind = {
        type(e).__name__: [x.type_name for x in checked if type(x) is type(e)] for e in checked
    }
    # The moves and the others whose values the codec checks come as checked values;
    # the unnumbered move and the quarantine (which the read itself reads) as envelopes.
    assert set(by_kind) == {"CheckedEvent", "Envelope"}
    assert by_kind["CheckedEvent"].count("CursorMoved") == 20
    assert "MessageQuarantined" in by_kind["Envelope"] and "CursorMoved" in by_kind["Envelope"]
    for values, envelope in zip(checked, plain, strict=True):
        if isinstance(values, CheckedEvent):
            assert values.revision == envelope.revision and values.agent_id == envelope.agent_id
            assert values.session_id == "s1" and values.causation_id == envelope.causation_id
            for name in ("agent_id", "cursor_id", "start", "end"):
                if hasattr(envelope.event, name):
                    assert getattr(values.fields, name) == getattr(envelope.event, name)


def test_read_batches_are_read_raw_in_order_never_empty_and_bounded(
    journal: AsyncJournal,
) -> None:
    j = journal.journal
    s1 = interleaved(journal, 30)["s1"]
    middle, near_end = s1[len(s1) // 3][0], s1[-5][0]
    in_a_gap = next(m[0] + 1 for m, n in itertools.pairwise(s1) if n[0] > m[0] + 1)

    async def batches(**bounds: int) -> list[list[tuple[int, bytes]]]:
        return [b async for b in j.read_batches("s1", **bounds)]

    for bounds, expected in (
        ({}, s1),
        ({"from_sequence": middle}, [m for m in s1 if m[0] >= middle]),
        ({"to_sequence": near_end}, [m for m in s1 if m[0] <= near_end]),
        ({"from_sequence": middle, "to_sequence": middle}, [m for m in s1 if m[0] == middle]),
        ({"from_sequence": s1[-1][0] + 1}, []),
        ({"to_sequence": in_a_gap}, [m for m in s1 if m[0] <= in_a_gap]),  # not one past it
    ):
        got = journal.run(batches(**bounds))
        assert all(got), bounds  # no empty batch
        assert [m for batch in got for m in batch] == expected, bounds
    assert journal.run(batches(to_sequence=0)) == []
    wait_until(lambda: consumers(journal) == 0)  # each read's consumer is gone


def test_page_of_a_missing_stream_names_it(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.js.delete_stream(j.config.stream))
    with pytest.raises(JournalError, match=f"stream {j.config.stream} does not exist"):
        journal.run(j.page("s1"))


def test_page_timeouts_refusals_and_losses_are_journal_errors(nats_server: EmbeddedNats) -> None:
    """A stand-in for the stream answers badly; each page fails clearly and cleans up."""
    config = JournalConfig(stream="FAKE", subject_prefix="fake.events", api_timeout=0.3)

    def stored(seq: int, previous: int, session_id: str = "s1") -> tuple[dict[str, str], bytes]:
        subject = f"fake.events.{session_id}"
        return {
            "Nats-Subject": subject,
            "Nats-Sequence": str(seq),
            "Nats-Last-Sequence": str(previous),
        }, b"x"

    def end(last: int) -> tuple[dict[str, str], bytes]:
        return {
            "Status": "204",
            "Description": "EOB",
            "Nats-Num-Pending": "0",
            "Nats-Last-Sequence": str(last),
        }, b""

    answers = [
        [],  # silence
        [({"Status": "408", "Description": "Request Timeout"}, b"")],
        [stored(1, 0), stored(3, 2), end(3)],  # the message at 2 went missing in transit
        [stored(1, 0), end(2)],  # the last one did
        [stored(1, 0, "s2")],  # another session's
    ]
    expected = [
        "did not answer in full within 0.3s",
        "status 408 Request Timeout",
        "lost",
        "lost",
        "fake.events.s2",
    ]

    async def scenario() -> list[str]:
        nc = await nats.connect(nats_server.url)
        requests: list[dict[str, Any]] = []

        async def respond(msg: Msg) -> None:
            requests.append(json.loads(msg.data))
            for headers, data in answers[len(requests) - 1]:
                await nc.publish(msg.reply, data, headers=headers)

        fake = await nc.subscribe("$JS.API.DIRECT.GET.FAKE", cb=respond)
        j = Journal(nc, config)
        subs = len(nc._subs)
        errors = []
        try:
            for _ in answers:
                with pytest.raises(JournalError) as info:
                    await j.page("s1", 1, max_events=7, max_bytes=99)
                errors.append(str(info.value))
                assert len(nc._subs) == subs  # the page's subscription is gone
        finally:
            await fake.unsubscribe()
            await nc.close()
        assert requests[0] == {
            "seq": 1,
            "next_by_subj": "fake.events.s1",
            "batch": 7,
            "max_bytes": 99,
        }
        return errors

    errors = asyncio.run(scenario())
    for error, words in zip(errors, expected, strict=True):
        assert words in error, error


def test_a_stream_creation_that_times_out_is_asked_again(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    config = dataclasses.replace(journal_config, stream=f"SLOW_{new_id()[:8]}")

    async def scenario() -> tuple[int, Any]:
        nc = await nats.connect(nats_server.url)
        try:
            journal = Journal(nc, config)
            slow = LateCreates(journal.js, "add_stream", late=2)
            journal.js = slow  # type: ignore[assignment]
            await journal.ensure_stream()
            return slow.creates, await slow.stream_info(config.stream)
        finally:
            await nc.close()

    creates, info = asyncio.run(scenario())
    assert creates == 3
    assert info.config.republish is not None  # the stream this config makes


def test_a_stream_creation_that_never_answers_is_an_error(
    nats_server: EmbeddedNats, journal_config: JournalConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("plantangenet.creating.CREATE_TIMEOUT", 0.5)
    config = dataclasses.replace(journal_config, stream=f"NEVER_{new_id()[:8]}")

    async def scenario() -> int:
        nc = await nats.connect(nats_server.url)
        try:
            journal = Journal(nc, config)
            slow = LateCreates(journal.js, "add_stream", late=10_000)
            journal.js = slow  # type: ignore[assignment]
            with pytest.raises(JournalError, match=r"no answer within 0\.5 s"):
                await journal.ensure_stream()
            return slow.creates
        finally:
            await nc.close()

    assert asyncio.run(scenario()) > 2  # asked again until the deadline


class LateReaders:
    """A JetStream context whose first ``late`` reader creations (``add_consumer``) time out
    before anything is made: a stream leader just elected, not answering yet."""

    def __init__(self, js: Any, late: int) -> None:
        self._js, self.late, self.creates = js, late, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def add_consumer(self, *args: Any, **kwargs: Any) -> Any:
        self.creates += 1
        if self.creates <= self.late:
            raise nats.errors.TimeoutError
        return await self._js.add_consumer(*args, **kwargs)


def test_a_reader_whose_creation_times_out_is_made_again(journal: AsyncJournal) -> None:
    """The reader's creation is answered late: the read asks again and returns every event
    once; one that is never answered is a clear error after a few attempts."""
    j = journal.journal
    batch = [env(AgentAttached(f"a{i}", "bot", ""), "late-read") for i in range(5)]
    journal.run(j.append("late", [env(SessionStarted("late", {}), "c0")], expected_sequence=0))
    journal.run(j.append("late", batch, expected_sequence=1))
    real = j.js
    slow = LateReaders(real, late=1)
    j.js = slow  # type: ignore[assignment]
    try:
        stored = read(journal, "late")
        assert [e.revision for e in stored] == [1, 2, 3, 4, 5, 6]
        assert slow.creates == 2
        never = LateReaders(real, late=10_000)
        j.js = never  # type: ignore[assignment]
        with pytest.raises(JournalError, match="no answer to the reader's creation"):
            read(journal, "late")
        assert never.creates == 4  # the first attempt and three more
    finally:
        j.js = real
