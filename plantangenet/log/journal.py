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

Readers without a consumer: the stream republishes every stored event on
``<live prefix>.<session_id>`` (:meth:`Journal.live_subject`), and
:meth:`Journal.page` reads stored events a page at a time with JetStream's
batched direct get.

All methods are coroutines and must run on the event loop that owns the NATS
connection (see :class:`plantangenet.log.loop.EventLoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import (
    DiscardPolicy,
    RePublish,
    StorageType,
    StreamConfig,
)

from plantangenet.creating import created
from plantangenet.errors import (
    ConcurrencyError,
    DuplicateCommand,
    JournalError,
    StorageExhausted,
)
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import Envelope, new_id
from plantangenet.log.ack_inbox import AckInbox
from plantangenet.log.frames import batch_frames, send_frames
from plantangenet.log.journal_acks import (
    _BATCH_INCOMPLETE,
    _error_code,
    _msg_id,
    _msg_ids,
    _parse_ack,
    stored_result,
)
from plantangenet.log.journal_acks import AppendResult as AppendResult
from plantangenet.log.journal_acks import HistoryPage as HistoryPage
from plantangenet.log.journal_acks import store_problem as store_problem
from plantangenet.log.journal_config import ALL_SESSIONS as ALL_SESSIONS
from plantangenet.log.journal_config import DEFAULT_LIVE_PREFIX as DEFAULT_LIVE_PREFIX
from plantangenet.log.journal_config import DEFAULT_STREAM as DEFAULT_STREAM
from plantangenet.log.journal_config import DEFAULT_SUBJECT_PREFIX as DEFAULT_SUBJECT_PREFIX
from plantangenet.log.journal_config import LIMIT_ENV as LIMIT_ENV
from plantangenet.log.journal_config import MAX_REPLICAS as MAX_REPLICAS
from plantangenet.log.journal_config import MONITOR_URL_ENV as MONITOR_URL_ENV
from plantangenet.log.journal_config import TIMEOUT_ENV as TIMEOUT_ENV
from plantangenet.log.journal_config import InvalidJournalConfig as InvalidJournalConfig
from plantangenet.log.journal_config import JournalConfig as JournalConfig
from plantangenet.log.journal_config import parse_limit as parse_limit
from plantangenet.log.journal_config import parse_seconds as parse_seconds
from plantangenet.log.journal_config import stream_limits_from_env as stream_limits_from_env
from plantangenet.log.journal_config import timeouts_from_env as timeouts_from_env
from plantangenet.log.journal_reads import READER_INACTIVE_THRESHOLD as READER_INACTIVE_THRESHOLD
from plantangenet.log.journal_reads import _Reading
from plantangenet.log.journal_seek import DEFAULT_PAGE_BYTES as DEFAULT_PAGE_BYTES
from plantangenet.log.journal_seek import DEFAULT_PAGE_EVENTS as DEFAULT_PAGE_EVENTS
from plantangenet.log.server_version import check_server_version

#: Seconds an append waits for its acknowledgement before asking the server's health
#: whether its store can write (then again every as many seconds, until ``ack_timeout``).
STORE_PROBE_AFTER = 2.0
#: Seconds between an append's attempts at first (doubling up to _RETRY_PAUSE_MAX).
_RETRY_PAUSE = 0.05
_RETRY_PAUSE_MAX = 0.2
#: Reads a retried append makes to find whether an earlier attempt was stored.
_STORED_CHECKS = 10

#: JetStream refuses atomic batches above 1000 messages.
MAX_EVENTS_PER_APPEND = 1000


class Journal(_Reading):
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
        self._acks = AckInbox(nc)
        #: Called with the seconds each append took, from publishing it to its
        #: acknowledgement or failure (the session service's metrics use it).
        self.append_observer: Callable[[float], None] | None = None
        #: Readers' consumers this journal holds on the stream now (at most 1,000 a stream).
        self.consumers_in_use = 0

    def subject(self, session_id: str) -> str:
        """The subject that holds ``session_id``'s events."""
        return f"{self.config.subject_prefix}.{session_id}"

    def live_subject(self, session_id: str) -> str:
        """The subject on which the stream republishes each stored event of ``session_id``.

        The server publishes it once the event is stored (once per event, also on a
        cluster, and for every message of an atomic batch), payload as stored, with
        headers ``Nats-Stream``, ``Nats-Subject``, ``Nats-Sequence`` (its stream
        sequence), ``Nats-Time-Stamp`` and ``Nats-Last-Sequence`` (the session's
        previous stream sequence, ``"0"`` for its first event): a follower that sees
        a ``Nats-Last-Sequence`` other than the last sequence it holds missed events
        (core NATS delivery is at most once), and reads them with :meth:`page`.
        """
        return f"{self.config.live_prefix}.{session_id}"

    def _republish(self) -> RePublish:
        """Every stored ``<subject_prefix>.<id>`` again on ``<live_prefix>.<id>``."""
        cfg = self.config
        return RePublish(
            src=f"{cfg.subject_prefix}.*", dest=f"{cfg.live_prefix}.{{{{wildcard(1)}}}}"
        )

    async def ensure_stream(self) -> None:
        """Create the stream if it does not exist (idempotent).

        The stream republishes each stored event on its :meth:`live_subject`. An
        existing stream with the right subjects but without that republish (or with
        another one) is updated to it, and to the config's ``max_bytes``, ``max_msgs``
        and ``replicas`` where they are set (not ``None``) and differ; its other
        settings are kept as they are. Limits are never set on a stream that discards
        old messages when full (that would drop history): that is an error.
        """
        check_server_version(self.nc)
        cfg = self.config
        config = StreamConfig(
            name=cfg.stream,
            subjects=[f"{cfg.subject_prefix}.*"],
            storage=StorageType.FILE,
            num_replicas=cfg.replicas or 1,
            duplicate_window=cfg.duplicate_window,
            max_bytes=-1 if cfg.max_bytes is None else cfg.max_bytes,
            max_msgs=-1 if cfg.max_msgs is None else cfg.max_msgs,
            # A full stream must refuse new events, never drop old ones: the log is the truth.
            discard=DiscardPolicy.NEW,
            allow_atomic=True,
            allow_direct=True,
            deny_delete=cfg.deny_delete,
            republish=self._republish(),
        )
        if await self._create_stream(config):
            await self._adopt_stream(config.subjects or [], self._republish())
        await self._wait_for_leader()

    async def _create_stream(self, config: StreamConfig) -> bool:
        """Create the stream (asked again while it times out: see
        :mod:`plantangenet.creating`); whether it existed with another configuration."""
        name = self.config.stream
        try:
            await created(lambda: self.js.add_stream(config), f"stream {name}")
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with another config
                raise JournalError(f"cannot create stream {name}: {exc.description}") from exc
            return True
        except nats.errors.Error as exc:
            raise JournalError(f"cannot create stream {name}: {exc}") from exc
        return False

    async def _adopt_stream(self, subjects: list[str], republish: RePublish) -> None:
        """Check an existing stream's subjects; give it the live republish if it lacks it,
        and the limits the config sets if they differ."""
        cfg = self.config
        name = cfg.stream
        try:
            info = await self.js.stream_info(name)
        except nats.errors.Error as exc:
            raise JournalError(f"cannot read the config of stream {name}: {exc}") from exc
        have = info.config
        if have.subjects != subjects:
            raise JournalError(
                f"stream {name} exists with subjects {have.subjects}, expected {subjects}"
            )
        changes: dict[str, Any] = {}
        republished = have.republish
        if (
            republished is None
            or (republished.src, republished.dest) != (republish.src, republish.dest)
            or republished.headers_only
        ):
            changes["republish"] = republish
        for field, wanted in (
            ("max_bytes", cfg.max_bytes),
            ("max_msgs", cfg.max_msgs),
            ("num_replicas", cfg.replicas),
        ):
            if wanted is not None and getattr(have, field) != wanted:
                changes[field] = wanted
        if not changes:
            return
        limited = {"max_bytes", "max_msgs"} & changes.keys()
        if limited and have.discard != DiscardPolicy.NEW:
            raise JournalError(
                f"stream {name} discards its oldest messages when full (discard {have.discard}): "
                f"setting {' and '.join(sorted(limited))} on it could drop events; give it "
                "discard 'new' first, or set no limit"
            )
        # Everything else (limits not set in the config, deny_delete...) stays as it is.
        doing = " and ".join(
            f"republish stream {name}'s events on {v.dest}"
            if k == "republish"
            else f"set {k} {v} on stream {name}"
            for k, v in changes.items()
        )
        try:
            await self.js.update_stream(dataclasses.replace(have, **changes))
        except nats.js.errors.APIError as exc:
            raise JournalError(
                f"cannot {doing}: {exc.description} (err_code {exc.err_code})"
            ) from exc
        except nats.errors.Error as exc:
            raise JournalError(f"cannot {doing}: {exc}") from exc

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
        observer = self.append_observer
        started = time.perf_counter() if observer is not None else 0.0
        try:
            last_seq = await self._append_with_retries(
                session_id, subject, msg_ids, expected_sequence, payloads, commit
            )
        finally:
            if observer is not None:
                observer(time.perf_counter() - started)
        return stored_result(session_id, envelopes, payloads, digests, last_seq)

    async def _append_with_retries(
        self,
        session_id: str,
        subject: str,
        msg_ids: Sequence[str],
        expected_sequence: int,
        payloads: Sequence[bytes],
        commit: dict[str, str],
        prior: bytes | BaseException | None = None,
        started: float | None = None,
    ) -> int:
        """Send an append until it is acknowledged; the stream sequence of its last message.

        ``prior``: the outcome of a first attempt already sent at loop time ``started``
        (its acknowledgement's payload, or what it raised; see
        :mod:`plantangenet.log.append_now`): the attempts go on from there.

        Each attempt waits ``attempt_timeout`` for its acknowledgement; the attempts
        together at most ``ack_timeout``. An attempt that times out (a stream leader
        that died with it) or finds no responders (its replicas electing a new leader)
        is sent again, after a short pause, with the same message ids and the same
        expected sequence: whatever attempts reach the log, it stores the append once.
        (After the first "no responders" the stream is looked up once: a stream that
        does not exist fails the append at once.)
        A retry finding an earlier attempt stored gets a duplicate acknowledgement
        (its sequence is the stored one) or, for an atomic batch or a single message
        whose deduplication the new leader does not know, a wrong-last-sequence or
        duplicate-in-batch error; then the message after ``expected_sequence`` is read
        and, if it carries this append's first message id, the append is stored.
        """
        config = self.config
        loop = asyncio.get_running_loop()
        begun = loop.time() if started is None else started
        deadline = begun + config.ack_timeout
        # A late append asks the server whether its store can write: a full disk is never
        # answered (see JournalConfig.monitor_url), so it is named, not waited out.
        probe_at = begun + STORE_PROBE_AFTER
        attempts = 0
        timed_out = asked = False
        pause = _RETRY_PAUSE
        while True:
            attempts += 1
            attempt = min(config.attempt_timeout, max(deadline - loop.time(), 0.001))
            try:
                if prior is None:
                    reply = await self._send_append(
                        subject, msg_ids, expected_sequence, payloads, commit, attempt
                    )
                elif isinstance(prior, BaseException):
                    raise prior
                else:
                    reply = prior
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                if isinstance(exc, nats.errors.TimeoutError):
                    timed_out = True
                elif not asked:  # no responders: a missing stream, or an election?
                    asked = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stream_exists(f"no stream leader answered for {subject}"),
                            min(config.attempt_timeout, max(deadline - loop.time(), 0.001)),
                        )
                if timed_out and loop.time() >= probe_at:
                    await self._check_store(session_id)
                    probe_at = loop.time() + STORE_PROBE_AFTER
                remaining = deadline - loop.time()
                if remaining <= 0.001:
                    if timed_out:
                        raise JournalError(
                            f"no acknowledgement for {session_id} within "
                            f"{config.ack_timeout}s ({attempts} attempts); "
                            "the append may or may not be stored"
                        ) from None
                    raise JournalError(
                        f"no stream leader answered for {subject}: stream {config.stream} "
                        "is missing, or its replicas are electing a leader"
                    ) from None
                await asyncio.sleep(min(pause, remaining))
                pause = min(pause * 2, _RETRY_PAUSE_MAX)
                continue
            except nats.errors.Error as exc:
                raise JournalError(f"append to {session_id} failed: {exc}") from exc
            finally:
                prior = None
            if b"error" in reply and _error_code(reply) == _BATCH_INCOMPLETE:
                # Some of the batch's messages never reached the leader (a leader change,
                # a store that stopped answering): send the whole batch again.
                if loop.time() >= probe_at:
                    await self._check_store(session_id)
                    probe_at = loop.time() + STORE_PROBE_AFTER
                remaining = deadline - loop.time()
                if remaining > 0.001:
                    await asyncio.sleep(min(pause, remaining))
                    pause = min(pause * 2, _RETRY_PAUSE_MAX)
                    continue
            if attempts == 1:
                return int(_parse_ack(reply, expected_sequence, session_id)["seq"])
            try:
                ack = _parse_ack(reply, expected_sequence, session_id, retried=True)
            except (ConcurrencyError, DuplicateCommand) as refused:
                stored = await self._stored_as(subject, msg_ids, expected_sequence, deadline)
                if stored is None:
                    raise refused from None
                return stored
            return int(ack["seq"])

    async def _stored_as(
        self, subject: str, msg_ids: Sequence[str], expected_sequence: int, deadline: float
    ) -> int | None:
        """The sequence of an append's last message if the log holds it right after
        ``expected_sequence`` (an earlier attempt stored it), else ``None``."""
        loop = asyncio.get_running_loop()
        direct = not self.config.leader_reads
        stream = self.config.stream
        for _ in range(_STORED_CHECKS):
            try:
                first = await self.js.get_msg(
                    stream, seq=expected_sequence + 1, subject=subject, next=True, direct=direct
                )
                if _msg_id(first.headers) != msg_ids[0] or first.seq is None:
                    return None
                last_seq = first.seq + len(msg_ids) - 1
                if len(msg_ids) == 1:
                    return last_seq
                last = await self.js.get_msg(stream, seq=last_seq, direct=direct)
                return last_seq if _msg_id(last.headers) == msg_ids[-1] else None
            except nats.js.errors.NotFoundError:
                pass  # a replica not there yet (direct gets), or nothing stored
            except nats.errors.Error:
                pass  # a leader being elected
            if loop.time() > deadline:
                return None
            await asyncio.sleep(_RETRY_PAUSE)
        return None

    @property
    def monitor_url(self) -> str | None:
        """The server's HTTP monitoring, if known (see :class:`JournalConfig`)."""
        return self.config.monitor_url or os.environ.get(MONITOR_URL_ENV) or None

    async def _check_store(self, session_id: str) -> None:
        """Raise :class:`StorageExhausted` if the server's ``/healthz`` says its store cannot
        write (asked by a late append; nothing to ask without a monitoring URL)."""
        monitor = self.monitor_url
        problem = None if monitor is None else await store_problem(monitor)
        if problem is not None:
            raise StorageExhausted(
                f"append to {session_id} not acknowledged: storage exhausted, the "
                f"server cannot write its store ({problem}); the server stores "
                "none of it nor any later append. Free space on the store's "
                "filesystem, then restart nats-server: a stream that met a write "
                "error refuses writes until the server restarts"
            )

    async def _send_append(
        self,
        subject: str,
        msg_ids: Sequence[str],
        expected_sequence: int,
        payloads: Sequence[bytes],
        commit: dict[str, str],
        timeout: float,
    ) -> bytes:
        """Publish an append (an atomic batch if several); its acknowledgement's payload."""
        last = len(payloads) - 1
        headers = dict(commit)
        if last > 0:
            batch_id = new_id()
            await self._publish_batch(
                subject, msg_ids, batch_id, expected_sequence, payloads[:last]
            )
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(last + 1)
            headers["Nats-Batch-Commit"] = "1"
        return await self._acks.request(subject, payloads[last], timeout, headers)

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
