"""Finding positions in a session's log: last sequences, times, revisions, counts.

A base of :class:`~plantangenet.log.journal.Journal`: :meth:`last_sequence`,
:meth:`sequence_at` and :meth:`sequence_after` (a time to a stream sequence, by
batched direct gets and a bisection), :meth:`event_of_revision` and the counts, without
a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from plantangenet.errors import (
    DecodeError,
    JournalError,
    UnknownEventType,
    UnknownEventVersion,
)
from plantangenet.events.codec import EventCodec
from plantangenet.events.envelope import Envelope
from plantangenet.log.deliveries import NO_RESPONDERS, header_value, status_of, subscribe_direct
from plantangenet.log.journal_acks import (
    _MICROSECOND,
    _shift,
    _utc,
)
from plantangenet.log.journal_config import JournalConfig

#: Events and bytes a :meth:`Journal.page` holds unless asked otherwise.
DEFAULT_PAGE_EVENTS = 256

DEFAULT_PAGE_BYTES = 1 << 20

#: Messages in the first page of a time seek (later pages double, up to DEFAULT_PAGE_EVENTS).
_SEEK_PAGE = 16

#: The server keeps times as int64 nanoseconds since 1970: a seek before _EARLIEST goes
#: from sequence 1, one after _LATEST (year 2262, where int64 ends) from _LATEST.
_EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)

_LATEST = datetime(2262, 1, 1, tzinfo=UTC)

#: Status codes of a direct get's last message: the batch ended, nothing matched (as
#: they stand in its status line, ``NATS/1.0 <code> <description>``); or NO_RESPONDERS.
_END_OF_BATCH = b"204"
_NOT_FOUND = b"404"


class _Seeking:
    """Finding positions in a session's log: last sequences, times, revisions, counts."""

    nc: NATS
    js: JetStreamContext
    config: JournalConfig
    codec: EventCodec

    if TYPE_CHECKING:  # Journal's

        def subject(self, session_id: str) -> str: ...

    async def _stream_exists(self, what: str) -> None:
        """:raises JournalError: naming the stream, if it does not exist."""
        try:
            await self.js.stream_info(self.config.stream)
        except nats.js.errors.NotFoundError:
            raise JournalError(f"{what}: stream {self.config.stream} does not exist") from None
        except nats.errors.Error:
            pass

    async def last_sequence(self, session_id: str) -> int:
        """The stream sequence of the session's last event (0 if it has none)."""
        try:
            msg = await self.js.get_last_msg(
                self.config.stream, self.subject(session_id), direct=not self.config.leader_reads
            )
        except nats.js.errors.NotFoundError:
            return 0
        except nats.errors.Error as exc:
            raise JournalError(f"cannot read {session_id}: {exc}") from exc
        return int(msg.seq or 0)

    async def sequence_at(self, session_id: str, moment: datetime) -> int:
        """The stream sequence of the session's last event (in log order) that occurred
        at or before ``moment`` (0 if none; naive times are UTC).

        A seek, not a scan: JetStream finds the session's first message *stored* at or
        after ``moment - clock_skew`` (a direct get by start time), and the events from
        there are read only until one occurred after ``moment + clock_skew``. What
        makes that the answer, with ``skew = config.clock_skew``:

        1. an event is stored no earlier than ``skew`` before it occurred (the writer
           stamps ``occurred_at`` just before it appends; ``skew`` covers the clocks of
           writer and server disagreeing), so every event stored before
           ``moment - skew`` occurred before ``moment``;
        2. within a session, ``occurred_at`` does not go back in log order (one writer
           at a time stamps its commands as it decides them, in order), so from there
           on the answer is found by bisection over stream sequences: about log2 of
           the rest of the log in direct gets, a few milliseconds, however dense the
           session. (A writer's clock stepped back would shift the answer by at most
           the events of that step.)

        If no event read qualifies, the answer is the session's last event stored
        before the first one read (a direct get of the last message of the subject
        up to a sequence); if nothing is stored at or after ``moment - skew``, it is
        the session's last event, which is checked against ``moment`` (should it
        have occurred later, assumption 1 does not hold and the session is scanned
        from its start instead). Stored messages that are not readable events are
        passed over, as reads pass over quarantined ones.

        No consumer is created: a few batched direct gets (``start_time`` /
        ``next_by_subj``, ``multi_last`` / ``up_to_seq``), which any replica answers (on
        a cluster one may lag the leader by a few events, as with :meth:`page`).

        :raises JournalError: the stream does not exist or does not answer direct gets.
        """
        moment = _utc(moment)
        skew = timedelta(seconds=self.config.clock_skew)
        late = _shift(moment, skew)
        first = await self._first_stored(session_id, _shift(moment, -skew))
        if first:
            # From there on, bisect (2.): an append may be stored long after it occurred
            # (a queue, a retry), so the stored time gives no upper bound.
            end = await self.last_sequence(session_id) + 1
            best = await self._bisect(session_id, first, max(end, first + 1), moment)
            if best:
                return best
            # everything stored before `first` occurred before `moment` (1.)
            return await self._event_before(session_id, first)
        last = await self.last_sequence(session_id)
        if last == 0:
            return 0
        first, best = await self._last_occurred(
            session_id, self._seek_request(session_id, last), moment, late
        )
        if best or not first:  # (not first: a replica behind the leader; trust the leader)
            return best or last
        # Stored before `moment - skew` but occurred after `moment`: clocks further apart
        # than `clock_skew`. Answer as a full read would.
        _, best = await self._last_occurred(session_id, self._seek_request(session_id, 1), moment)
        return best

    async def sequence_after(self, session_id: str, moment: datetime) -> int | None:
        """The stream sequence of the session's first event (in log order) that occurred
        at or after ``moment`` (``None`` if none; naive times are UTC).

        A seek: the session's last event before ``moment`` is bisected from its first
        message stored at or after ``moment - clock_skew`` on (the assumptions of
        :meth:`sequence_at`); the answer is the readable event after it. If nothing
        is stored from there, the session's last event is
        checked: should it have occurred at or after ``moment`` (assumption 1 does not
        hold), the session is read from its start instead.

        :raises JournalError: the stream does not exist or does not answer direct gets.
        """
        moment = _utc(moment)
        skew = timedelta(seconds=self.config.clock_skew)
        first = await self._first_stored(session_id, _shift(moment, -skew))
        if first:
            # The last event before `moment`, bisected as in sequence_at; the answer follows.
            end = max(await self.last_sequence(session_id) + 1, first + 1)
            before = await self._bisect(session_id, first, end, _shift(moment, -_MICROSECOND))
            after = await self._readable_from(session_id, max(before + 1, first), 1 << 62)
            return None if after is None else after[0]
        last = await self.last_sequence(session_id)
        if last == 0:
            return None
        found, _ = await self._first_occurred(
            session_id, self._seek_request(session_id, last), moment
        )
        if found is None:  # the last event occurred before `moment`, as assumed
            return None
        # Stored before `moment - skew` but occurred at or after `moment`: clocks further
        # apart than `clock_skew`. Answer as a full read would.
        found, _ = await self._first_occurred(session_id, self._seek_request(session_id, 1), moment)
        return found

    async def _first_occurred(
        self, session_id: str, request: dict[str, Any], moment: datetime
    ) -> tuple[int | None, bool]:
        """``(sequence of the first event at or after moment, whether any message was read)``,
        reading from ``request`` until that event."""
        read = False
        events = self._stored(session_id, request)
        async with contextlib.aclosing(events):
            async for sequence, envelope in events:
                read = True
                if envelope is not None and envelope.occurred_at >= moment:
                    return sequence, read
        return None, read

    async def count_stored(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> int:
        """How many messages the session has stored from/up to stream sequences (inclusive).

        At most two direct gets (their ``Nats-Num-Pending``): nothing is read. Every
        stored message counts, a quarantined unreadable one too.
        """
        if to_sequence is not None and to_sequence < max(from_sequence, 1):
            return 0
        stored = await self._count_from(session_id, from_sequence)
        if stored and to_sequence is not None:
            stored -= await self._count_from(session_id, to_sequence + 1)
        return max(stored, 0)

    async def _count_from(self, session_id: str, sequence: int) -> int:
        request = self._seek_request(session_id, sequence)
        request["batch"] = 1
        messages, pending = await self._direct_batch(session_id, request)
        return len(messages) + pending

    def _seek_request(self, session_id: str, start: int | datetime) -> dict[str, Any]:
        """A batched direct get of the session's messages from a sequence or a stored time."""
        request: dict[str, Any] = {
            "next_by_subj": self.subject(session_id),
            "batch": _SEEK_PAGE,
            "max_bytes": DEFAULT_PAGE_BYTES,
        }
        if isinstance(start, int):
            request["seq"] = max(start, 1)
        elif start <= _EARLIEST:  # the server counts time in int64 nanoseconds since 1970
            request["seq"] = 1
        else:
            request["start_time"] = min(start, _LATEST).isoformat().replace("+00:00", "Z")
        return request

    async def _last_occurred(
        self,
        session_id: str,
        request: dict[str, Any],
        moment: datetime,
        late: datetime | None = None,
    ) -> tuple[int, int]:
        """``(first sequence read, sequence of the last event at or before moment)``,
        reading from ``request`` until an event occurred after ``late`` (0: none)."""
        first = best = 0
        events = self._stored(session_id, request)
        async with contextlib.aclosing(events):
            async for sequence, envelope in events:
                first = first or sequence
                if envelope is None:
                    continue
                if envelope.occurred_at <= moment:
                    best = sequence
                elif late is not None and envelope.occurred_at > late:
                    break
        return first, best

    async def event_stored_at(self, session_id: str, sequence: int) -> Envelope | None:
        """The session's event stored at ``sequence`` (``None``: none there, or a message
        that is no event of the session). One direct get."""
        request = {"seq": sequence, "next_by_subj": self.subject(session_id), "batch": 1}
        messages, _ = await self._direct_batch(session_id, request)
        if not messages or messages[0][0] != sequence:
            return None
        event = self._decoded(messages[0][1], sequence)
        return event if event is not None and event.session_id == session_id else None

    async def event_of_revision(self, session_id: str, revision: int) -> Envelope | None:
        """The session's event numbered ``revision``, found by bisection (direct gets).

        Revisions grow with stream sequences and revision r is stored at a sequence
        >= r, so about log2 of the log's length in probes find it, none of the
        session read. ``None`` when there is no such event, or when the events probed
        were stored before revisions were recorded (read the session to number them).
        """
        if revision < 1:
            return None
        low, high = revision, await self.last_sequence(session_id) + 1
        while low < high:
            probe = await self._readable_from(session_id, (low + high) // 2, high)
            if probe is None:
                high = (low + high) // 2
                continue
            sequence, envelope = probe
            if envelope.revision is None:
                return None
            if envelope.revision == revision:
                return envelope
            if envelope.revision < revision:
                low = sequence + 1
            else:
                high = (low + high) // 2
        return None

    async def _first_stored(self, session_id: str, moment: datetime) -> int:
        """The sequence of the session's first message stored at or after ``moment`` (0: none)."""
        request = self._seek_request(session_id, moment)
        request["batch"] = 1
        messages, _ = await self._direct_batch(session_id, request)
        return messages[0][0] if messages else 0

    async def _bisect(self, session_id: str, low: int, high: int, moment: datetime) -> int:
        """The sequence of the session's last event in ``[low, high)`` that occurred at or
        before ``moment`` (0: none), by bisection over stream sequences: each probe is a
        direct get of the session's first readable event at or after the middle."""
        best = 0
        while low < high:
            middle = (low + high) // 2
            probe = await self._readable_from(session_id, middle, high)
            if probe is None:
                high = middle
                continue
            sequence, envelope = probe
            if envelope.occurred_at <= moment:
                best, low = sequence, sequence + 1
            else:
                high = middle
        return best

    async def _readable_from(
        self, session_id: str, sequence: int, end: int
    ) -> tuple[int, Envelope] | None:
        """The session's first readable event at or after ``sequence`` and before ``end``."""
        request: dict[str, Any] = {
            "seq": sequence,
            "next_by_subj": self.subject(session_id),
            "batch": 4,
            "max_bytes": DEFAULT_PAGE_BYTES,
        }
        while True:
            messages, pending = await self._direct_batch(session_id, request)
            for found, data in messages:
                if found >= end:
                    return None
                envelope = self._decoded(data, found)
                if envelope is not None:
                    return found, envelope
            if not messages or not pending:
                return None
            request = {**request, "seq": messages[-1][0] + 1}

    async def _event_before(self, session_id: str, sequence: int) -> int:
        """The sequence of the session's last readable event before ``sequence`` (0: none)."""
        subject = self.subject(session_id)
        while sequence > 1:
            request = {"multi_last": [subject], "up_to_seq": sequence - 1, "batch": 1}
            messages, _ = await self._direct_batch(session_id, request)
            if not messages:
                return 0
            sequence, data = messages[-1]
            if self._decoded(data, sequence) is not None:
                return sequence
        return 0

    async def _stored(
        self, session_id: str, request: dict[str, Any]
    ) -> AsyncGenerator[tuple[int, Envelope | None], None]:
        """``(sequence, envelope)`` of the session's messages from ``request`` on, in
        order, a page at a time (``None``: a message that is not a readable event)."""
        size = request.get("batch", _SEEK_PAGE)
        messages, pending = await self._direct_batch(session_id, request)
        while messages:
            for sequence, data in messages:
                yield sequence, self._decoded(data, sequence)
            if not pending:
                return
            size = min(2 * size, DEFAULT_PAGE_EVENTS)
            request = {
                "seq": messages[-1][0] + 1,
                "next_by_subj": self.subject(session_id),
                "batch": size,
                "max_bytes": DEFAULT_PAGE_BYTES,
            }
            messages, pending = await self._direct_batch(session_id, request)

    def _decoded(self, data: bytes, sequence: int) -> Envelope | None:
        try:
            return self.codec.decode(data, sequence=sequence)
        except (UnknownEventType, UnknownEventVersion):
            raise  # an event of newer code (or a missing upcaster): not this log's damage
        except DecodeError:
            return None

    async def _direct_batch(
        self, session_id: str, request: dict[str, Any]
    ) -> tuple[list[tuple[int, bytes]], int]:
        """One batched direct get (``<api prefix>.DIRECT.GET.<stream>``) of the session's
        messages: ``(sequence, payload)`` of each, and how many of the session's messages
        follow them (``Nats-Num-Pending``). No message: ``([], 0)``.

        :raises JournalError: the stream does not exist or answers no direct gets, the
            server refused or did not answer in time, or a message was lost in transit.
        """
        subject = self.subject(session_id)
        stream = self.config.stream
        prefix = getattr(self.js, "_prefix", "$JS.API")
        start = int(request.get("seq", 1))  # nothing before a requested sequence
        messages: list[tuple[int, bytes]] = []
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        wanted = subject.encode()

        def fail(problem: str) -> None:
            if not done.done():
                done.set_exception(JournalError(f"read of {session_id}: {problem}"))

        def collect(_subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
            if done.done():
                return
            if headers is None:
                fail("not a stored message (no headers)")
                return
            if status_of(headers) is not None:  # end of batch, or no message at all
                done.set_result(headers)
                return
            try:
                sequence = int(header_value(headers, b"Nats-Sequence") or b"")
                previous = int(header_value(headers, b"Nats-Last-Sequence") or b"0")
            except ValueError:
                fail(f"not a stored message (headers {headers[:300]!r})")
                return
            stored_on = header_value(headers, b"Nats-Subject")
            if stored_on != wanted or sequence < start:
                fail(f"got sequence {sequence} of {stored_on!r}")
                return
            # Nats-Last-Sequence: the batch's message before this one (0 for the first).
            intact = previous == messages[-1][0] < sequence if messages else previous < start
            if not intact:
                fail(f"message lost in transit before sequence {sequence}")
                return
            messages.append((sequence, data))

        timeout = self.config.api_timeout
        try:
            sub = await subscribe_direct(self.nc, self.nc.new_inbox(), collect)
        except nats.errors.Error as exc:
            raise JournalError(f"cannot read {session_id}: {exc or type(exc).__name__}") from exc
        try:
            await self.nc.publish(
                f"{prefix}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=sub.subject
            )
            end = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise JournalError(
                f"read of {session_id}: stream {stream} did not answer in full within "
                f"{timeout}s ({len(messages)} messages received)"
            ) from None
        except nats.errors.Error as exc:
            raise JournalError(f"cannot read {session_id}: {exc or type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        status, description = status_of(end) or (b"", "")
        if status == _END_OF_BATCH:
            try:
                pending = int(header_value(end, b"Nats-Num-Pending") or b"0")
                last_sent = int(header_value(end, b"Nats-Last-Sequence") or b"0")
            except ValueError:
                raise JournalError(f"read of {session_id}: unreadable end {end!r}") from None
            if messages and last_sent != messages[-1][0]:
                raise JournalError(
                    f"read of {session_id}: message lost in transit after sequence "
                    f"{messages[-1][0]} (the server sent up to {last_sent})"
                )
            return messages, pending
        if status == _NOT_FOUND and not messages:  # nothing matches
            return [], 0
        if status == NO_RESPONDERS:
            await self._stream_exists(f"cannot read {session_id}")
            raise JournalError(
                f"cannot read {session_id}: stream {stream} answered no direct get (its "
                "replicas may be electing a leader, or it does not allow direct gets)"
            )
        raise JournalError(
            f"read of {session_id} refused by stream {stream}: status "
            f"{status.decode(errors='replace')} {description}".rstrip()
        )

    async def count_before(self, session_id: str, sequence: int) -> int:
        """How many of the session's messages the stream holds before ``sequence``.

        What a reader needs to number events stored before revisions were
        recorded (envelope formats 1 and 2) when it does not start at the
        beginning: all the session's messages minus those from ``sequence`` on
        (direct gets' ``Nats-Num-Pending``, nothing read), counted again until no
        append came in between. Every message of the subject counts, so a stray
        one (no event of the session, see ``plantangenet quarantine``) before
        ``sequence`` shifts it.
        """
        if sequence <= 1:
            return 0
        for _ in range(10):
            after = await self._count_from(session_id, sequence)
            every = await self._count_from(session_id, 1)
            if await self._count_from(session_id, sequence) == after:  # no append between
                return every - after
        raise JournalError(f"cannot count the events of {session_id}: it keeps growing")
