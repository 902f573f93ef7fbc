"""The runtime: a NATS connection, its event loop, the journal, and session actors.

>>> from plantangenet import Plantangenet
>>> with Plantangenet.open() as pg:            # embedded nats-server unless NATS_URL is set
...     session = pg.session("doc-example")
...     _ = session.start({"purpose": "docs"})
...     _ = session.attach("bot-1", kind="bot", name="Bot One")
...     pg.replay("doc-example") == session.state
True
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from plantangenet.actors.agent import Agent
from plantangenet.actors.handle import SessionHandle
from plantangenet.actors.refusals import RefusalLimit
from plantangenet.actors.session import (
    DEFAULT_AGENT_IDLE_TIMEOUT,
    DEFAULT_COMPOSITOR_THREADS,
    DEFAULT_COMPOSITOR_TIMEOUT,
    DEFAULT_MAX_BATCH,
    AgentFactory,
    Asleep,
    PassivateIfIdle,
    SessionActor,
)
from plantangenet.data.chems import Chems
from plantangenet.data.compositors import Compositor
from plantangenet.domain.decide import DEFAULT_LIMITS, Limits, check_id, damage
from plantangenet.errors import UnknownSession
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import CheckedEvent, Envelope
from plantangenet.log.journal import Journal, JournalConfig
from plantangenet.log.loop import EventLoopThread
from plantangenet.log.positions import Position
from plantangenet.log.positions import state_at as history_state_at
from plantangenet.log.replay import Progress
from plantangenet.log.session_replay import fold_events, replay
from plantangenet.nats.connect import connect, redact
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.nats.store import SharedStore
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger
from plantangenet.projections.session import SessionState

log = logging.getLogger("plantangenet.runtime")

#: Environment variable naming an external NATS server or cluster.
NATS_URL_ENV = "NATS_URL"

#: Seconds a session actor may idle before it is passivated, unless told otherwise.
DEFAULT_SESSION_IDLE_TIMEOUT = 300.0


def default_store_dir() -> Path:
    """Where the embedded server keeps its JetStream store unless told otherwise."""
    configured = os.environ.get("PLANTANGENET_STORE_DIR")
    if configured:
        return Path(configured)
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "plantangenet" / "nats"


def _default_agent(agent_id: str, kind: str) -> Agent:
    return Agent()


class Plantangenet:
    """Entry point: connects to NATS (or starts an embedded server) and hosts sessions.

    :param nats_url: server or cluster URL(s), comma-separated. ``None`` reads
        ``NATS_URL``; if that is unset too, an embedded ``nats-server`` is
        started on loopback with its store in ``store_dir``.
    :param store_dir: the embedded server's store (default
        :func:`default_store_dir`); ignored with an external server.
    :param journal: stream name, subjects, replicas and timeouts (default:
        :meth:`JournalConfig.from_env`).
    :param agent_factory: behaviour for agents attached without one, and for
        agents brought back by rehydration: ``factory(agent_id, kind)``. An agent
        whose behaviour does nothing (``None``, the base :class:`Agent`: the default)
        gets no actor and no thread; its state is folded from the session's.
    :param agent_idle_timeout: seconds an agent actor may go without an event for it
        (or a query of its state) before it is passivated: stopped without teardown,
        and started again, without setup, its state folded from the session's, when
        it is needed (``None``: never).
    :param session_idle_timeout: seconds a session actor may go without a command or a
        read (and with no agent actor running, no on-change hook) before it is
        passivated: stopped, its agents not torn down, and started again (rehydrated
        from the log, its agents not set up again) by the next use of its handle or of
        :meth:`session` (``None``: never).
    :param agent_threads: the most threads this runtime's agent actors run on (a pool of
        its own); ``None``: the process's shared pool (32 threads unless
        ``PLANTANGENET_AGENT_THREADS`` says otherwise). Agent actors have no thread each.
    :param limits: per-session limits (agents, cursors per agent, metadata keys).
    :param nats_options: more keyword arguments for ``nats.connect`` (``user``,
        ``password``, ``user_credentials``, ``tls``...).
    :param compositors: the data producers this process provides to its sessions
        (more with :meth:`add_compositor`).
    :param max_batch: the most events a session writes in one append (group commit:
        commands decided while an append is in flight go out together in the next,
        up to this many events; also the most one command may write). At most 1,000.
    :param refusal_limit: how fast each remote principal's refusals are recorded one by
        one in a session (default :class:`RefusalLimit`); past it they are answered and
        counted, and a ``RefusalsSuppressed`` event summarises them once per interval.
    :param compositor_threads: the threads compositors answer data queries on (a pool of
        this runtime's): never a session actor's, so a slow compositor delays no other
        command (see :class:`~plantangenet.actors.session.SessionActor`).
    :param compositor_timeout: seconds a compositor may take to answer before its query
        is answered ``CompositorFailed``, recording nothing (``None``: no limit).
    """

    def __init__(
        self,
        *,
        nats_url: str | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        journal: JournalConfig | None = None,
        codec: EventCodec = CODEC,
        agent_factory: AgentFactory = _default_agent,
        max_batch: int = DEFAULT_MAX_BATCH,
        nats_options: dict[str, Any] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        compositors: Iterable[Compositor] = (),
        refusal_limit: RefusalLimit | None = None,
        agent_idle_timeout: float | None = DEFAULT_AGENT_IDLE_TIMEOUT,
        session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
        agent_threads: int | None = None,
        compositor_threads: int = DEFAULT_COMPOSITOR_THREADS,
        compositor_timeout: float | None = DEFAULT_COMPOSITOR_TIMEOUT,
    ) -> None:
        if compositor_timeout is not None and not compositor_timeout > 0:
            raise ValueError("compositor_timeout must be positive (or None: no limit)")
        #: The threads compositors answer on, and how long they may take.
        self._compositor_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=compositor_threads, thread_name_prefix="plantangenet-compositor"
        )
        self.compositor_timeout = compositor_timeout
        #: The agent actors' threads: a pool of this runtime's, or the process's shared one.
        self._agent_pool = (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=agent_threads, thread_name_prefix="plantangenet-agent"
            )
            if agent_threads
            else None
        )
        self.agent_idle_timeout = agent_idle_timeout
        self.session_idle_timeout = session_idle_timeout
        #: Passivated sessions' agents, by session (a session here is passivated).
        self._asleep: dict[str, Asleep] = {}
        self._closed = False
        self.nats_url = nats_url or os.environ.get(NATS_URL_ENV) or None
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.journal_config = journal or JournalConfig.from_env()
        self.codec = codec
        self.agent_factory = agent_factory
        self.max_batch = max_batch
        self.nats_options = dict(nats_options or {})
        self.limits = limits
        self.refusal_limit = refusal_limit or RefusalLimit()
        #: The embedded server, when this process started it (see :attr:`store`).
        self.server: EmbeddedNats | None = None
        self._store: SharedStore | None = None
        self.loop = EventLoopThread()
        self._nc: Any = None
        self._journal: Journal | None = None
        self._sessions: dict[str, SessionHandle] = {}
        #: Guards the sessions; notified when a session's passivation completes.
        self._lock = threading.Condition()
        #: Sessions whose actors are stopping to be passivated (``_asleep`` not yet set).
        self._passivating: set[str] = set()
        #: The compositors sessions of this process can query, by name.
        self.compositors: dict[str, Compositor] = {}
        for compositor in compositors:
            self.add_compositor(compositor)
        self._chems: Chems | None = None

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def open(cls, **kwargs: Any) -> Self:
        """Create and :meth:`start` a runtime (use it as a context manager)."""
        return cls(**kwargs).start()

    def start(self) -> Self:
        """Start (or join) the embedded server if needed, connect, and ensure the stream.

        Without a NATS URL, the store directory's one server is used: this process starts
        it, or joins the one another process runs on the same store (see
        :mod:`plantangenet.nats.store`), never a second one.
        """
        url = self.nats_url
        if url is None:
            self._store = SharedStore(self.store_dir or default_store_dir())
            url = self._store.open()
            self.server = self._store.server
            monitor = self._store.monitor_url
            if monitor is not None and self.journal_config.monitor_url is None:
                # A late append then asks the server whether its store can still write.
                self.journal_config = dataclasses.replace(self.journal_config, monitor_url=monitor)
        self.loop.start()
        try:
            self._nc = self.loop.run(self._connect(url), timeout=30)
            self._journal = Journal(self._nc, self.journal_config, self.codec)
            self.loop.run(self._journal.ensure_stream(), timeout=30)
        except BaseException:
            self.close()
            raise
        self._schedule_reap()
        return self

    async def open_connection(self, name: str) -> Any:
        """Another NATS connection to the runtime's server, as the runtime's own is made.

        For work that must not share a socket with the journal: the session service
        takes bots' requests on one of its own, so that a flood of requests queued on
        its socket never delays the acknowledgements of the journal's appends. Run it
        on the runtime's loop; the caller closes the connection.
        """
        url = self._store.url if self._store is not None else self.nats_url
        if url is None:
            raise RuntimeError("the runtime is not started; call start() or use open()")
        return await self._connect(url, name)

    async def _connect(self, url: str, name: str | None = None) -> Any:
        return await connect(url, self.nats_options, name)

    def close(self) -> None:
        """Stop every session actor, close the connection, stop the embedded server."""
        self._closed = True
        with self._lock:
            handles, self._sessions = list(self._sessions.values()), {}
        for handle in handles:
            self._stop_handle(handle)
        if self._agent_pool is not None:  # the teardowns queued run still
            self._agent_pool.shutdown(wait=False)
        self._compositor_pool.shutdown(wait=False, cancel_futures=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self._nc.drain(), timeout=10)
            self._nc = None
        self.loop.stop()
        if self._store is not None:
            self._store.close()  # stops the server if this process owns it
            self._store = None
        self.server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def store(self) -> SharedStore | None:
        """The embedded store's server: started, joined or adopted (``None`` with a NATS URL)."""
        return self._store

    @property
    def journal(self) -> Journal:
        """The journal (raises if the runtime is not started)."""
        if self._journal is None:
            raise RuntimeError("the runtime is not started; call start() or use open()")
        return self._journal

    @property
    def url(self) -> str:
        """The NATS URL in use."""
        return self._store.url if self._store is not None else redact(str(self.nats_url))

    # -- sessions ----------------------------------------------------------------

    def session(self, session_id: str) -> SessionHandle:
        """The handle of ``session_id``'s actor, started (and rehydrated) on first use,
        and again after it was passivated (the same handle)."""
        check_id(session_id, "session_id")
        journal = self.journal
        with self._lock:
            self._await_passivation(session_id)
            handle = self._sessions.get(session_id)
            if handle is not None and handle.is_running:
                return handle
            if handle is not None and session_id in self._asleep:
                self._start_actor(handle)
                return handle
            holder: list[SessionHandle] = []
            actor = self._new_actor(session_id, journal, _LazyHandle(holder), None)
            handle = SessionHandle(session_id, actor, self._revive)
            holder.append(handle)
            self._sessions[session_id] = handle
            return handle

    def _new_actor(
        self, session_id: str, journal: Journal, handle: Any, asleep: Asleep | None
    ) -> Any:
        return SessionActor.start(
            session_id,
            loop=self.loop,
            journal=journal,
            codec=self.codec,
            agent_factory=self.agent_factory,
            handle=handle,
            max_batch=self.max_batch,
            limits=self.limits,
            compositors=self.compositors,
            refusal_limit=self.refusal_limit,
            agent_idle_timeout=self.agent_idle_timeout,
            asleep=asleep,
            on_passivated=self._passivated,
            agent_pool=self._agent_pool,
            compositor_pool=self._compositor_pool,
            compositor_timeout=self.compositor_timeout,
        )

    def _start_actor(self, handle: SessionHandle) -> Any:
        """Start a passivated session's actor again, on ``handle`` (under ``_lock``)."""
        asleep = self._asleep.pop(handle.session_id)
        handle._actor = self._new_actor(handle.session_id, self.journal, handle, asleep)
        return handle._actor

    def _revive(self, handle: SessionHandle) -> Any:
        """The actor of ``handle``'s session, started again if it was passivated (else None)."""
        with self._lock:
            self._await_passivation(handle.session_id)
            if handle._actor.is_alive():
                return handle._actor
            if self._sessions.get(handle.session_id) is not handle:
                return None  # stopped (stop_session, close), not passivated
            if handle.session_id not in self._asleep:
                return None
            return self._start_actor(handle)

    def _await_passivation(self, session_id: str) -> None:
        """Wait (under ``_lock``) until a passivation of the session under way completes."""
        while session_id in self._passivating:
            self._lock.wait(1.0)

    def _passivated(self, actor: SessionActor) -> None:
        """A session actor stops to be passivated, or stopped (called on its thread)."""
        session_id = actor.session_id
        if actor.asleep is None:  # about to stop: users of the session wait for the end
            with self._lock:
                self._passivating.add(session_id)
            return
        with self._lock:
            self._passivating.discard(session_id)
            self._lock.notify_all()
            handle = self._sessions.get(session_id)
            if handle is None or handle._actor.actor_urn != actor.actor_urn:
                # Stopped meanwhile (close, stop_session): its agents are torn down.
                if actor.asleep.behaviours:
                    orphan = self._new_actor(session_id, self.journal, actor.handle, actor.asleep)
                    orphan.stop(block=False)
                return
            self._asleep[session_id] = actor.asleep
            log.debug("passivated idle session %s", session_id)
            if not actor.leftovers:
                return
            revived = self._start_actor(handle)  # sent just before the stop: taken up at once
        for message in actor.leftovers:
            revived.tell(message)

    def _schedule_reap(self) -> None:
        timeout = self.session_idle_timeout
        if timeout is not None and not self._closed:
            self.loop.call_later(max(timeout / 4, 0.05), self._reap)

    def _reap(self) -> None:
        """Ask each running session actor to passivate if it is idle (on the loop thread)."""
        timeout = self.session_idle_timeout
        assert timeout is not None
        with self._lock:
            actors = [handle._actor for handle in self._sessions.values()]
        for actor in actors:
            with contextlib.suppress(Exception):  # stopped meanwhile
                actor.tell(PassivateIfIdle(timeout))
        self._schedule_reap()

    def _stop_handle(self, handle: SessionHandle) -> None:
        """Stop a session's actor; a passivated one with agent behaviours is started again
        first, so that they are torn down (exactly once, like a running one's)."""
        with self._lock:
            asleep = self._asleep.get(handle.session_id)
            if asleep is not None and not handle._actor.is_alive():
                if asleep.behaviours:
                    self._start_actor(handle)
                else:
                    self._asleep.pop(handle.session_id)
        handle._actor.stop(block=True, timeout=10)

    def running_session(self, session_id: str) -> SessionHandle | None:
        """The handle of ``session_id``'s actor if it is running here (none is started;
        a passivated session is not running)."""
        with self._lock:
            handle = self._sessions.get(session_id)
        return handle if handle is not None and handle.is_running else None

    @property
    def open_sessions(self) -> int:
        """How many session actors are running in this process."""
        with self._lock:
            return sum(1 for handle in self._sessions.values() if handle.is_running)

    @property
    def connection(self) -> Any:
        """The NATS connection (a ``nats.aio.client.Client``; use it on :attr:`loop`)."""
        if self._nc is None:
            raise RuntimeError("the runtime is not started; call start() or use open()")
        return self._nc

    def add_compositor(self, compositor: Compositor) -> None:
        """Provide ``compositor`` to this process's sessions, under its name.

        A session queries it once the session has registered it
        (:meth:`SessionHandle.register_compositor`).
        """
        if not isinstance(compositor, Compositor):
            raise TypeError(f"not a compositor (needs name and query): {compositor!r}")
        check_id(compositor.name, "compositor name")
        self.compositors[compositor.name] = compositor

    @property
    def chems(self) -> Chems:
        """Negotiate chems between this process's sessions and query across them."""
        if self._chems is None:
            self._chems = Chems(self.session)
        return self._chems

    def passivate_session(self, session_id: str) -> None:
        """Passivate the session's actor now if it has nothing to do (never blocks).

        As the idle reaper does (see ``session_idle_timeout``), without waiting for the
        timeout: an actor with commands or reads pending, an agent actor running or an
        on-change hook stays up (the reaper passivates it once it can).
        """
        with self._lock:
            handle = self._sessions.get(session_id)
        if handle is not None:
            with contextlib.suppress(Exception):  # not running: nothing to do
                handle._actor.tell(PassivateIfIdle(0.0))

    def stop_session(self, session_id: str) -> None:
        """Stop a session's actor (its agents are torn down); the log is untouched."""
        with self._lock:
            handle = self._sessions.pop(session_id, None)
        if handle is not None:
            self._stop_handle(handle)

    # -- reading the log -----------------------------------------------------------

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the runtime's loop (for journal calls from threads)."""
        return self.loop.run(coro, timeout)

    def replay(
        self, session_id: str, *, to_sequence: int | None = None, progress: Progress | None = None
    ) -> SessionState:
        """Fold the session's events from the log, independently of any actor.

        :raises LogDamaged: the log holds a message that is not a valid event of the
            session, not quarantined (fold with :func:`plantangenet.log.session_replay.replay` to
            see the state around it).
        :raises UnknownSession: the session has no events.
        """
        check_id(session_id, "session_id")
        state: SessionState = self.loop.run(
            replay(self.journal, session_id, to_sequence=to_sequence, progress=progress)
        )
        damaged = damage(state)
        if damaged is not None:
            raise damaged
        if state.event_count == 0:
            raise UnknownSession(f"no events for session {session_id!r}")
        return state

    def state_at(
        self, session_id: str, position: Position, *, progress: Progress | None = None
    ) -> SessionState:
        """The session right after the event ``position`` resolves to: a stream sequence,
        an event id or a time (see :mod:`plantangenet.timetravel.history`)."""
        check_id(session_id, "session_id")
        state: SessionState = self.loop.run(
            history_state_at(self.journal, session_id, position, progress=progress)
        )
        return state

    def history(self, session_id: str, **kwargs: Any) -> list[Envelope]:
        """Every event of the session, in order."""
        check_id(session_id, "session_id")
        events: list[Envelope] = self.loop.run(self.journal.read_all(session_id, **kwargs))
        return events

    def ledger(self, session_id: str, *, to_sequence: int | None = None) -> Ledger:
        """The session's dust ledger, folded from the log (streamed: memory stays flat).

        :raises UnknownSession: the session has no events.
        """
        ledger = Ledger()
        self._fold_events(session_id, ledger.apply, to_sequence, ledger.apply_checked)
        return ledger

    def cursor_index(self, session_id: str, *, to_sequence: int | None = None) -> CursorIndex:
        """The session's cursor index, folded from the log (streamed: memory stays flat).

        :raises UnknownSession: the session has no events.
        """
        index = CursorIndex()
        self._fold_events(session_id, index.apply, to_sequence, index.apply_checked)
        return index

    def _fold_events(
        self,
        session_id: str,
        apply: Callable[[Envelope], object],
        to_sequence: int | None,
        checked: Callable[[CheckedEvent], object] | None = None,
    ) -> None:
        check_id(session_id, "session_id")
        count = self.loop.run(
            fold_events(self.journal, session_id, apply, checked=checked, to_sequence=to_sequence)
        )
        if count == 0 and self.loop.run(self.journal.last_sequence(session_id)) == 0:
            raise UnknownSession(f"no events for session {session_id!r}")

    def sessions(self) -> dict[str, int]:
        """Every session in the log with its number of events."""
        result: dict[str, int] = self.loop.run(self.journal.sessions())
        return result

    def tail(self, session_id: str, *, from_sequence: int | None = None) -> AsyncIterator[Envelope]:
        """An async iterator of the session's events as they are stored (run it on your loop
        with your own connection, or via :meth:`run`)."""
        return self.journal.tail(session_id, from_sequence=from_sequence)


class _LazyHandle:
    """Stands in for the session's handle inside its own actor's agents."""

    def __init__(self, holder: list[SessionHandle]) -> None:
        self._holder = holder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._holder[0], name)
