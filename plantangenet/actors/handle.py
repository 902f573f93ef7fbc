"""A thread-safe, synchronous handle on a running session actor."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import pykka

from plantangenet.actors.agent import Agent
from plantangenet.actors.future import ReplyFuture
from plantangenet.actors.replies import Batch
from plantangenet.actors.session import (
    CommandResult,
    Execute,
    ExecuteMany,
    HookFailure,
    Inspect,
    OnChange,
    ReadState,
    SessionActor,
)
from plantangenet.domain.commands import (
    AddCursor,
    AttachAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DepositDust,
    DetachAgent,
    EndSession,
    GrantDust,
    GrantRole,
    MoveCursor,
    QueryCursor,
    RegisterCompositor,
    RemoveCursor,
    RevokeRole,
    SetPrices,
    StartSession,
)
from plantangenet.domain.policy import Statement
from plantangenet.errors import ActorStopped, PlantangenetError
from plantangenet.events.fields import MetadataValue
from plantangenet.projections.agent import AgentState
from plantangenet.projections.session import CursorView, SessionState

T = TypeVar("T")

#: Seconds a blocking call waits for the session by default.
DEFAULT_TIMEOUT = 30.0


class Subscription:
    """An on-change registration; :meth:`cancel` removes it."""

    def __init__(self, handle: SessionHandle, key: int) -> None:
        self._handle = handle
        self._key = key

    def cancel(self) -> None:
        """Stop receiving events (idempotent)."""
        self._handle._inspect(lambda actor: actor.remove_hook(self._key))


class SessionHandle:
    """Talk to one session from any thread.

    Every method that changes the session sends a command and waits for the
    log to store its events; it returns a :class:`CommandResult` or raises a
    typed :class:`~plantangenet.errors.PlantangenetError`. Use :meth:`submit`
    to pipeline commands without waiting.
    """

    def __init__(
        self,
        session_id: str,
        actor: pykka.ActorRef[SessionActor],
        revive: Callable[[SessionHandle], pykka.ActorRef[SessionActor] | None] | None = None,
    ) -> None:
        self.session_id = session_id
        self._actor = actor
        self.timeout = DEFAULT_TIMEOUT
        #: Starts the actor of a passivated session again (``None``: it was stopped).
        self._revive = revive
        #: Held while a message goes in, and while the actor decides to passivate: no
        #: message slips in between its last look at its inbox and its stop.
        self._door = threading.Lock()

    def __repr__(self) -> str:
        return f"SessionHandle({self.session_id!r})"

    # -- commands -------------------------------------------------------------

    def submit(
        self, command: Command, *, behaviour: Agent | None = None
    ) -> concurrent.futures.Future[CommandResult]:
        """Send ``command``; the future resolves once it is stored (or refused).

        Sent from the runtime's event-loop thread (as the session service sends), the
        command may be decided there and then, and its future resolved on that thread
        (see :mod:`plantangenet.actors.turns`): a done-callback must not block.
        """
        reply: concurrent.futures.Future[CommandResult] = ReplyFuture()
        self._tell(Execute(command, reply, behaviour), reply)
        return reply

    def submit_many(
        self, commands: Iterable[Command]
    ) -> concurrent.futures.Future[tuple[CommandResult | PlantangenetError, ...]]:
        """Send several commands at once; one future answers for all of them.

        The session decides them in order, each on its own, exactly as if each were
        sent with :meth:`submit` (a refused command does not stop the ones after it;
        consecutive commands share appends). The future resolves once every command
        is stored or refused, with one outcome per command in the order given: its
        :class:`CommandResult`, or the typed error that refused it. For producers
        that send many commands in a row (bridges, bulk loads), it costs the caller
        and the actor one message and one future per batch instead of per command.
        Cancelling the future skips the commands the session has not decided yet
        (it notices within 64 commands); the ones already decided are stored. Agents
        attached by a batch get their behaviour from the runtime's agent factory. If
        the session is not running, the future raises ``ActorStopped``; if it stops
        before deciding the batch, each command's outcome is ``ActorStopped``. Sent from
        the event loop's thread, it may be decided there, as with :meth:`submit`.
        """
        batch = tuple(commands)
        future: concurrent.futures.Future[tuple[CommandResult | PlantangenetError, ...]]
        future = ReplyFuture()
        if not batch:
            future.set_result(())
            return future
        self._tell(ExecuteMany(batch, Batch(future, len(batch))), future)
        return future

    def execute(
        self, command: Command, *, behaviour: Agent | None = None, timeout: float | None = None
    ) -> CommandResult:
        """Send ``command`` and wait until it is stored; raises if refused."""
        return _wait(self.submit(command, behaviour=behaviour), timeout or self.timeout)

    def start(
        self, metadata: Mapping[str, MetadataValue] | None = None, **kw: Any
    ) -> CommandResult:
        """Start the session."""
        return self.execute(StartSession(metadata=dict(metadata or {}), **kw))

    def change_metadata(
        self,
        changed: Mapping[str, MetadataValue] | None = None,
        removed: Sequence[str] = (),
        **kw: Any,
    ) -> CommandResult:
        """Set and/or remove metadata keys."""
        return self.execute(
            ChangeMetadata(changed=dict(changed or {}), removed=tuple(removed), **kw)
        )

    def attach(
        self,
        agent_id: str,
        kind: str = "bot",
        name: str = "",
        *,
        behaviour: Agent | None = None,
        **kw: Any,
    ) -> CommandResult:
        """Attach an agent; ``behaviour`` runs in its actor (setup/teardown/on_event)."""
        command = AttachAgent(agent_id=agent_id, kind=kind, name=name, **kw)
        return self.execute(command, behaviour=behaviour)

    def detach(self, agent_id: str, reason: str = "detached", **kw: Any) -> CommandResult:
        """Detach an agent (its cursors are removed)."""
        return self.execute(DetachAgent(agent_id=agent_id, reason=reason, **kw))

    def add_cursor(
        self,
        agent_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> CommandResult:
        """Open a cursor for ``agent_id`` (``resolution``: time step of the data it wants)."""
        region = _region(axes, start, end, resolution)
        return self.execute(AddCursor(agent_id=agent_id, cursor_id=cursor_id, **region, **kw))

    def move_cursor(
        self,
        agent_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> CommandResult:
        """Give a cursor a new region: move, resize or change its resolution."""
        region = _region(axes, start, end, resolution)
        return self.execute(MoveCursor(agent_id=agent_id, cursor_id=cursor_id, **region, **kw))

    def remove_cursor(self, agent_id: str, cursor_id: str, **kw: Any) -> CommandResult:
        """Close a cursor."""
        return self.execute(RemoveCursor(agent_id=agent_id, cursor_id=cursor_id, **kw))

    def change_policy(
        self,
        *,
        replace: Sequence[Statement | Mapping[str, Any]] | None = None,
        add: Sequence[Statement | Mapping[str, Any]] = (),
        remove: Sequence[str] = (),
        **kw: Any,
    ) -> CommandResult:
        """Replace the policy and/or add and remove statements (see :class:`ChangePolicy`)."""
        return self.execute(
            ChangePolicy(
                replace=None if replace is None else tuple(replace),
                add=tuple(add),
                remove=tuple(remove),
                **kw,
            )
        )

    def bind_identity(
        self,
        identity_id: str,
        display_name: str = "",
        attributes: Mapping[str, MetadataValue] | None = None,
        **kw: Any,
    ) -> CommandResult:
        """Bind the session to an identity."""
        return self.execute(
            BindIdentity(
                identity_id=identity_id,
                display_name=display_name,
                attributes=dict(attributes or {}),
                **kw,
            )
        )

    def grant_role(self, agent_id: str, role: str, **kw: Any) -> CommandResult:
        """Give an attached agent a role."""
        return self.execute(GrantRole(agent_id=agent_id, role=role, **kw))

    def revoke_role(self, agent_id: str, role: str, **kw: Any) -> CommandResult:
        """Take a role away from an agent."""
        return self.execute(RevokeRole(agent_id=agent_id, role=role, **kw))

    def register_compositor(self, name: str, description: str = "", **kw: Any) -> CommandResult:
        """Record that the session coordinates with compositor ``name``."""
        return self.execute(RegisterCompositor(name=name, description=description, **kw))

    def query_cursor(
        self, agent_id: str, cursor_id: str, compositor: str, **kw: Any
    ) -> CommandResult:
        """Ask ``compositor`` for the data under the cursor; ``.samples`` holds what policy
        discloses to ``agent_id`` (``AccessRefused`` if an axis is denied,
        ``InsufficientDust`` if the agent cannot pay)."""
        return self.execute(
            QueryCursor(agent_id=agent_id, cursor_id=cursor_id, compositor=compositor, **kw)
        )

    def set_prices(self, prices: Mapping[str, int], **kw: Any) -> CommandResult:
        """Make ``prices`` the session's price table (action or ``action.level`` -> dust)."""
        return self.execute(SetPrices(prices=dict(prices), **kw))

    def deposit(self, account: str, amount: int, memo: str = "", **kw: Any) -> CommandResult:
        """Create ``amount`` dust in ``account``."""
        return self.execute(DepositDust(account=account, amount=amount, memo=memo, **kw))

    def grant(
        self, source: str, target: str, amount: int, memo: str = "", **kw: Any
    ) -> CommandResult:
        """Move ``amount`` dust from ``source`` to ``target``."""
        return self.execute(GrantDust(source=source, target=target, amount=amount, memo=memo, **kw))

    def end(self, reason: str = "ended", **kw: Any) -> CommandResult:
        """End the session: every agent is detached and torn down."""
        return self.execute(EndSession(reason=reason, **kw))

    # -- reading --------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The session as folded from every event the actor has seen stored.

        If the actor could not read its log yet, it tries again first; a failure
        raises its typed error (never an empty state standing in for the session's).
        """
        return self._inspect(lambda actor: actor.current_state())

    def state_at_least(self, sequence: int) -> concurrent.futures.Future[SessionState]:
        """The state once it holds every event of the log up to stream sequence ``sequence``.

        For reads that must see what other processes wrote: pass the session's last
        sequence as the log reports it (``Journal.last_sequence``) and the answer
        reflects every command acknowledged before, whichever process stored it. The
        actor catches up from the log if it is behind (after its own append in flight,
        if one is). The future raises the typed error of a catch-up that fails. Never
        blocks: use it from an event loop with ``asyncio.wrap_future``.
        """
        reply: concurrent.futures.Future[SessionState] = ReplyFuture()
        self._tell(ReadState(sequence, reply), reply)
        return reply

    def agent_state(self, agent_id: str) -> AgentState:
        """The state of an attached agent (``KeyError`` if not attached).

        An agent with behaviour answers from its actor (woken if passivated); one
        without has no actor, and its state is folded from the session's.
        """
        for _ in range(3):  # an actor passivated between the lookup and the ask: again
            agent = self._inspect(lambda actor: actor.agent(agent_id))
            if isinstance(agent, AgentState):
                return agent
            try:
                state = agent.ask("state", timeout=self.timeout)
            except pykka.ActorDeadError:
                continue
            assert isinstance(state, AgentState)
            return state
        raise ActorStopped(f"agent {agent_id} of session {self.session_id} kept stopping")

    def cursors_covering(self, axis: str, time: float) -> list[CursorView]:
        """The cursors watching ``axis`` (or a parent axis) at ``time``, by cursor id."""
        return self._inspect(lambda actor: actor.cursor_index.covering(axis, time))

    @property
    def hook_failures(self) -> list[HookFailure]:
        """On-change callbacks that raised (most recent last, at most 1,000)."""
        return self._inspect(lambda actor: list(actor.hook_failures))

    def on_change(self, callback: OnChange) -> Subscription:
        """Call ``callback(envelope)`` for every event stored from now on.

        Callbacks run on the session's thread, in order, once per event; one
        that raises is recorded in :attr:`hook_failures` and logged.
        """
        key: int = self._inspect(lambda actor: actor.add_hook(callback))
        return Subscription(self, key)

    def query(self, fn: Callable[[SessionActor], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(actor)`` on the session's thread; the future holds its result.

        Never blocks: use it from an event loop with ``asyncio.wrap_future``.
        """
        reply: concurrent.futures.Future[T] = ReplyFuture()
        self._tell(Inspect(fn, reply), reply)
        return reply

    def _tell(self, message: Any, reply: concurrent.futures.Future[Any]) -> None:
        """Send ``message`` to the actor (started again if the session was passivated);
        if it is not running, fail ``reply`` at once."""
        try:
            with self._door:
                self._actor.tell(message)
            return
        except pykka.ActorDeadError:
            pass
        actor = self._revive(self) if self._revive is not None else None
        if actor is not None:
            try:
                with self._door:
                    actor.tell(message)
                return
            except pykka.ActorDeadError:
                pass
        reply.set_exception(ActorStopped(f"session {self.session_id} is not running"))

    def _inspect(self, fn: Callable[[SessionActor], T]) -> T:
        return _wait(self.query(fn), self.timeout)

    @property
    def is_running(self) -> bool:
        """Whether the session's actor is alive (not while the session is passivated: the
        next command or read through this handle starts it again)."""
        return bool(self._actor.is_alive())


def _region(
    axes: Sequence[str], start: float, end: float, resolution: float | None
) -> dict[str, Any]:
    return {"axes": tuple(axes), "start": start, "end": end, "resolution": resolution}


def _wait(future: concurrent.futures.Future[T], timeout: float) -> T:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"no answer from the session within {timeout}s") from None
