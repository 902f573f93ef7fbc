"""Read-your-writes across ``serve`` processes.

A bot's ``state`` query reflects every command acknowledged before it was sent,
whichever process stored the command and whichever answers the query. Each
process keeps its own actor for a session; one that did not write learns of the
other's events only from the log. Before answering, the service asks the log
for the session's last sequence, and the actor catches up to it if it is behind.

The services here take commands on distinct prefixes, so a test decides which
process writes and which reads: every read is answered by a process that did
not write the move it must show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from plantangenet import (
    ActorStopped,
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    ConcurrencyError,
    Plantangenet,
    StartSession,
)

# -- the actor: a read waits for its own append in flight, never folds around it ------------


def slow_appends(runtime: Plantangenet, seconds: float) -> None:
    """Every append of ``runtime``'s journal waits ``seconds`` before it is sent."""
    append = runtime.journal.append_payloads

    async def slow(session_id: str, envelopes: Any, payloads: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await append(session_id, envelopes, payloads, **kwargs)

    runtime.journal.append_payloads = slow  # type: ignore[method-assign]


def test_a_read_behind_the_log_waits_for_the_actors_append_in_flight(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    writer_b = b.session("s")  # rehydrates at sequence 1, and hears nothing of A's writes
    assert writer_b.state.sequence == 1
    a.session("s").execute(AttachAgent(agent_id="bot"))
    head = a.session("s").execute(ChangeMetadata(changed={"k": 1})).sequence
    slow_appends(b, 0.3)
    # B's append is in flight (and stale: it will conflict) when the read arrives.
    first = writer_b.submit(ChangeMetadata(changed={"k": 2}))
    second = writer_b.submit(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    time.sleep(0.05)
    read = writer_b.state_at_least(head)
    with pytest.raises(ConcurrencyError):
        first.result(10)
    state = read.result(10)
    # Answered on the caught-up state (never one folded around the append in flight).
    assert state.sequence >= head and state.metadata["k"] in (1, 2)
    assert "bot" in state.agents
    assert second.result(10).sequence > head
    assert writer_b.state == a.replay("s")


def test_a_read_at_the_head_is_answered_at_once_and_one_behind_catches_up(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    reader = b.session("s")
    assert reader.state_at_least(1).result(10).sequence == 1
    moved = [a.session("s").execute(ChangeMetadata(changed={"k": i})).sequence for i in range(1, 4)]
    assert reader.state.sequence == 1  # the plain state: what the actor has seen
    state = reader.state_at_least(moved[-1]).result(10)
    assert state.sequence == moved[-1] and state.metadata["k"] == 3
    assert reader.state_at_least(2).result(10) == state  # older asks: the state as it is


def test_a_read_waiting_on_a_stopping_actor_is_answered_actor_stopped(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    writer_b = b.session("s")
    writer_b.state  # noqa: B018 - rehydrated at sequence 1
    head = a.session("s").execute(ChangeMetadata(changed={"k": 1})).sequence
    slow_appends(b, 0.5)
    pending = writer_b.submit(ChangeMetadata(changed={"k": 2}))
    time.sleep(0.05)
    read = writer_b.state_at_least(head)
    time.sleep(0.05)
    b.stop_session("s")
    with pytest.raises(ActorStopped):
        read.result(10)
    with pytest.raises(ActorStopped):
        pending.result(10)
