"""Reading a session's stored events: streams of them, pages, tails, the sessions.

A base of :class:`~plantangenet.log.journal.Journal`: :meth:`read` and :meth:`read_raw`
stream a session's events through an ordered consumer (deleted as soon as the read
ends), :meth:`page` reads them a page at a time with a batched direct get, and
:meth:`sessions` lists the sessions of the stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal, overload

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)

from plantangenet.errors import (
    DecodeError,
    JournalError,
    LogDamaged,
    TooManyReaders,
    UnknownEventType,
    UnknownEventVersion,
    UnknownSession,
)
from plantangenet.events.envelope import CheckedEvent, Envelope, new_id
from plantangenet.events.trust import MessageQuarantined
from plantangenet.log.deliveries import DirectSubscription, Handler, subscribe_direct
from plantangenet.log.journal_acks import (
    _MAX_CONSUMERS,
    HistoryPage,
    _Inbox,
    _sequences,
    _Unavailable,
)
from plantangenet.log.journal_seek import DEFAULT_PAGE_BYTES, DEFAULT_PAGE_EVENTS, _Seeking

#: Seconds a reader's consumer outlives its reader if deleting it failed (a backstop:
#: a stream holds at most 1,000 consumers, so readers must not linger).
READER_INACTIVE_THRESHOLD = 5.0


class _Reading(_Seeking):
    """Reading a session's stored events: streams of them, pages, tails, the sessions."""

    consumers_in_use: int

    async def read(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> AsyncGenerator[Envelope, None]:
        """The session's events in order, from/up to stream sequences (inclusive).

        Stops at the last event that existed when the read began (or at
        ``to_sequence``). ``progress(sequence, end)`` is called every 1,000 events.
        Every envelope has its ``revision``: events stored before revisions were
        recorded are numbered on the way (see :meth:`count_before`).

        A stored message that is not an envelope at all is skipped if the read also meets its
        quarantine (``MessageQuarantined``, later in the log); otherwise, once the read
        has yielded everything else, it raises :class:`LogDamaged` naming the message.
        """
        batches = self.read_event_batches(
            session_id, from_sequence=from_sequence, to_sequence=to_sequence, progress=progress
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for envelope in batch:
                    yield envelope

    @overload
    def read_event_batches(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        checked: Literal[False] = False,
    ) -> AsyncGenerator[list[Envelope], None]: ...

    @overload
    def read_event_batches(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        checked: bool,
    ) -> AsyncGenerator[list[Envelope | CheckedEvent], None]: ...

    async def read_event_batches(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        checked: bool = False,
    ) -> AsyncGenerator[list[Any], None]:
        """What :meth:`read` yields, in batches (of the events that arrived together, at
        most 64 at a time; never empty): for folds that take many events at a time.

        With ``checked``, an event the codec can check without building it (see
        :meth:`~plantangenet.events.codec.EventCodec.checked`: most of a long log) comes
        as its :class:`~plantangenet.events.envelope.CheckedEvent` instead of an envelope,
        for folds that need only its values; the rest as envelopes.
        """
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        decode = self.codec.decode
        check = self.codec.checked if checked else None
        count = 0
        unreadable: dict[int, DecodeError] = {}
        revision: int | None = 0 if from_sequence <= 1 else None  # of the last one read
        rows = self._ordered(session_id, from_sequence, stop_at=end)
        async with contextlib.aclosing(rows):
            async for batch in rows:
                events: list[Any] = []
                for seq, data in batch:
                    if len(events) == _EVENTS_AT_ONCE:  # a batch that stays in the CPU's caches
                        yield events
                        events = []
                    count += 1
                    if progress is not None and count % 1000 == 0:
                        progress(seq, end)
                    if check is not None:
                        values = check(data, sequence=seq)
                        if (
                            values is not None
                            and values.revision is not None
                            and values.type_name != _QUARANTINED  # a quarantine: read below
                        ):
                            revision = values.revision
                            events.append(values)
                            continue
                    try:
                        envelope = decode(data, sequence=seq)
                    except (UnknownEventType, UnknownEventVersion):
                        raise  # an event of newer code (or a missing upcaster): not damage
                    except DecodeError as exc:
                        unreadable[seq] = exc
                        continue
                    if unreadable and type(envelope.event) is MessageQuarantined:
                        unreadable.pop(envelope.event.sequence, None)
                    if envelope.revision is None:
                        envelope = await self._numbered(session_id, envelope, revision)
                    revision = envelope.revision
                    events.append(envelope)
                if events:
                    yield events
        if progress is not None:
            progress(end, end)
        if unreadable:
            first = min(unreadable)
            raise LogDamaged.at(session_id, first, unreadable[first])

    async def read_raw(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """``(sequence, payload)`` of the session's stored messages, undecoded, in order.

        ``session_id`` :data:`ALL_SESSIONS` reads every session's messages, in stream order.
        """
        batches = self.read_batches(
            session_id, from_sequence=from_sequence, to_sequence=to_sequence
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    yield item

    async def read_batches(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncGenerator[list[tuple[int, bytes]], None]:
        """:meth:`read_raw` in batches (never empty): what arrived together, for a reader
        that goes through many messages (a replay) and need not wake once for each."""
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        rows = self._ordered(session_id, from_sequence, stop_at=end)
        async with contextlib.aclosing(rows):
            async for batch in rows:
                yield batch

    async def page(
        self,
        session_id: str,
        from_sequence: int = 1,
        *,
        max_events: int = DEFAULT_PAGE_EVENTS,
        max_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> HistoryPage:
        """The session's stored messages from stream sequence ``from_sequence`` on, one page.

        One batched direct get (``<api prefix>.DIRECT.GET.<stream>``, answered by any
        replica): no consumer is created, so paging never counts against the
        stream's consumer limit. The page holds at most ``max_events`` messages, and
        stops once the bytes sent reach ``max_bytes``, counted as the server does:
        subject + stored headers + payload of each message. The message that reaches
        the limit is still in the page, so a page may exceed ``max_bytes`` by up to
        one message, and always holds at least one message if there is one at or
        after ``from_sequence`` (however large): paging always makes progress.
        ``from_sequence`` below 1 reads from the start.

        The whole page must arrive within ``config.api_timeout`` seconds. Each
        message's ``Nats-Last-Sequence`` (the previous message of the batch) is
        checked, so a page with a message lost in transit is an error, never a gap.
        A session without events, or ``from_sequence`` past its end, gives an empty
        page with ``more`` false. On a cluster the replica that answers may lag the
        leader by a few events (then ``more`` may be true with an empty page: ask again).

        :raises JournalError: the stream does not exist or answers no direct gets,
            the server refused or did not answer in time, or the page came incomplete.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        start = max(from_sequence, 1)
        request = {
            "seq": start,
            "next_by_subj": self.subject(session_id),
            "batch": max_events,
            "max_bytes": max_bytes,
        }
        messages, pending = await self._direct_batch(session_id, request)
        if messages and not pending:
            return HistoryPage(tuple(messages), messages[-1][0], False)
        last = await self.last_sequence(session_id)
        if messages:  # Nats-Num-Pending messages follow the page
            last = max(last, messages[-1][0] + pending)
        return HistoryPage(tuple(messages), last, bool(pending) or last >= start)

    async def read_all(self, session_id: str, **kwargs: Any) -> list[Envelope]:
        """:meth:`read` into a list; raises :class:`UnknownSession` if there are no events."""
        out = [e async for e in self.read(session_id, **kwargs)]
        if not out and await self.last_sequence(session_id) == 0:
            raise UnknownSession(f"no events for session {session_id!r}")
        return out

    async def tail(
        self, session_id: str, *, from_sequence: int | None = None
    ) -> AsyncGenerator[Envelope, None]:
        """Events as they are stored, from ``from_sequence`` (default: only new ones).

        Runs until the consumer of the iterator stops it.
        """
        start = (
            from_sequence if from_sequence is not None else await self.last_sequence(session_id) + 1
        )
        revision: int | None = 0 if start <= 1 else None  # of the last one yielded
        rows = self._ordered(session_id, start, stop_at=None)
        async with contextlib.aclosing(rows):
            async for batch in rows:
                for seq, data in batch:
                    envelope = self.codec.decode(data, sequence=seq)
                    if envelope.revision is None:
                        envelope = await self._numbered(session_id, envelope, revision)
                    revision = envelope.revision
                    yield envelope

    async def _numbered(
        self, session_id: str, envelope: Envelope, previous: int | None
    ) -> Envelope:
        """``envelope`` (stored before revisions were recorded) numbered after ``previous``,
        the revision of the event read before it (``None``: none read yet, so counted)."""
        if previous is None:
            previous = await self.count_before(session_id, envelope.sequence or 0)
        return envelope.with_revision(previous + 1)

    async def _ordered(
        self, session_id: str, from_sequence: int | None, *, stop_at: int | None
    ) -> AsyncGenerator[list[tuple[int, bytes]], None]:
        """``(stream sequence, payload)`` in order, with no gap and no duplicate, in
        batches (what arrived since the last batch was taken: never empty).

        This is an ordered consumer done here rather than by nats-py: a push
        consumer with flow control, heartbeats and acks used only as a window,
        whose consumer
        sequence is checked on every message. On a gap, a stall, or (for a
        live tail) a long silence, it is replaced by a fresh consumer starting
        right after the last delivered event. Each consumer is *named* and
        filtered, created through ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<subject>``,
        so a user allowed to read one session's subject needs no wider permission.
        """
        subject = self.subject(session_id)
        next_sequence = (
            from_sequence if from_sequence is not None else await self.last_sequence(session_id) + 1
        )
        stalls = failures = 0
        ack_every = max(self.config.read_window // 4, 1)
        loop = asyncio.get_running_loop()
        idle_timeout = self.config.idle_timeout
        while True:
            name = new_id()
            inbox = _Inbox()
            try:
                sub = await self._consumer(
                    session_id, subject, max(next_sequence, 1), name, inbox.arrived
                )
            except _Unavailable:
                # The server is away (restarting, electing a leader): a tail waits for
                # it; a bounded read tries a few times, then reports.
                failures += 1
                if stop_at is not None and failures > 3:
                    raise
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            failures = 0
            expected = 1
            self.consumers_in_use += 1
            try:
                while True:
                    if inbox.answers:  # flow control wants an (empty) answer
                        answers, inbox.answers = inbox.answers, []
                        for target in answers:
                            await self.nc.publish(target.decode(), b"")
                    messages = inbox.messages
                    if not messages:
                        if not await inbox.wait(loop, idle_timeout):
                            break  # stalled, or a quiet tail: start a fresh consumer
                        continue
                    batch, expected, ack, ended = _batch(messages, expected, ack_every, stop_at)
                    lost, done = ended is _LOST, ended is _DONE
                    if ack is not None:  # AckAll: the last one acknowledges the batch
                        await self.nc.publish(ack.decode(), b"")
                    if batch:
                        next_sequence = batch[-1][0] + 1
                        stalls = 0
                        yield batch
                    if done:
                        return
                    if lost:
                        break  # start again after the last delivered
            finally:
                self.consumers_in_use -= 1
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
                await self._delete_consumer(name)
            if stop_at is not None:
                stalls += 1
                if stalls > 3:
                    raise JournalError(
                        f"replay of {session_id} stalled before sequence {stop_at} "
                        f"(at {next_sequence})"
                    )

    async def _consumer(
        self,
        session_id: str,
        subject: str,
        start: int,
        name: str,
        arrived: Handler,
    ) -> DirectSubscription:
        """A push consumer named ``name`` delivering ``subject`` from ``start`` to ``arrived``.

        The delivery subscription is direct (:mod:`plantangenet.log.deliveries`): each
        message goes from nats-py's parser to ``arrived``, with no ``Msg`` and no queue.
        """
        deliver = self.nc.new_inbox()
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=subject,
            deliver_subject=deliver,
            # Acks are only backpressure: acking every quarter window (AckAll) keeps at
            # most `read_window` events in flight, so memory does not grow with the replay.
            ack_policy=AckPolicy.ALL,
            max_ack_pending=self.config.read_window,
            ack_wait=300.0,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=5.0,
            mem_storage=True,
            num_replicas=1,
            # Deleted when the read ends (see _delete_consumer); this is the backstop.
            inactive_threshold=READER_INACTIVE_THRESHOLD,
        )
        reconnects = self.nc.stats.get("reconnects", 0)
        sub: DirectSubscription | None = None
        try:
            sub = await subscribe_direct(self.nc, deliver, arrived)
            await self.js.add_consumer(self.config.stream, config=config)
        except BaseException as exc:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if isinstance(exc, nats.errors.Error):
                raise self._reader_error(session_id, exc, reconnects) from exc
            raise
        return sub

    def _reader_error(self, session_id: str, exc: nats.errors.Error, reconnects: int) -> Exception:
        """What a failed reader creation means: retry later (``_Unavailable``), or a typed error."""
        if isinstance(exc, nats.errors.NoRespondersError | nats.errors.ConnectionClosedError):
            return _Unavailable(f"cannot read {session_id}: {exc or type(exc).__name__}")
        if isinstance(exc, nats.errors.TimeoutError):
            # A stream leader just elected may take a while to answer its first requests:
            # asked again, as when there is none. (A consumer made anyway is named by this
            # attempt alone and goes after READER_INACTIVE_THRESHOLD.)
            return _Unavailable(
                f"cannot read {session_id}: no answer to the reader's creation within "
                f"{self.config.api_timeout:g} s"
            )
        if isinstance(exc, nats.js.errors.APIError):
            if exc.err_code == _MAX_CONSUMERS:
                return TooManyReaders(
                    f"cannot read {session_id}: stream {self.config.stream} holds as many "
                    f"readers (consumers) as it may ({exc.description}, err_code "
                    f"{exc.err_code}); retry when reads finish"
                )
            return JournalError(f"cannot read {session_id}: {exc}")
        if not self.nc.is_connected:
            return _Unavailable(f"cannot read {session_id}: disconnected")
        if self.nc.stats.get("reconnects", 0) != reconnects:
            # The connection was lost and regained meanwhile (a server restart): the
            # request went down with the old connection. Not a permission problem.
            return _Unavailable(f"cannot read {session_id}: reconnected meanwhile")
        return JournalError(f"cannot read {session_id}: {exc or type(exc).__name__}")

    async def _delete_consumer(self, name: str) -> None:
        """Delete a finished reader's consumer: best effort, fire and forget.

        A stream holds at most 1,000 consumers; a reader that left its consumer
        behind would count against that until the inactive threshold expires.
        The request is only published (the server needs no reply subject to act on
        it), so a read never waits for it, and nothing it raises reaches the reader.
        """
        delete = self.config.delete_readers
        if not (self.config.leader_reads if delete is None else delete) or self.nc.is_closed:
            return
        prefix = getattr(self.js, "_prefix", "$JS.API")
        with contextlib.suppress(Exception):
            await self.nc.publish(f"{prefix}.CONSUMER.DELETE.{self.config.stream}.{name}", b"")

    async def sessions(self) -> dict[str, int]:
        """Every session in the log, with its number of events."""
        prefix = self.config.subject_prefix + "."
        try:
            info = await self.js.stream_info(self.config.stream, subjects_filter=prefix + "*")
        except nats.js.errors.NotFoundError:
            return {}
        except nats.errors.Error as exc:
            raise JournalError(f"cannot list sessions: {exc}") from exc
        subjects = info.state.subjects or {}
        return {s[len(prefix) :]: n for s, n in sorted(subjects.items())}


_QUARANTINED = MessageQuarantined.type_name
#: Events a batch of :meth:`_Reading.read_event_batches` holds at most: a fold over many
#: small batches runs ~15-25% faster than over a few large ones (what one batch makes
#: is still in the CPU's caches when the fold takes it).
_EVENTS_AT_ONCE = 64
_LOST = "lost"
_DONE = "done"


def _batch(
    messages: collections.deque[tuple[bytes, bytes]],
    expected: int,
    ack_every: int,
    stop_at: int | None,
) -> tuple[list[tuple[int, bytes]], int, bytes | None, str | None]:
    """Take what arrived (``messages``: reply subject and payload) as one batch, in order.

    Returns the batch of ``(stream sequence, payload)``, the consumer sequence expected
    next, the reply subject to acknowledge the batch with (``None``: no window point in
    it), and why it ended early: :data:`_LOST` (a consumer sequence skipped: a message
    lost in transit), :data:`_DONE` (``stop_at`` reached; a message past it, another
    session's sequence in the gap, is left out) or ``None``.
    """
    batch: list[tuple[int, bytes]] = []
    ack: bytes | None = None
    while messages:
        reply, data = messages.popleft()
        sequence, delivered = _sequences(reply)
        if delivered != expected:
            return batch, expected, ack, _LOST
        if delivered % ack_every == 0:
            ack = reply
        expected += 1
        if stop_at is not None and sequence >= stop_at:
            if sequence == stop_at:
                batch.append((sequence, data))
            return batch, expected, ack, _DONE
        batch.append((sequence, data))
    return batch, expected, ack, None
