"""Passivation: agent actors (and session actors) that sleep while idle.

An agent without behaviour has no actor at all. One with behaviour is passivated
when idle (stopped, no teardown) and woken (no setup) by the next event for it or
a query of its state; it still sees every event about it, in order.
"""

from __future__ import annotations

import threading
import time
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
from plantangenet.actors.handle import SessionHandle
from plantangenet.nats.embedded import EmbeddedNats
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


def test_agent_actors_share_a_bounded_pool_of_threads(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, agent_idle_timeout=IDLE, agent_threads=4
    )
    try:
        session = pg.session("s1")
        session.start()
        before = threading.active_count()
        witnesses = [Witness() for _ in range(300)]
        outcomes = [
            session.submit(AttachAgent(agent_id=f"w{i}"), behaviour=witness)
            for i, witness in enumerate(witnesses)
        ]
        peak = 0
        while not all(f.done() for f in outcomes):
            peak = max(peak, threading.active_count())
        session.change_metadata({"topic": "tides"})  # told to all 300
        wait_until(lambda: all(len(w.events()) == 2 for w in witnesses))
        peak = max(peak, threading.active_count())
        assert peak <= before + 4
        assert len(set().union(*(w.threads for w in witnesses))) <= 4
        wait_until(lambda: len(_sleeping(session)) == 300)
        assert all(w.count("setup") == 1 and w.count("teardown") == 0 for w in witnesses)
    finally:
        pg.close()
    wait_until(lambda: all(w.count("teardown") == 1 for w in witnesses))


# -- sessions --------------------------------------------------------------------------


@pytest.fixture
def dozy(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[Plantangenet]:
    pg = Plantangenet.open(
        nats_url=nats_server.url,
        journal=journal_config,
        agent_idle_timeout=0.1,
        session_idle_timeout=0.3,
    )
    yield pg
    pg.close()


def test_an_idle_session_is_passivated_and_revived_by_its_handle(dozy: Plantangenet) -> None:
    session = dozy.session("s1")
    session.start()
    witness = Witness()
    session.attach("w", behaviour=witness)
    session.attach("bot", kind="bot")  # no behaviour
    session.add_cursor("bot", "cb", ["x"], 0, 1)
    before = session.state
    wait_until(lambda: not session.is_running)  # agents asleep first, then the session
    assert dozy.running_session("s1") is None
    assert witness.count("teardown") == 0
    # The same handle takes it up again: rehydrated, its agents not set up again.
    session.add_cursor("w", "cw", ["x"], 0, 1)
    assert session.is_running
    assert dozy.session("s1") is session
    wait_until(lambda: witness.count("CursorAdded") == 1)
    state = session.state
    assert state.sequence > before.sequence and set(state.agents) == {"w", "bot"}
    assert dozy.replay("s1") == state
    assert session.agent_state("bot").cursors["cb"].end == 1
    assert session.agent_state("w").cursors["cw"].end == 1
    # Again, revived this time by the runtime's session(); then detached: torn down once.
    wait_until(lambda: not session.is_running)
    assert dozy.session("s1") is session and session.is_running
    session.detach("w", "leaving")
    wait_until(lambda: witness.count("teardown") == 1)
    assert witness.count("setup") == 1 and witness.calls[0] == "setup attached"
    assert witness.calls[-1] == "teardown leaving"
    events = witness.events()
    assert [e.split()[0] for e in events] == [
        "AgentAttached",
        "CursorAdded",
        "CursorRemoved",  # the detach removes its cursor
        "AgentDetached",
    ]


def test_a_passivated_sessions_agents_are_torn_down_once_at_shutdown(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url,
        journal=journal_config,
        agent_idle_timeout=0.1,
        session_idle_timeout=0.3,
    )
    session = pg.session("s1")
    session.start()
    witnesses = {name: Witness() for name in ("a", "b")}
    for name, witness in witnesses.items():
        session.attach(name, behaviour=witness)
    wait_until(lambda: not session.is_running)
    pg.stop_session("s1")  # passivated: started again to tear its agents down
    wait_until(lambda: all(w.count("teardown") == 1 for w in witnesses.values()))
    pg.close()
    for witness in witnesses.values():
        assert witness.calls[0] == "setup attached" and witness.calls[-1] == "teardown shutdown"
        assert witness.count("setup") == 1 and witness.count("teardown") == 1


def test_a_session_with_an_on_change_hook_or_a_running_agent_stays_up(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url,
        journal=journal_config,
        agent_idle_timeout=None,  # agent actors never sleep: their session neither
        session_idle_timeout=0.1,
    )
    try:
        hooked = pg.session("hooked")
        hooked.start()
        seen: list[str] = []
        hooked.on_change(lambda envelope: seen.append(envelope.type_name))
        busy = pg.session("busy")
        busy.start()
        busy.attach("w", behaviour=Witness())
        plain = pg.session("plain")
        plain.start()
        wait_until(lambda: not plain.is_running)
        time.sleep(0.3)
        assert hooked.is_running and busy.is_running
        hooked.change_metadata({"k": "v"})
        assert seen == ["SessionMetadataChanged"]
    finally:
        pg.close()


def test_commands_racing_a_session_passivation_are_all_answered(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, session_idle_timeout=0.05
    )
    try:
        session = pg.session("s1")
        session.start()
        session.attach("bot", kind="bot")
        session.add_cursor("bot", "c", ["x"], 0, 1)
        revivals = 0
        for i in range(40):  # each command after an idle spell long enough to passivate
            time.sleep(0.03 + (i % 5) * 0.01)
            revivals += not session.is_running
            session.move_cursor("bot", "c", ["x"], i, i + 1)
        assert revivals > 0
        assert session.state.cursors["c"].start == 39
        assert pg.replay("s1") == session.state
    finally:
        pg.close()


def test_commands_from_many_threads_racing_passivation_are_all_answered(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    pg = Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, session_idle_timeout=0.01
    )
    try:
        session = pg.session("s1")
        session.start()
        for t in range(4):
            session.attach(f"bot-{t}", kind="bot")
            session.add_cursor(f"bot-{t}", f"c{t}", ["x"], 0, 1)
        failures: list[BaseException] = []

        def write(t: int) -> None:
            for i in range(30):
                time.sleep(((i * 7 + t * 3) % 7) * 0.01)  # gaps around the reaper's period
                try:
                    session.move_cursor(f"bot-{t}", f"c{t}", ["x"], i, i + 1)
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        state = session.state
        assert all(state.cursors[f"c{t}"].start == 29 for t in range(4))
        assert pg.replay("s1") == state
    finally:
        pg.close()
