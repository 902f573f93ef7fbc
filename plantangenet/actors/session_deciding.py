"""The session actor's deciding: commands checked against the state and grouped into appends.

A base of :class:`~plantangenet.actors.session.SessionActor`: each command is decided
on the state as the queued commands will leave it (speculatively), data queries ask
their compositor off the actor's thread, and decided commands are flushed to the log
in groups of at most ``max_batch`` events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from plantangenet.actors.agent import (
    Agent,
)
from plantangenet.actors.compose import MAX_COMPOSE_ATTEMPTS, _ask, default_compositor_pool
from plantangenet.actors.future import ReplyFuture
from plantangenet.actors.messages import (
    COMMAND_ID,
    CommandKey,
    ExecuteMany,
    _Answer,
    _Appended,
    _Composed,
    _ComposeTimedOut,
    _Composing,
    _conflict,
    _Deferred,
    _fail,
    _key,
    _log_summary_failure,
    _Pending,
    _Redecide,
    _SummariseRefusals,
    _tell,
    _unrecorded,
)
from plantangenet.actors.refusals import RefusalMeter
from plantangenet.actors.replies import Reply
from plantangenet.domain.commands import (
    AttachAgent,
    Command,
    DataQuery,
    SummariseRefusals,
    fingerprint,
)
from plantangenet.domain.decide import (
    Limits,
    decide_authorized,
    plan_query,
    show,
)
from plantangenet.domain.disclosure import Sample
from plantangenet.domain.query_plan import Compositor, Plan, disclose
from plantangenet.errors import (
    CodecError,
    CommandRejected,
    CompositorFailed,
    InvalidCommand,
    PlantangenetError,
    RecordedRefusal,
)
from plantangenet.events.base import Event
from plantangenet.events.codec import EventCodec
from plantangenet.events.envelope import OPERATOR, Authorization, Envelope, new_id, utc_now
from plantangenet.log.append_now import append_now
from plantangenet.log.journal import AppendResult, Journal
from plantangenet.log.loop import EventLoopThread
from plantangenet.projections.session import SessionState, evolve

log = logging.getLogger("plantangenet.session")


class _SessionDeciding:
    """The session actor's deciding: commands checked against the state and grouped into appends."""

    actor_ref: Any
    _behaviours: dict[str, Agent]
    _composing: dict[CommandKey, _Composing]
    _group_end: _Pending | None
    _group_events: int
    _in_flight: list[_Pending] | None
    _needs_catch_up: bool
    _pending: dict[CommandKey, _Pending]
    _queued: deque[_Pending]
    _refusals: RefusalMeter
    _results: OrderedDict[CommandKey, tuple[Envelope, ...]]
    _speculative: SessionState
    _speculative_hash: bytes
    codec: EventCodec
    compositor_pool: concurrent.futures.Executor | None
    compositor_timeout: float | None
    compositors: Mapping[str, Compositor]
    journal: Journal
    limits: Limits
    loop: EventLoopThread
    max_batch: int
    session_id: str
    state: SessionState

    if TYPE_CHECKING:  # the actor's own

        def _answer(
            self,
            reply: Reply,
            command_id: str,
            envelopes: tuple[Envelope, ...],
            duplicate: bool = False,
            samples: tuple[Sample, ...] = (),
        ) -> None: ...

        def _catch_up(self) -> None: ...

        def _refuse(self, pending: _Pending, unindexed: bool = False) -> None: ...

        def _stale(self) -> bool: ...

    # -- deciding ------------------------------------------------------------

    def _execute_many(self, message: ExecuteMany) -> None:
        for index, command in enumerate(message.commands):
            reply = message.batch.slot(index)
            try:
                self._execute(command, reply, None)
            except Exception:  # a bug; answer this command and go on with the next
                log.exception("session %s: unexpected error in a batch", self.session_id)
                _fail(reply, PlantangenetError("internal error; see the service log"))

    def _execute(
        self,
        command: Command,
        reply: Reply,
        behaviour: Agent | None,
        rechecked: bool = False,
        composed: _Answer | None = None,
    ) -> None:
        if reply.done():  # cancelled by a caller who stopped waiting
            return
        if not isinstance(command, Command):
            _fail(reply, InvalidCommand(f"not a command: {type(command).__name__}"))
            return
        command_id = command.command_id
        if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
            _fail(
                reply,
                InvalidCommand("command_id must be 1-128 printable ASCII characters, no spaces"),
            )
            return
        principal = command.principal
        if type(principal) is not str:
            _fail(reply, InvalidCommand(f"principal must be a string, got {show(principal)}"))
            return
        if self._needs_catch_up:
            try:
                self._catch_up()
            except PlantangenetError as exc:
                _fail(reply, exc)
                return
        key = (principal, command_id)
        content = fingerprint(command)
        stored = self._results.get(key)
        if stored is not None:
            if stored[0].fingerprint and stored[0].fingerprint != content:
                _fail(reply, _conflict(command))
            else:
                self._answer(reply, command_id, stored, duplicate=True)
            return
        joined = self._pending.get(key)
        if joined is not None:
            if joined.fingerprint != content:
                _fail(reply, _conflict(command))
                return
            if joined.joined is None:
                joined.joined = []
            joined.joined.append(reply)
            if joined.on_loop and not self.loop.in_loop_thread:
                joined.on_loop = False  # this caller is answered on the actor's thread
            return
        asked = self._composing.get(key)
        if asked is not None:
            if asked.fingerprint != content:
                _fail(reply, _conflict(command))
            else:
                asked.joined.append(reply)
            return
        samples: tuple[Sample, ...] = ()
        try:
            at = utc_now()
            authorization: Authorization | None
            try:
                if isinstance(command, DataQuery):
                    authorization, events, samples = self._query(
                        command, at, content, reply, behaviour, composed
                    )
                else:
                    authorization, events = decide_authorized(
                        self._speculative, command, now=at, limits=self.limits
                    )
            except RecordedRefusal as refused:  # recorded for the audit, then reported
                if principal != OPERATOR and not self._may_record(principal, command):
                    raise _unrecorded(refused) from None
                authorization, events = None, [refused.event]
            correlation = command.correlation_id or command_id
            envelopes = []
            payloads = []
            digests = []
            previous = self._speculative_hash
            first = content
            revision = self._speculative.event_count  # the session's events so far
            for event in events:
                revision += 1
                envelope = Envelope(  # positionally: binding keywords costs ~1 µs here
                    event,
                    self.session_id,
                    new_id(),  # event_id
                    command_id,  # causation_id
                    correlation,
                    at,  # occurred_at
                    command.issued_by,  # agent_id
                    None,  # sequence: given by the log
                    previous,  # previous_hash
                    authorization,
                    b"",  # digest: known once encoded
                    principal,
                    first,  # the command's fingerprint, on its first event
                    revision,  # the position in the session: the guard keeps it unique
                )
                authorization, first = None, b""  # recorded once, on the first event
                payload = self.codec.encode(envelope)
                previous = hashlib.sha256(payload).digest()
                envelopes.append(envelope)
                payloads.append(payload)
                digests.append(previous)
            if len(envelopes) > self.max_batch:
                raise InvalidCommand(
                    f"{type(command).__name__} would write {len(envelopes)} events; "
                    f"the limit is {self.max_batch} (one atomic append, the runtime's "
                    "max_batch): split the work, e.g. remove cursors or detach agents first"
                )
        except (CommandRejected, CodecError, CompositorFailed) as exc:
            depends_on_state = isinstance(exc, CommandRejected) and type(exc) is not InvalidCommand
            if depends_on_state and (self._in_flight is not None or self._queued):
                # Decided on a state that unacknowledged appends still have to confirm:
                # answer in order, after them (see _Pending.refused).
                assert isinstance(exc, CommandRejected)
                pending = _Pending(command, content, (), (), (), reply, refused=exc)
                pending.on_loop = self.loop.in_loop_thread
                self._queued.append(pending)
                self._pending[key] = pending
                self._flush()
                return
            unrecorded = isinstance(exc, RecordedRefusal) and not exc.event_recorded
            if depends_on_state and not rechecked and not unrecorded and self.loop.in_loop_thread:
                # Whether the state is stale is a round trip to the log: asked, and the
                # command decided again, on the actor's thread (after what is queued).
                _tell(self.actor_ref, _Redecide(command, reply, behaviour, composed))
                return
            if depends_on_state and not rechecked and not unrecorded and self._stale():
                # Another writer moved the session on: decide again on the log's state
                # (the command may even be stored already, as a retry of it).
                self._execute(command, reply, behaviour, rechecked=True, composed=composed)
                return
            _fail(reply, exc)
            return
        except (TypeError, ValueError, AttributeError) as exc:  # wrongly typed fields
            _fail(reply, InvalidCommand(f"{type(command).__name__}: {exc}"))
            return
        except _Deferred:  # decided when its compositor answers (see _composed)
            return
        self._speculative_hash = previous
        if isinstance(command, AttachAgent) and behaviour is not None:
            self._behaviours[command.agent_id] = behaviour
        speculative = self._speculative
        for envelope in envelopes:
            speculative = evolve(speculative, envelope)
        self._speculative = speculative
        pending = _Pending(
            command,
            content,
            tuple(envelopes),
            tuple(payloads),
            tuple(digests),
            reply,
            samples=samples,
            on_loop=self.loop.in_loop_thread,
        )
        self._keep_decided(pending, speculative)
        self._queued.append(pending)
        self._pending[key] = pending
        self._flush()

    def _may_record(self, principal: str, command: Command) -> bool:
        """Whether a refusal of ``principal`` is recorded now (or only counted)."""
        record, first = self._refusals.admit(principal, type(command).__name__)
        if first:  # the first one counted since the last summary: summarise in an interval
            me = self.actor_ref
            self.loop.call_later(
                self._refusals.limit.interval, lambda: _tell(me, _SummariseRefusals(principal))
            )
        return record

    def _summarise_refusals(self, principal: str) -> None:
        summary = self._refusals.take(principal)
        if summary is None:
            return
        command = SummariseRefusals(
            refused=summary.principal,
            count=summary.count,
            commands=summary.commands,
            seconds=round(summary.seconds, 3),
        )
        outcome: ReplyFuture[Any] = ReplyFuture()
        outcome.add_done_callback(_log_summary_failure)
        self._execute(command, outcome, None)

    def _query(
        self,
        command: DataQuery,
        at: datetime,
        content: bytes,
        reply: Reply,
        behaviour: Agent | None,
        composed: _Answer | None,
    ) -> tuple[Authorization, list[Event], tuple[Sample, ...]]:
        """Plan a data query and shape its compositor's answer (see ``disclose``).

        Without an answer for the plan (``composed``) the compositor is asked on the
        compositor pool and ``_Deferred`` raised: the query is decided again, on the
        state of that moment, when the answer comes back (see :class:`SessionActor`).
        """
        state = self._speculative
        authorization, plan = plan_query(state, command, now=at)
        compositor = self.compositors.get(plan.compositor)
        if compositor is None:
            raise CompositorFailed(
                f"compositor {plan.compositor!r} is registered with session {self.session_id!r} "
                "but this process does not provide it (Plantangenet.add_compositor)"
            )
        if (
            composed is None
            or composed.plan.compositor != plan.compositor
            or composed.plan.region != plan.region
        ):
            attempt = 1 if composed is None else composed.attempt + 1
            if attempt > MAX_COMPOSE_ATTEMPTS:
                raise CompositorFailed(
                    f"the region of this query changed {MAX_COMPOSE_ATTEMPTS} times while "
                    f"compositor {plan.compositor!r} answered it (is its cursor moving?)"
                )
            self._compose(command, content, reply, behaviour, plan, compositor, attempt)
            raise _Deferred
        try:
            answer = composed.answer.result()  # raises the compositor's CompositorFailed
        except concurrent.futures.CancelledError:  # the runtime is closing
            raise CompositorFailed(f"compositor {plan.compositor!r} was stopped") from None
        try:
            disclosed = disclose(state, plan, answer, max_samples=self.limits.max_samples_per_query)
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # bad samples
            raise CompositorFailed(
                f"compositor {plan.compositor!r} returned bad data: {show(exc)}"
            ) from None
        return authorization, list(disclosed.events), disclosed.samples

    def _compose(
        self,
        command: DataQuery,
        content: bytes,
        reply: Reply,
        behaviour: Agent | None,
        plan: Plan,
        compositor: Compositor,
        attempt: int,
    ) -> None:
        """Ask ``compositor`` for ``plan``'s region off this thread; the answer comes back
        as ``_Composed`` (or, first, ``_ComposeTimedOut``)."""
        key = _key(command)
        token = object()
        pool = self.compositor_pool or default_compositor_pool()
        most = self.limits.max_samples_per_query
        answer = pool.submit(_ask, compositor, plan, most)
        self._composing[key] = _Composing(command, content, reply, behaviour, plan, attempt, token)
        me = self.actor_ref
        answer.add_done_callback(lambda f: _tell(me, _Composed(key, token, f)))
        timeout = self.compositor_timeout
        if timeout is not None:
            self.loop.call_later(timeout, lambda: _tell(me, _ComposeTimedOut(key, token)))

    def _composed(self, message: _Composed) -> None:
        """A compositor answered: decide its query now, on the state of this moment."""
        asked = self._composing.get(message.key)
        if asked is None or asked.token is not message.token:
            return  # timed out (answered already), or the actor was restarted
        del self._composing[message.key]
        composed = _Answer(asked.plan, asked.attempt, message.answer)
        replies = [r for r in [asked.reply, *asked.joined] if not r.done()]
        if not replies:
            return  # everyone stopped waiting: nothing is recorded
        first, rest = replies[0], replies[1:]
        self._execute(asked.command, first, asked.behaviour, composed=composed)
        for reply in rest:
            # Joined to the stored (or queued) outcome; or, if it was answered at once (a
            # failure), decided the same way on the same answer: not asked again.
            self._execute(
                asked.command, reply, asked.behaviour, composed=composed if first.done() else None
            )

    def _compose_timed_out(self, message: _ComposeTimedOut) -> None:
        asked = self._composing.get(message.key)
        if asked is None or asked.token is not message.token:
            return  # answered in time
        del self._composing[message.key]
        error = CompositorFailed(
            f"compositor {asked.plan.compositor!r} did not answer within "
            f"{self.compositor_timeout} s; nothing was recorded"
        )
        for reply in [asked.reply, *asked.joined]:
            _fail(reply, error)

    def _keep_decided(self, pending: _Pending, speculative: SessionState) -> None:
        """Pack queued commands into append groups as they are decided.

        Groups are filled greedily up to ``max_batch`` events. The command that ends a
        group (so far) holds the speculative state after it, which ``settled`` reuses
        once the group is stored; ``_flush`` sends everything up to the next such
        command. No other command keeps a state: one per pipelined command would outlive
        many GC passes and make them costly.
        """
        size = len(pending.envelopes)
        if self._group_events + size > self.max_batch:
            self._group_events = size  # a new group: the open one's end keeps its state
        else:
            self._group_events += size
            if self._group_end is not None:
                self._group_end.decided = None
        pending.decided = speculative
        self._group_end = pending

    def _flush(self) -> None:
        if self._in_flight is not None:
            return
        while self._queued and self._queued[0].refused is not None:
            # Everything before it is stored: the state it was refused on is the log's.
            self._refuse(self._queued.popleft())
        if not self._queued:
            return
        # The next group: through the first command that ends one (see _keep_decided).
        group: list[_Pending] = []
        while self._queued and (not group or group[-1].decided is None):
            group.append(self._queued.popleft())
        self._in_flight = group
        if group[-1] is self._group_end:  # the next command starts a group
            self._group_events, self._group_end = 0, None
        me = self.actor_ref
        envelopes = [envelope for pending in group for envelope in pending.envelopes]
        payloads = [payload for pending in group for payload in pending.payloads]
        digests = [digest for pending in group for digest in pending.digests]

        def then(task: asyncio.Future[AppendResult]) -> None:
            _tell(me, _Appended(task))

        if self.loop.in_loop_thread and append_now(
            self.journal,
            self.session_id,
            envelopes,
            payloads,
            expected_sequence=self.state.sequence,
            digests=digests,
            then=then,
        ):
            return  # sent from the loop, no task (plantangenet.log.append_now)
        self.loop.run_then(
            self.journal.append_payloads(
                self.session_id,
                envelopes,
                payloads,
                expected_sequence=self.state.sequence,
                digests=digests,
            ),
            then,
        )
