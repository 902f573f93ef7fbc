"""The journal: the only code that talks to the log (a NATS JetStream stream).

One stream holds every session; each session has its own subject,
``<prefix>.<session_id>``. Appends are guarded by
``Nats-Expected-Last-Subject-Sequence`` (optimistic concurrency: a stale
writer gets :class:`~plantangenet.errors.ConcurrencyError` and nothing is
written), carry ``Nats-Msg-Id`` derived from the command id (a retried command
is stored once), and a command that yields several events is written as one
JetStream *atomic batch* (all or nothing). Replays use ordered consumers, each
deleted as soon as its read ends (a stream holds at most 1,000 consumers).
An append the log has no room for raises :class:`StorageExhausted`; a read the
stream has no consumer left for raises :class:`TooManyReaders`.

All methods are coroutines and must run on the event loop that owns the NATS
connection (see :class:`plantangenet.loop.EventLoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from plantangenet.errors import (
    ConcurrencyError,
    DuplicateCommand,
    JournalError,
    StorageExhausted,
    TooManyReaders,
    UnknownSession,
)
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import Envelope, new_id
from plantangenet.frames import batch_frames, send_frames

_WRONG_LAST = 10071  # JSStreamWrongLastSequenceErrF
_BATCH_DUPLICATE = 10201  # atomic batch contains a duplicate message id
_INSUFFICIENT_RESOURCES = 10023  # JSInsufficientResourcesErr: the server's store is full
_STORE_FAILED = 10077  # JSStreamStoreFailedF: "maximum bytes exceeded", "no space left"...
_MAX_CONSUMERS = 10026  # JSMaximumConsumersLimitErr
#: Store failures (err_code 10077) that mean "no room", not "broken".
_NO_ROOM = ("maximum bytes", "maximum messages", "no space left", "insufficient")
#: Seconds a reader's consumer outlives its reader if deleting it failed (a backstop:
#: a stream holds at most 1,000 consumers, so readers must not linger).
READER_INACTIVE_THRESHOLD = 5.0
_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")
#: The stream and subject prefix used unless configured otherwise.
DEFAULT_STREAM = "PLANTANGENET"
DEFAULT_SUBJECT_PREFIX = "plantangenet.events"
#: JetStream refuses atomic batches above 1000 messages.
MAX_EVENTS_PER_APPEND = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class JournalConfig:
    """Where and how the log is kept.

    :param stream: JetStream stream name.
    :param subject_prefix: a session's events go to ``<prefix>.<session_id>``.
    :param replicas: stream replicas (3 on a cluster).
    :param duplicate_window: seconds during which a command id is deduplicated.
    :param ack_timeout: seconds to wait for the server to acknowledge an append.
    :param idle_timeout: seconds a replay may wait for its next message.
    :param max_bytes: stream size limit (``-1``: unlimited).
    :param api_timeout: seconds to wait for JetStream API answers (consumer
        creation, direct gets, stream management).
    :param read_window: events a reader may have delivered but not yet
        processed; it bounds a replay's memory whatever the session's length.
    :param leader_reads: ask the stream leader for a session's last sequence
        (always current, but needs stream-wide read permission). ``False`` uses a
        direct get by subject, which any replica answers (per-session permission
        suffices; on a cluster it may lag the leader by a few events). Bots use ``False``.
    :param deny_delete: refuse deleting single messages through the JetStream
        API (tamper resistance; :mod:`plantangenet.verify` detects it anyway).
    :param delete_readers: delete each read's consumer as soon as the read ends
        (``$JS.API.CONSUMER.DELETE``, fire and forget), so that many short reads
        never fill the stream's 1,000 consumers. ``None`` (default): only with
        ``leader_reads``, i.e. for users with stream-wide rights; a bot's
        per-session permissions do not include deleting consumers, and the
        server drops its finished readers' consumers after
        :data:`READER_INACTIVE_THRESHOLD` seconds.
    """

    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    replicas: int = 1
    duplicate_window: float = 120.0
    ack_timeout: float = 10.0
    idle_timeout: float = 10.0
    max_bytes: int = -1
    deny_delete: bool = True
    api_timeout: float = 5.0
    read_window: int = 2048
    leader_reads: bool = True
    delete_readers: bool | None = None

    @classmethod
    def from_env(cls) -> JournalConfig:
        """Defaults, with ``PLANTANGENET_STREAM`` / ``PLANTANGENET_SUBJECT_PREFIX`` applied."""
        return cls(
            stream=os.environ.get("PLANTANGENET_STREAM") or DEFAULT_STREAM,
            subject_prefix=os.environ.get("PLANTANGENET_SUBJECT_PREFIX") or DEFAULT_SUBJECT_PREFIX,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResult:
    """What the log acknowledged: the stored envelopes, with their sequences."""

    session_id: str
    envelopes: tuple[Envelope, ...]

    @property
    def first_sequence(self) -> int:
        """The stream sequence of the first stored event."""
        return self.envelopes[0].sequence or 0

    @property
    def last_sequence(self) -> int:
        """The stream sequence of the last stored event."""
        return self.envelopes[-1].sequence or 0


class Journal:
    """Appends to and reads from a session's events on JetStream.

    :param nc: a connected nats-py client (its loop is where this runs).
    :param config: stream name, subjects and limits.
    :param codec: how envelopes are encoded and decoded.
    """

    def __init__(
        self, nc: NATS, config: JournalConfig | None = None, codec: EventCodec = CODEC
    ) -> None:
        self.nc = nc
        self.config = config or JournalConfig()
        self.js = nc.jetstream(timeout=self.config.api_timeout)
        self.codec = codec

    def subject(self, session_id: str) -> str:
        """The subject that holds ``session_id``'s events."""
        return f"{self.config.subject_prefix}.{session_id}"

    async def ensure_stream(self) -> None:
        """Create the stream if it does not exist (idempotent)."""
        cfg = self.config
        config = StreamConfig(
            name=cfg.stream,
            subjects=[f"{cfg.subject_prefix}.*"],
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window,
            max_bytes=cfg.max_bytes,
            # A full stream must refuse new events, never drop old ones: the log is the truth.
            discard=DiscardPolicy.NEW,
            allow_atomic=True,
            allow_direct=True,
            deny_delete=cfg.deny_delete,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with another config
                raise JournalError(f"cannot create stream {cfg.stream}: {exc.description}") from exc
            info = await self.js.stream_info(cfg.stream)
            if info.config.subjects != config.subjects:
                raise JournalError(
                    f"stream {cfg.stream} exists with subjects {info.config.subjects}, "
                    f"expected {config.subjects}"
                ) from exc
        except nats.errors.Error as exc:
            raise JournalError(f"cannot create stream {cfg.stream}: {exc}") from exc
        await self._wait_for_leader()

    async def _wait_for_leader(self, timeout: float = 30.0) -> None:
        """On a cluster, wait until the stream has a leader (a new R3 stream elects one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                info = await self.js.stream_info(self.config.stream)
                cluster = info.cluster
                if cluster is None or cluster.leader:
                    return
            except nats.errors.Error:
                pass
            if loop.time() > deadline:
                raise JournalError(f"stream {self.config.stream} elected no leader in {timeout}s")
            await asyncio.sleep(0.05)

    async def append(
        self, session_id: str, envelopes: Sequence[Envelope], *, expected_sequence: int
    ) -> AppendResult:
        """Store ``envelopes`` after the session's event at ``expected_sequence``.

        All of them are stored, contiguously and in order, or none is.

        :param expected_sequence: the stream sequence of the session's last
            event as the writer knows it (0 for a new session).
        :raises ConcurrencyError: another writer appended first.
        :raises DuplicateCommand: these command ids were already stored.
        :raises JournalError: the server refused or did not answer.
        """
        return await self.append_payloads(
            session_id,
            envelopes,
            [self.codec.encode(e) for e in envelopes],
            expected_sequence=expected_sequence,
        )

    async def append_encoded(
        self,
        session_id: str,
        items: Sequence[tuple[Envelope, bytes]],
        *,
        expected_sequence: int,
        digests: Sequence[bytes] | None = None,
    ) -> AppendResult:
        """:meth:`append` for envelopes the caller has already encoded.

        ``digests``, if given, are the SHA-256 of each payload (a writer that hash-chains
        its events has them already); otherwise they are computed here.
        """
        return await self.append_payloads(
            session_id,
            [e for e, _ in items],
            [p for _, p in items],
            expected_sequence=expected_sequence,
            digests=digests,
        )

    async def append_payloads(
        self,
        session_id: str,
        envelopes: Sequence[Envelope],
        payloads: Sequence[bytes],
        *,
        expected_sequence: int,
        digests: Sequence[bytes] | None = None,
    ) -> AppendResult:
        """:meth:`append_encoded` with the envelopes and their encodings in two lists."""
        if not envelopes:
            raise ValueError("append needs at least one envelope")
        if len(payloads) != len(envelopes):
            raise ValueError(f"{len(payloads)} payloads for {len(envelopes)} envelopes")
        if len(envelopes) > MAX_EVENTS_PER_APPEND:
            raise JournalError(f"at most {MAX_EVENTS_PER_APPEND} events per append")
        if digests is not None and len(digests) != len(envelopes):
            raise ValueError(f"{len(digests)} digests for {len(envelopes)} envelopes")
        subject = self.subject(session_id)
        msg_ids = _msg_ids(session_id, envelopes)
        last = len(payloads) - 1
        commit = {"Nats-Msg-Id": msg_ids[last]}
        if last == 0:
            commit["Nats-Expected-Last-Subject-Sequence"] = str(expected_sequence)
        timeout = self.config.ack_timeout
        try:
            if last > 0:
                batch_id = new_id()
                await self._publish_batch(
                    subject, msg_ids, batch_id, expected_sequence, payloads[:last]
                )
                commit["Nats-Batch-Id"] = batch_id
                commit["Nats-Batch-Sequence"] = str(last + 1)
                commit["Nats-Batch-Commit"] = "1"
            reply = await self.nc.request(subject, payloads[last], timeout, headers=commit)
        except nats.errors.NoRespondersError:
            raise JournalError(
                f"no stream leader answered for {subject}: stream {self.config.stream} is "
                "missing, or its replicas are electing a leader"
            ) from None
        except nats.errors.TimeoutError:
            raise JournalError(
                f"no acknowledgement for {session_id} within {timeout}s; "
                "the append may or may not be stored"
            ) from None
        except nats.errors.Error as exc:
            raise JournalError(f"append to {session_id} failed: {exc}") from exc
        ack = _parse_ack(reply.data, expected_sequence, session_id)
        last_seq = int(ack["seq"])
        first_seq = last_seq - len(envelopes) + 1
        if digests is None:
            digests = [
                e.digest or hashlib.sha256(p).digest()
                for e, p in zip(envelopes, payloads, strict=True)
            ]
        stored = tuple(
            e.stored_at(first_seq + i, digest)
            for i, (e, digest) in enumerate(zip(envelopes, digests, strict=True))
        )
        return AppendResult(session_id, stored)

    async def _publish_batch(
        self,
        subject: str,
        msg_ids: Sequence[str],
        batch_id: str,
        expected_sequence: int,
        payloads: Sequence[bytes],
    ) -> None:
        """Publish an atomic batch's messages before its commit, in order (see ``frames``)."""
        frames = batch_frames(subject, msg_ids, batch_id, expected_sequence, payloads)
        if frames is not None and await send_frames(self.nc, frames, payloads):
            return
        for i, payload in enumerate(payloads):
            headers = {"Nats-Msg-Id": msg_ids[i]}
            if i == 0:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_sequence)
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(i + 1)
            await self.nc.publish(subject, payload, headers=headers)

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

    async def read(
        self,
        session_id: str,
        *,
        from_sequence: int = 1,
        to_sequence: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> AsyncIterator[Envelope]:
        """The session's events in order, from/up to stream sequences (inclusive).

        Stops at the last event that existed when the read began (or at
        ``to_sequence``). ``progress(sequence, end)`` is called every 1,000 events.
        """
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        decode = self.codec.decode
        count = 0
        async for seq, data in self._ordered(session_id, from_sequence, stop_at=end):
            yield decode(data, sequence=seq)
            count += 1
            if progress is not None and count % 1000 == 0:
                progress(seq, end)
        if progress is not None:
            progress(end, end)

    async def read_raw(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """``(sequence, payload)`` of the session's stored messages, undecoded, in order."""
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        async for item in self._ordered(session_id, from_sequence, stop_at=end):
            yield item

    async def read_all(self, session_id: str, **kwargs: Any) -> list[Envelope]:
        """:meth:`read` into a list; raises :class:`UnknownSession` if there are no events."""
        out = [e async for e in self.read(session_id, **kwargs)]
        if not out and await self.last_sequence(session_id) == 0:
            raise UnknownSession(f"no events for session {session_id!r}")
        return out

    async def tail(
        self, session_id: str, *, from_sequence: int | None = None
    ) -> AsyncIterator[Envelope]:
        """Events as they are stored, from ``from_sequence`` (default: only new ones).

        Runs until the consumer of the iterator stops it.
        """
        async for seq, data in self._ordered(session_id, from_sequence, stop_at=None):
            yield self.codec.decode(data, sequence=seq)

    async def _ordered(
        self, session_id: str, from_sequence: int | None, *, stop_at: int | None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """``(stream sequence, payload)`` in order, with no gap and no duplicate.

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
        while True:
            name = new_id()
            try:
                sub = await self._consumer(session_id, subject, max(next_sequence, 1), name)
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
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=self.config.idle_timeout)
                    except nats.errors.TimeoutError:
                        break  # stalled, or a quiet tail: start a fresh consumer
                    sequence, delivered = _sequences(msg.reply)
                    if delivered != expected:
                        break  # a message was lost in transit: start again after the last
                    if delivered % ack_every == 0:
                        await self.nc.publish(msg.reply, b"")
                    expected += 1
                    next_sequence = sequence + 1
                    stalls = 0
                    yield sequence, msg.data
                    if stop_at is not None and sequence >= stop_at:
                        return
            finally:
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

    async def _consumer(self, session_id: str, subject: str, start: int, name: str) -> Any:
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
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
        try:
            # (nats-py overwrites these two from its own arguments: pass them twice.)
            return await self.js.subscribe(
                subject,
                stream=self.config.stream,
                config=config,
                manual_ack=True,
                flow_control=True,
                idle_heartbeat=5.0,
            )
        except (nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise _Unavailable(f"cannot read {session_id}: {exc or type(exc).__name__}") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == _MAX_CONSUMERS:
                raise TooManyReaders(
                    f"cannot read {session_id}: stream {self.config.stream} holds as many "
                    f"readers (consumers) as it may ({exc.description}, err_code "
                    f"{exc.err_code}); retry when reads finish"
                ) from exc
            raise JournalError(f"cannot read {session_id}: {exc}") from exc
        except nats.errors.Error as exc:
            if not self.nc.is_connected:
                raise _Unavailable(f"cannot read {session_id}: disconnected") from exc
            if self.nc.stats.get("reconnects", 0) != reconnects:
                # The connection was lost and regained meanwhile (a server restart): the
                # request went down with the old connection. Not a permission problem.
                raise _Unavailable(f"cannot read {session_id}: reconnected meanwhile") from exc
            raise JournalError(f"cannot read {session_id}: {exc or type(exc).__name__}") from exc

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


class _Unavailable(JournalError):
    """The server could not be reached or had no JetStream answer yet (worth retrying).

    So is a request that failed while the connection was lost and regained (a
    server restart). Other failures to create a reader (a timeout on a steady
    connection: typically a permission the user lacks) are reported at once.
    """


def _msg_ids(session_id: str, envelopes: Sequence[Envelope]) -> list[str]:
    """Each message's ``Nats-Msg-Id``: ``session:command:index`` (a retry is stored once)."""
    ids: list[str] = []
    index: dict[str, int] = {}
    for envelope in envelopes:
        n = index.get(envelope.causation_id, 0)
        index[envelope.causation_id] = n + 1
        ids.append(f"{session_id}:{envelope.causation_id}:{n}")
    return ids


def _parse_ack(data: bytes, expected: int, session_id: str) -> dict[str, Any]:
    try:
        ack: dict[str, Any] = json.loads(data)
    except ValueError:
        raise JournalError(f"unreadable acknowledgement from the server: {data[:200]!r}") from None
    error = ack.get("error")
    if error:
        code = error.get("err_code")
        description = error.get("description", "")
        if code == _WRONG_LAST:
            match = _LAST_SEQ.search(description)
            actual = int(match.group(1)) if match else None
            raise ConcurrencyError(
                f"session {session_id} moved on: expected last sequence {expected}, "
                f"the log has {actual}",
                expected=expected,
                actual=actual,
            )
        if code == _BATCH_DUPLICATE:
            raise DuplicateCommand(f"session {session_id}: command already stored ({description})")
        if code == _INSUFFICIENT_RESOURCES or (
            code == _STORE_FAILED and any(word in description.lower() for word in _NO_ROOM)
        ):
            where = "the stream is full" if code == _STORE_FAILED else "the store is out of space"
            raise StorageExhausted(
                f"append to {session_id} refused, storage exhausted ({where}: {description}, "
                f"err_code {code}); nothing of it was stored"
            )
        raise JournalError(f"append to {session_id} refused: {description} (err_code {code})")
    if ack.get("duplicate"):
        raise DuplicateCommand(f"session {session_id}: command already stored at {ack.get('seq')}")
    if "seq" not in ack:
        raise JournalError(f"acknowledgement without a sequence: {ack}")
    return ack


def _sequences(reply: str) -> tuple[int, int]:
    """``(stream sequence, consumer sequence)`` from a JetStream message's reply subject."""
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    # v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>...
    tokens = reply.split(".")
    offset = 5 if len(tokens) == 9 else 7
    try:
        return int(tokens[offset]), int(tokens[offset + 1])
    except (IndexError, ValueError):
        raise JournalError(f"not a JetStream message (reply subject {reply!r})") from None
