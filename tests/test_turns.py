"""The event loop takes an idle session actor's turn itself (``plantangenet.actors.turns``).

A wire command and its append's acknowledgement are both sent on the loop's thread; the
loop handles them there when the actor is idle, holding the actor's turn. These tests
check that it does, that it never does so for what must run on the actor's thread (hooks,
a catch-up, a refusal that asks the log), and that no two threads ever handle one
actor's messages at once, nor out of order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka._envelope
import pytest

from plantangenet import (
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    ChangePolicy,
    Command,
    CommandResult,
    MoveCursor,
    Plantangenet,
    QueryCursor,
    SessionHandle,
    StartSession,
)
from plantangenet.actors.messages import Execute
from plantangenet.actors.session import SessionActor
from plantangenet.actors.turns import Turns
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService
from tests.conftest import with_client
from tests.test_split_writers import allow_many_readers

ALLOW_ALL = {"id": "everything", "effect": "allow", "actions": ["*"], "resources": ["*"]}


def actor_of(pg: Plantangenet, session_id: str) -> SessionActor:
    actor: SessionActor = pg.session(session_id).query(lambda a: a).result(10)
    return actor


def started(pg: Plantangenet) -> tuple[SessionHandle, SessionActor]:
    """Session ``s``, started, and its actor."""
    session = pg.session("s")
    session.start()
    return session, actor_of(pg, "s")


def on_loop(pg: Plantangenet, send: Callable[[], Any]) -> Any:
    """``send()`` called on the runtime's event-loop thread (as the service calls it)."""

    async def call() -> Any:
        return send()

    return pg.run(call())


def test_wire_commands_are_handled_on_the_loop(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    config = runtime.journal_config

    async def body(bot: BotClient) -> None:
        await bot.open("s")
        await bot.attach("s")
        await bot.change_policy("s", replace=[ALLOW_ALL])
        await bot.add_cursor("s", "c", ["x"], 0, 1)
        for i in range(20):
            await bot.move_cursor("s", "c", ["x"], i, i + 1)

    with_client(nats_server.url, config, body, agent_id="bot")
    actor = actor_of(runtime, "s")
    # Each move and its acknowledgement: neither woke the actor's thread.
    assert actor.actor_inbox.taken_on_loop >= 40
    assert actor.state.cursors["c"].start == 19


def test_an_append_decided_on_the_loop_is_sent_without_a_task(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the loop, a single event's append goes out at once (``append_now``); from the
    actor's thread, as a task (``run_then``). Either way the log holds every event."""
    from plantangenet.actors import session_deciding
    from plantangenet.log.append_now import append_now as real

    sent_now: list[bool] = []

    def counted(*args: Any, **kwargs: Any) -> bool:
        sent = real(*args, **kwargs)
        sent_now.append(sent)
        return sent

    monkeypatch.setattr(session_deciding, "append_now", counted)
    session, _ = started(runtime)
    session.attach("bot")
    session.execute(ChangePolicy(replace=(ALLOW_ALL,)))
    session.execute(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    assert sent_now == []  # from this thread: the actor's thread sends them, as tasks

    def move(i: int) -> Callable[[], concurrent.futures.Future[CommandResult]]:
        command = MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i + 1)
        return lambda: session.submit(command)

    # One at a time: each finds the actor idle (one sent behind an append in flight would
    # be queued for the actor's thread).
    sequences = [on_loop(runtime, move(i)).result(10).sequence for i in range(1, 6)]
    assert sequences == list(range(5, 10))
    assert sent_now == [True] * 5
    assert runtime.replay("s") == session.state


def test_commands_from_other_threads_stay_on_the_actors_thread(runtime: Plantangenet) -> None:
    session = runtime.session("s")
    session.start()
    session.attach("bot")
    taken = actor_of(runtime, "s").actor_inbox.taken_on_loop
    for i in range(10):
        session.execute(ChangeMetadata(changed={"k": i}))
    # Decided on the actor's thread, so answered there too (a caller's done-callbacks
    # never find themselves on the loop's thread).
    assert actor_of(runtime, "s").actor_inbox.taken_on_loop == taken


def test_hooks_run_on_the_sessions_thread_for_commands_sent_on_the_loop(
    runtime: Plantangenet,
) -> None:
    session = runtime.session("s")
    session.start()
    threads: list[str] = []
    session.on_change(lambda envelope: threads.append(threading.current_thread().name))

    def change(i: int) -> Callable[[], concurrent.futures.Future[CommandResult]]:
        return lambda: session.submit(ChangeMetadata(changed={"k": i}))

    futures = [on_loop(runtime, change(i)) for i in range(5)]
    for future in futures:
        future.result(10)
    assert len(threads) == 5
    assert runtime.loop.name not in threads


def test_a_stale_refusal_decided_on_the_loop_is_decided_again_after_a_catch_up(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a_pg, b_pg = make_runtime(), make_runtime()
    allow_many_readers(a_pg)
    a = a_pg.session("s")
    a.execute(StartSession())
    a.execute(AttachAgent(agent_id="bot"))
    b = b_pg.session("s")
    assert b.state.sequence == 2  # B will not hear of what A writes next
    a.execute(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    move = MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=1, end=2)
    # On B's state there is no cursor "c": the loop must not answer that refusal, nor
    # wait for the log on its own thread; the actor's thread asks and decides again.
    future: concurrent.futures.Future[CommandResult] = on_loop(b_pg, lambda: b.submit(move))
    assert future.result(10).sequence == 4
    assert b.state == a_pg.replay("s")


def test_no_two_threads_handle_one_actors_messages_and_each_senders_order_holds(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    handling: dict[int, int] = {}
    overlaps: list[str] = []
    unlocked: list[str] = []
    real = SessionActor.on_receive

    def watched(self: SessionActor, message: Any) -> Any:
        if not self.actor_inbox.turn.locked():
            unlocked.append(type(message).__name__)
        inside = handling.get(id(self), 0)
        if inside:
            overlaps.append(type(message).__name__)
        handling[id(self)] = inside + 1
        try:
            return real(self, message)
        finally:
            handling[id(self)] -= 1

    monkeypatch.setattr(SessionActor, "on_receive", watched)
    session = runtime.session("s")
    session.start()
    per_sender = 150

    def send(sender: str) -> list[concurrent.futures.Future[CommandResult]]:
        sent = []
        for i in range(per_sender):
            command = ChangeMetadata(changed={sender: i}, command_id=f"{sender}-{i}")
            sent.append(session.submit(command))
            if i % 10 == 0:
                time.sleep(0.001)
        return sent

    async def loop_sender() -> list[concurrent.futures.Future[CommandResult]]:
        sent = []
        for i in range(per_sender):
            command: Command = ChangeMetadata(changed={"loop": i}, command_id=f"loop-{i}")
            sent.append(session.submit(command))
            if i % 5 == 0:
                await asyncio.sleep(0.002)  # the actor idles now and then: the loop takes turns
            if i % 50 == 0:
                session.query(lambda actor: actor.state.sequence)  # a read among the commands
        return sent

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threads = [pool.submit(send, name) for name in ("t1", "t2")]
        from_loop = runtime.run(loop_sender())
        futures = [*from_loop, *(f for t in threads for f in t.result(30))]
    for future in futures:
        future.result(30)
    assert not overlaps and not unlocked
    assert actor_of(runtime, "s").actor_inbox.taken_on_loop > 0
    stored = runtime.history("s")
    for sender in ("loop", "t1", "t2"):
        values = [
            e.event.changed[sender]  # type: ignore[attr-defined]
            for e in stored
            if sender in getattr(e.event, "changed", {})
        ]
        assert values == list(range(per_sender)), sender
    assert runtime.session("s").state == runtime.replay("s")


class FakeActor:
    """What :class:`Turns` asks of an actor, with everything it is told recorded."""

    def __init__(self, turns: Turns) -> None:
        self.actor_stopped = threading.Event()
        self.turns = turns
        self.loop_thread = True
        self.takes: Callable[[Any], bool] = lambda message: True
        self.handled: list[Any] = []
        self.during: Callable[[Any], None] = lambda message: None

    def _on_loop_thread(self) -> bool:
        return self.loop_thread

    def _takes_on_loop(self, message: Any) -> bool:
        return self.takes(message)

    def on_receive(self, message: Any) -> Any:
        assert self.turns.turn.locked()
        self.handled.append(message)
        self.during(message)


def told(message: Any, reply_to: Any = None) -> Any:
    return pykka._envelope.Envelope(message, reply_to=reply_to)


def queued(turns: Turns) -> list[Any]:
    out = []
    while not turns.empty():
        out.append(turns.get().message)
    return out


def test_the_loop_takes_a_turn_only_when_the_actor_is_idle_and_takes_the_message() -> None:
    turns = Turns()
    actor = turns.actor = FakeActor(turns)
    turns.put(told("before on_start ran"))
    assert actor.handled == [] and queued(turns) == ["before on_start ran"]
    turns.done()  # the message above, handled by the actor's thread
    turns.done()  # on_start ran
    turns.put(told("idle"))
    assert actor.handled == ["idle"] and turns.empty() and turns.taken_on_loop == 1
    turns.put(told("an ask", reply_to=object()))  # pykka answers asks: the actor's thread
    turns.put(told("behind the ask"))  # something is queued: it waits its turn behind it
    assert actor.handled == ["idle"] and queued(turns) == ["an ask", "behind the ask"]
    turns.done()
    turns.done()
    actor.loop_thread = False
    turns.put(told("from another thread"))
    actor.loop_thread = True
    actor.takes = lambda message: message != "not here"
    turns.put(told("not here"))
    assert queued(turns) == ["from another thread", "not here"]
    turns.done()
    turns.done()
    actor.during = lambda message: turns.put(told(f"sent while handling {message}"))
    turns.put(told("first"))
    assert actor.handled[-1] == "first" and queued(turns) == ["sent while handling first"]
    turns.done()
    actor.during = lambda message: None
    with turns.turn:  # the actor's thread is handling a message
        turns.put(told("while the turn is held"))
    turns.done()
    actor.actor_stopped.set()
    turns.put(told("to a stopped actor"))
    assert queued(turns) == ["while the turn is held", "to a stopped actor"]
    assert actor.handled == ["idle", "first"] and turns.taken_on_loop == 2


def test_a_failing_check_leaves_the_message_to_the_actors_thread() -> None:
    turns = Turns()
    actor = turns.actor = FakeActor(turns)
    turns.done()  # on_start ran

    def broken(message: Any) -> bool:
        raise RuntimeError("a bug")

    actor.takes = broken
    turns.put(told("kept"))  # neither lost nor raised at the sender
    assert queued(turns) == ["kept"] and actor.handled == []
    assert not turns.turn.locked()


def test_a_refusal_queued_from_another_thread_is_answered_off_the_loop(
    runtime: Plantangenet,
) -> None:
    # A command decided on the loop is in flight; another thread's command is refused on
    # the state it will make, and waits for it. The acknowledgement would answer that
    # refusal: it is then handled on the actor's thread, where that caller expects it.
    session, actor = started(runtime)
    ghost = MoveCursor(agent_id="ghost", cursor_id="c", axes=("x",), start=0, end=1)

    async def scenario() -> tuple[Any, Any, list[str]]:
        stored = session.submit(ChangeMetadata(changed={"k": 1}))  # decided here, in flight
        sent: list[concurrent.futures.Future[CommandResult]] = []
        sender = threading.Thread(target=lambda: sent.append(session.submit(ghost)))
        sender.start()
        sender.join()
        deadline = time.monotonic() + 10
        while not any(p.refused for p in list(actor._queued)):  # the loop held on purpose:
            assert time.monotonic() < deadline  # the acknowledgement waits behind it
            time.sleep(0.001)
        answered_on: list[str] = []
        sent[0].add_done_callback(lambda _: answered_on.append(threading.current_thread().name))
        return stored, sent[0], answered_on

    stored, refused, answered_on = runtime.run(scenario())
    stored.result(10)
    assert refused.exception(10) is not None
    assert answered_on and answered_on[0] != runtime.loop.name


def test_a_policy_sent_on_the_loop_is_decided_on_the_sessions_thread(
    runtime: Plantangenet,
) -> None:
    session, actor = started(runtime)
    on_loop(runtime, lambda: session.submit(ChangeMetadata(changed={"k": 1}))).result(10)
    taken = actor.actor_inbox.taken_on_loop
    assert taken > 0
    policy = ChangePolicy(replace=[ALLOW_ALL])  # parsing a policy's statements: not the loop's
    assert on_loop(runtime, lambda: session.submit(policy)).result(10).sequence == 3
    assert actor.actor_inbox.taken_on_loop == taken


def test_the_first_data_query_of_an_actor_is_not_the_loops(runtime: Plantangenet) -> None:
    # Its first look at the cursors builds their index, every cursor of the session: the
    # session's thread does that; once built, queries are cheap enough for the loop.
    session, actor = started(runtime)
    query = QueryCursor(agent_id="a", cursor_id="c", compositor="sea")
    told = Execute(query, concurrent.futures.Future())
    assert actor._cursor_index is None
    assert not actor._takes_on_loop(told)
    session.query(lambda a: a.cursor_index).result(10)  # built on the session's thread
    assert actor._takes_on_loop(told)
