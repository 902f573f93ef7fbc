"""Limits: per-session limits and a full stream fail clearly, write nothing, break nothing."""

from __future__ import annotations

import dataclasses

import pytest

from plantangenet import (
    EmbeddedNats,
    JournalConfig,
    JournalError,
    LimitExceeded,
    Limits,
    Plantangenet,
)


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


def test_a_full_stream_refuses_appends_clearly_and_keeps_the_session_whole(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    config = dataclasses.replace(journal_config, max_bytes=64 * 1024)
    with Plantangenet.open(nats_url=nats_server.url, journal=config) as pg:
        session = pg.session("s1")
        session.start()
        stored = 0
        with pytest.raises(JournalError) as full:
            for n in range(10_000):
                session.change_metadata({"blob": f"{n}-" + "x" * 2000})
                stored += 1
        assert "maximum bytes" in str(full.value).lower() or "storage" in str(full.value).lower()
        assert session.is_running
        # Nothing half-written: the log holds exactly the acknowledged commands, chain intact.
        history = pg.history("s1")
        assert len(history) == 1 + stored
        assert pg.replay("s1") == session.state
        from plantangenet import verify

        assert pg.run(verify(pg.journal, "s1")).intact
        # Still refusing, still clear, still alive.
        with pytest.raises(JournalError):
            session.change_metadata({"more": "x" * 2000})
        assert session.state.event_count == 1 + stored
