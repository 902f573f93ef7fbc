"""Passivation: agent actors (and session actors) that sleep while idle.

An agent without behaviour has no actor at all. One with behaviour is passivated
when idle (stopped, no teardown) and woken (no setup) by the next event for it or
a query of its state; it still sees every event about it, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from plantangenet import (
    Agent,
    AgentContext,
    AttachAgent,
    Envelope,
    JournalConfig,
    MoveCursor,
    Plantangenet,
)
from plantangenet.embedded import EmbeddedNats
from plantangenet.handle import SessionHandle
from tests.conftest import wait_until

#: Seconds an agent actor idles before it is passivated, in these tests.
IDLE = 0.2


class Witness(Agent):
    """Records its hooks and the events it is told of, with the thread each ran on."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def _note(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)
            self.threads.add(threading.get_ident())

    def setup(self, context: AgentContext) -> None:
        self._note(f"setup {context.origin}")

    def teardown(self, context: AgentContext, reason: str) -> None:
        self._note(f"teardown {reason}")

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        self._note(f"{envelope.type_name} {envelope.sequence}")

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for call in self.calls if call.startswith(prefix))

    def events(self) -> list[str]:
        with self.lock:
            return [c for c in self.calls if not c.startswith(("setup", "teardown"))]


@pytest.fixture
def sleepy(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[Plantangenet]:
    pg = Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, agent_idle_timeout=IDLE
    )
    yield pg
    pg.close()


def _sleeping(session: SessionHandle) -> list[str]:
    return session.query(lambda actor: actor.sleeping).result(10)


def _running(session: SessionHandle) -> list[str]:
    return session.query(lambda actor: sorted(actor.agents)).result(10)


def test_agents_without_behaviour_get_no_actor_and_no_thread(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    before = threading.active_count()
    outcomes = session.submit_many(
        AttachAgent(agent_id=f"bot-{i}", kind="bot", name=f"Bot {i}") for i in range(200)
    ).result(30)
    assert all(not isinstance(o, Exception) for o in outcomes)
    session.add_cursor("bot-7", "c", ["x"], 0, 2)
    assert threading.active_count() <= before
    assert _running(session) == []
    state = session.agent_state("bot-7")  # folded from the session's state on demand
    assert state.attached and state.kind == "bot" and state.name == "Bot 7"
    assert state.cursors["c"].end == 2
    with pytest.raises(KeyError):
        session.agent_state("nobody")
    session.detach("bot-7")
    with pytest.raises(KeyError):
        session.agent_state("bot-7")


def test_an_idle_agent_is_passivated_without_teardown_and_woken_without_setup(
    sleepy: Plantangenet,
) -> None:
    session = sleepy.session("s1")
    session.start()
    witness = Witness()
    session.attach("w", behaviour=witness)
    assert _running(session) == ["w"]
    wait_until(lambda: _sleeping(session) == ["w"])
    assert _running(session) == []
    wait_until(lambda: witness.count("AgentAttached") == 1)
    assert witness.count("teardown") == 0
    # Events for it while it sleeps: the first wakes it, each is seen once, in order.
    session.add_cursor("w", "c", ["x"], 0, 1)
    session.move_cursor("w", "c", ["x"], 1, 2)
    session.change_metadata({"topic": "tides"})  # about no agent: it hears it too
    wait_until(lambda: len(witness.events()) == 4)
    sequences = [int(call.split()[1]) for call in witness.events()]
    assert sequences == sorted(sequences)
    assert [call.split()[0] for call in witness.events()] == [
        "AgentAttached",
        "CursorAdded",
        "CursorMoved",
        "SessionMetadataChanged",
    ]
    assert session.agent_state("w").cursors["c"].start == 1
    # Asleep again; a query of its state wakes it, folded from the session's events.
    wait_until(lambda: _sleeping(session) == ["w"])
    state = session.agent_state("w")
    assert state.attached and state.cursors["c"].end == 2
    assert _running(session) == ["w"]
    # Detached while asleep: woken to be torn down, exactly once.
    wait_until(lambda: _sleeping(session) == ["w"])
    session.detach("w", "leaving")
    wait_until(lambda: witness.count("teardown") == 1)
    assert witness.count("setup") == 1
    assert witness.calls[0] == "setup attached"
    assert witness.calls[-2:] == [
        f"AgentDetached {witness.calls[-2].split()[1]}",
        "teardown leaving",
    ]
    assert len(witness.events()) == 6  # everything about it, once: no event lost or repeated
    assert _sleeping(session) == [] and _running(session) == []


def test_a_passivated_agent_sees_every_event_about_it_in_order_under_load(
    sleepy: Plantangenet,
) -> None:
    session = sleepy.session("s1")
    session.start()
    witnesses = {f"w{i}": Witness() for i in range(5)}
    for agent_id, witness in witnesses.items():
        session.attach(agent_id, behaviour=witness)
        session.add_cursor(agent_id, f"c-{agent_id}", ["x"], 0, 1)
    moves = 0
    for round_ in range(6):  # bursts of moves separated by idle spells that passivate
        wait_until(lambda: len(_sleeping(session)) == len(witnesses))
        futures = [
            session.submit(
                MoveCursor(
                    agent_id=agent_id,
                    cursor_id=f"c-{agent_id}",
                    axes=("x",),
                    start=round_ + i,
                    end=99,
                )
            )
            for i in range(10)
            for agent_id in witnesses
        ]
        for future in futures:
            future.result(30)
        moves += 10
    session.end("done")
    for witness in witnesses.values():
        wait_until(lambda w=witness: w.count("teardown") == 1)  # type: ignore[misc]
        events = witness.events()
        sequences = [int(call.split()[1]) for call in events]
        assert sequences == sorted(set(sequences))  # in order, none twice
        assert sum(call.startswith("CursorMoved") for call in events) == moves
        assert events[-1].startswith("SessionEnded")
        assert witness.count("setup") == 1 and witness.calls[-1] == "teardown session ended"


def test_setup_and_teardown_once_across_sleep_and_shutdown(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, agent_idle_timeout=IDLE
    )
    session = pg.session("s1")
    session.start()
    witness = Witness()
    session.attach("w", behaviour=witness)
    wait_until(lambda: _sleeping(session) == ["w"])
    pg.close()  # a sleeping agent is torn down at shutdown like a running one
    wait_until(lambda: witness.count("teardown") == 1)
    assert witness.calls[0] == "setup attached" and witness.calls[-1] == "teardown shutdown"
    assert witness.count("setup") == 1


def test_agent_actor_threads_stay_few_while_idle(sleepy: Plantangenet) -> None:
    session = sleepy.session("s1")
    session.start()
    before = threading.active_count()
    witnesses = [Witness() for _ in range(50)]
    for i, witness in enumerate(witnesses):
        session.attach(f"w{i}", behaviour=witness)
    wait_until(lambda: len(_sleeping(session)) == 50)
    wait_until(lambda: threading.active_count() <= before + 2)
    assert all(w.count("setup") == 1 and w.count("teardown") == 0 for w in witnesses)
