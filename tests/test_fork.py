"""Forks: a new session with another's history up to a position, diverging independently.

Against the real nats-server of the test run (fresh stream per test).
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from plantangenet import (
    ChangeMetadata,
    CommandRejected,
    EmbeddedNats,
    EndSession,
    Envelope,
    JournalConfig,
    Plantangenet,
    SessionClosed,
    SessionExists,
    SessionStarted,
    SessionState,
    StreamSequence,
    UnknownPosition,
    UnknownSession,
    fold,
)
from plantangenet.cli import main
from plantangenet.log.verify import verify
from plantangenet.timetravel.fork import comparable, fork, same_history
from plantangenet.timetravel.history import diff, fork_origin, why

POLICY = [
    {
        "id": "watchers",
        "effect": "allow",
        "roles": ["watcher"],
        "actions": ["cursor.*"],
        "resources": ["axis.*", "cursor.*"],
    }
]


def script(runtime: Plantangenet, session_id: str = "origin") -> list[Envelope]:
    """A session of 16 events: policy, identity, agents, roles, cursors, a refusal, a detach."""
    session = runtime.session(session_id)
    session.start({"purpose": "fork"})
    session.bind_identity("ops", "Ops", {"tier": "gold"})
    session.change_policy(replace=POLICY)
    session.attach("bot", name="Bot")
    session.attach("viewer", kind="client")
    session.grant_role("bot", "watcher")
    session.add_cursor("bot", "c1", ["ocean.temp"], 0, 10, issued_by="bot")
    session.add_cursor("bot", "c2", ["ocean.salt"], 0, 10, issued_by="bot")
    with pytest.raises(CommandRejected):
        session.add_cursor("viewer", "v1", ["x"], 0, 1, issued_by="viewer")  # recorded refusal
    session.move_cursor("bot", "c1", ["ocean.temp"], 5, 15, issued_by="bot")
    session.execute(ChangeMetadata(changed={"step": 1}, correlation_id="req-1"))
    session.execute(ChangeMetadata(changed={"step": 2}, correlation_id="req-1"))
    session.detach("bot", "done")  # removes c1, c2 and the bot: three events
    session.change_metadata({"step": 3})
    history = runtime.history(session_id)
    assert len(history) == 16
    return history


def test_a_fork_at_n_holds_the_first_n_events(runtime: Plantangenet) -> None:
    history = script(runtime)
    journal = runtime.journal
    for n, position in (
        (1, 1),  # a revision
        (9, history[8].event_id),  # the refusal
        (13, history[12].occurred_at),  # a multi-event command cut at its first event...
        (16, StreamSequence(history[-1].sequence or 0)),
    ):
        new_id = f"fork-{n}"
        state = fork(runtime, "origin", position, new_id)
        if n == 13:
            n = 15  # ...resolves to the command's last event: a time never splits a command
        expected = fold("origin", history[:n])
        assert state.event_count == n
        assert comparable(state) == comparable(expected)
        assert same_history(state, expected)
        assert state.session_id == new_id and state.sequence > (history[-1].sequence or 0)
        assert diff(comparable(state), comparable(expected)).empty
        # The log holds the fork; a new actor rehydrates it.
        assert runtime.replay(new_id) == state
        assert runtime.session(new_id).state == state
        assert runtime.run(verify(journal, new_id)).intact
        copies = runtime.history(new_id)
        for original, copy in zip(history[:n], copies, strict=True):
            assert copy.session_id == new_id
            assert copy.event_id != original.event_id
            assert copy.causation_id == f"fork:origin:{original.sequence}"
            assert fork_origin(copy) == ("origin", original.sequence)
            assert copy.correlation_id == original.correlation_id
            assert copy.occurred_at == original.occurred_at
            assert copy.agent_id == original.agent_id
            assert copy.authorization == original.authorization
            if isinstance(original.event, SessionStarted):
                assert copy.event == dataclasses.replace(original.event, session_id=new_id)
            else:
                assert copy.event == original.event
        assert copies[0].previous_hash == b""
    # The origin is untouched by all of this.
    assert runtime.history("origin") == history
    assert runtime.run(verify(journal, "origin")).intact


def test_commands_on_a_fork_and_its_origin_do_not_touch_each_other(
    runtime: Plantangenet,
) -> None:
    history = script(runtime)
    fork(runtime, "origin", 11, "branch")  # before the detach
    branch = runtime.session("branch")
    origin = runtime.session("origin")
    assert set(branch.state.agents) == {"bot", "viewer"}
    # The fork goes on differently: a new cursor for the bot, the viewer leaves.
    branch.add_cursor("bot", "c3", ["ocean.wave"], 1, 2, issued_by="bot")
    branch.detach("viewer", "not here")
    branch.change_metadata({"branch": True})
    # And the origin goes on as well.
    origin.attach("late")
    origin_state, branch_state = runtime.replay("origin"), runtime.replay("branch")
    assert runtime.history("origin")[: len(history)] == history
    assert set(origin_state.agents) == {"viewer", "late"} and "branch" not in origin_state.metadata
    assert set(branch_state.agents) == {"bot"} and branch_state.metadata["branch"] is True
    assert set(branch_state.cursors) == {"c1", "c2", "c3"}
    assert branch.state == branch_state and origin.state == origin_state
    for session_id in ("origin", "branch"):
        assert runtime.run(verify(runtime.journal, session_id)).intact
    # why() on a copied event follows the fork to the original command; a revision
    # means the same event in the fork as in its origin.
    copied = runtime.history("branch")[8]
    answer = runtime.run(why(runtime.journal, "branch", copied.event_id))
    assert runtime.run(why(runtime.journal, "branch", 9)).event == copied
    assert copied.revision == history[8].revision == 9
    assert answer.origin == ("origin", history[8].sequence)
    assert answer.origin_why is not None and answer.origin_why.event == history[8]
    # A fork of a fork records its own origin.
    twig = fork(runtime, "branch", branch_state.revision, "twig")
    assert comparable(twig) == comparable(branch_state)
    first = runtime.history("branch")[0]
    assert fork_origin(runtime.history("twig")[0]) == ("branch", first.sequence)


def test_a_fork_refuses_an_existing_target_and_bad_positions(runtime: Plantangenet) -> None:
    history = script(runtime)
    script(runtime, "taken")
    taken = runtime.history("taken")
    for target in ("taken", "origin"):
        with pytest.raises(SessionExists):
            fork(runtime, "origin", 3, target)
    assert runtime.history("taken") == taken and runtime.history("origin") == history
    with pytest.raises(UnknownSession):
        fork(runtime, "nobody", 1, "fresh")
    with pytest.raises(UnknownPosition):
        fork(runtime, "origin", "0123456789abcdef0123456789abcdef", "fresh")
    with pytest.raises(UnknownPosition):
        fork(runtime, "origin", history[0].occurred_at.replace(year=2000), "fresh")
    assert runtime.run(runtime.journal.last_sequence("fresh")) == 0  # nothing written
    with pytest.raises(CommandRejected):  # ids are checked like every session id
        fork(runtime, "origin", 1, "no spaces")
    # A fork made, the same fork again is refused.
    fork(runtime, "origin", 1, "fresh")
    with pytest.raises(SessionExists):
        fork(runtime, "origin", 1, "fresh")


def test_a_fork_in_small_batches_through_the_journal(runtime: Plantangenet) -> None:
    history = script(runtime)
    handle = runtime.session("small")  # opened (empty) before the fork exists
    assert handle.state.status == "new"
    state: SessionState = runtime.run(
        fork(runtime.journal, "origin", history[-1].event_id, "small", batch_size=4)
    )
    assert comparable(state) == comparable(fold("origin", history))
    assert runtime.run(verify(runtime.journal, "small")).intact
    # The fork through the journal does not know the runtime's handles: stop it to rehydrate.
    runtime.stop_session("small")
    assert runtime.session("small").state == state
    runtime.session("small").change_metadata({"after": "fork"})
    assert runtime.run(verify(runtime.journal, "small")).intact
    # Through the runtime, a handle opened before is replaced.
    runtime.session("small2")
    fork(runtime, "origin", 3, "small2", batch_size=1)
    assert runtime.session("small2").state.event_count == 3


def test_a_fork_of_an_ended_session(runtime: Plantangenet) -> None:
    history = script(runtime)
    runtime.session("origin").execute(EndSession(reason="closed"))
    ended = fork(runtime, "origin", StreamSequence(10_000), "after-end")
    assert ended.status == "ended" and ended.end_reason == "closed"
    with pytest.raises(SessionClosed):
        runtime.session("after-end").change_metadata({"x": 1})
    reopened = fork(runtime, "origin", len(history), "before-end")
    assert reopened.status == "active"
    runtime.session("before-end").change_metadata({"x": 1})
    assert runtime.session("before-end").state.metadata["x"] == 1


def test_fork_on_the_command_line(nats_server: EmbeddedNats, journal_config: JournalConfig) -> None:
    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        opts = ["--nats-url", nats_server.url, "--stream", journal_config.stream]
        status = main([*args, *opts, "--subject-prefix", journal_config.subject_prefix], out=out)
        return status, out.getvalue()

    assert run("demo", "--session-id", "harbour")[0] == 0
    status, text = run("fork", "harbour", "--at", "16", "--as", "what-if")
    assert status == 0
    assert "forked harbour at revision 16 as what-if: 16 events copied" in text
    status, text = run("verify", "what-if")
    assert status == 0 and "history intact (16 events verified)" in text
    status, text = run("fork", "harbour", "--as", "whole", "--json")
    report = json.loads(text)
    assert report["origin"] == "harbour" and report["state"]["event_count"] == 20
    assert report["state"]["session_id"] == "whole" and report["origin_sequence"] == 20
    status, text = run("fork", "harbour", "--at", "2999-01-01T00:00:00Z", "--as", "by-time")
    assert "(up to origin sequence 20)" in text
    assert run("fork", "harbour", "--at", "3", "--as", "what-if")[0] == 2  # exists
    assert run("fork", "harbour", "--at", "nonsense", "--as", "other")[0] == 2
    status, text = run("why", "what-if", "seq:36")
    assert "copied by a fork from session harbour, sequence 16" in text
    # A revision names the same event in the fork as in its origin: `why FORK 16` works.
    status, text = run("why", "what-if", "16")
    assert status == 0 and "copied by a fork from session harbour, sequence 16" in text
