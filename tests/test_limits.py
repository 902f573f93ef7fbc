"""Limits: per-session limits and a full stream fail clearly, write nothing, break nothing.

The stream's own limits (``max_bytes``, ``max_msgs``, ``replicas``) are set where they are
given, kept where they are not, and never on a stream that would drop history for them.
"""

from __future__ import annotations

import dataclasses

import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from plantangenet import (
    EmbeddedNats,
    JournalConfig,
    JournalError,
    LimitExceeded,
    Limits,
    Plantangenet,
    StorageExhausted,
)
from plantangenet.log.journal import InvalidJournalConfig


def test_session_limits_are_enforced_before_anything_is_written(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    limits = Limits(max_agents=3, max_cursors_per_agent=2, max_metadata_keys=4)
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config, limits=limits) as pg:
        session = pg.session("s1")
        session.start({"a": 1, "b": 2})
        for agent in ("x", "y", "z"):
            session.attach(agent)
        before = pg.sessions()["s1"]
        with pytest.raises(LimitExceeded, match="3 agents"):
            session.attach("w")
        session.add_cursor("x", "c1", ["t"], 0, 1)
        session.add_cursor("x", "c2", ["t"], 0, 1)
        with pytest.raises(LimitExceeded, match="2 cursors"):
            session.add_cursor("x", "c3", ["t"], 0, 1)
        session.add_cursor("y", "c3", ["t"], 0, 1)  # the limit is per agent
        with pytest.raises(LimitExceeded, match="5 keys"):
            session.change_metadata({"c": 3, "d": 4, "e": 5})
        session.change_metadata({"c": 3, "d": 4, "e": 5}, removed=["a"])  # 4 keys: fine
        assert pg.sessions()["s1"] == before + 4
        session.detach("z")
        session.attach("w")  # room again
    with pytest.raises(LimitExceeded):
        from plantangenet import StartSession, decide
        from plantangenet.projections import SessionState

        decide(
            SessionState("s2"), StartSession(metadata={str(i): i for i in range(5)}), limits=limits
        )


@pytest.mark.parametrize(
    "limit", [{"max_bytes": 64 * 1024}, {"max_msgs": 40}], ids=["max_bytes", "max_msgs"]
)
def test_a_full_stream_refuses_appends_clearly_and_keeps_the_session_whole(
    nats_server: EmbeddedNats, journal_config: JournalConfig, limit: dict[str, int]
) -> None:
    config = dataclasses.replace(
        journal_config, max_bytes=limit.get("max_bytes"), max_msgs=limit.get("max_msgs")
    )
    with Plantangenet.open(nats_url=nats_server.url, journal=config) as pg:
        session = pg.session("s1")
        session.start()
        stored = 0
        with pytest.raises(StorageExhausted) as full:
            for n in range(10_000):
                session.change_metadata({"blob": f"{n}-" + "x" * 2000})
                stored += 1
        assert full.value.code == "storage_exhausted"
        assert "the stream is full" in str(full.value) and "nothing of it was stored" in str(
            full.value
        )
        assert session.is_running
        # Nothing half-written: the log holds exactly the acknowledged commands, chain intact.
        history = pg.history("s1")
        assert len(history) == 1 + stored
        assert pg.replay("s1") == session.state
        from plantangenet import verify

        assert pg.run(verify(pg.journal, "s1")).intact
        # Still refusing, still clear, still alive.
        with pytest.raises(StorageExhausted):
            session.change_metadata({"more": "x" * 2000})
        assert session.state.event_count == 1 + stored
        if "max_msgs" in limit:
            assert 1 + stored == limit["max_msgs"]


def stream_config(pg: Plantangenet) -> StreamConfig:
    info = pg.run(pg.journal.js.stream_info(pg.journal_config.stream))
    assert isinstance(info.config, StreamConfig)
    return info.config


def test_limits_given_are_set_on_an_existing_stream_and_limits_not_given_are_kept(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        c = stream_config(pg)
        assert (c.max_bytes, c.max_msgs, c.num_replicas, c.max_age) == (-1, -1, 1, 0)
        session = pg.session("s1")
        session.start()
        for i in range(9):
            session.change_metadata({"k": i})
    limited = dataclasses.replace(journal_config, max_msgs=5, max_bytes=1 << 20)
    with Plantangenet.open(nats_url=nats_server.url, journal=limited) as pg:
        c = stream_config(pg)
        assert (c.max_bytes, c.max_msgs, c.discard) == (1 << 20, 5, "new")
        # A limit below what the stream holds drops nothing (discard new): appends wait
        # for room that never comes, and are refused.
        assert len(pg.history("s1")) == 10
        with pytest.raises(StorageExhausted):
            pg.session("s1").change_metadata({"k": 10})
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        assert (stream_config(pg).max_bytes, stream_config(pg).max_msgs) == (1 << 20, 5)  # kept
    unlimited = dataclasses.replace(journal_config, max_msgs=-1)
    with Plantangenet.open(nats_url=nats_server.url, journal=unlimited) as pg:
        assert (stream_config(pg).max_bytes, stream_config(pg).max_msgs) == (1 << 20, -1)
        assert pg.session("s1").change_metadata({"k": 10}).sequence == 11


def test_no_limit_is_set_on_a_stream_that_discards_old_messages(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        config = dataclasses.replace(stream_config(pg), discard=DiscardPolicy.OLD)
        pg.run(pg.journal.js.update_stream(config))
    limited = dataclasses.replace(journal_config, max_msgs=5)
    with pytest.raises(JournalError, match="discards its oldest messages"):
        Plantangenet.open(nats_url=nats_server.url, journal=limited)
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        assert stream_config(pg).max_msgs == -1  # untouched


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("max_bytes", 0, "0 would mean no limit"),
        ("max_bytes", -2, "negative"),
        ("max_msgs", -7, "negative"),
        ("max_msgs", 1.5, "not a whole number"),
        ("max_msgs", True, "not a whole number"),
        ("replicas", 0, "out of range"),
        ("replicas", 6, "out of range"),
    ],
)
def test_a_limit_out_of_range_is_refused_before_anything_starts(
    field: str, value: object, problem: str
) -> None:
    with pytest.raises(InvalidJournalConfig, match=f"{field}: .*{problem}"):
        JournalConfig(**{field: value})  # type: ignore[arg-type]
