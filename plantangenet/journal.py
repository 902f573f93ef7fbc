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
connection (see :class:`plantangenet.loop.EventLoopThread`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    StorageType,
    StreamConfig,
)

from plantangenet.errors import (
    ConcurrencyError,
    DecodeError,
    DuplicateCommand,
    JournalError,
    LogDamaged,
    StorageExhausted,
    TooManyReaders,
    UnknownEventType,
    UnknownEventVersion,
    UnknownSession,
)
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import OPERATOR, Envelope, new_id
from plantangenet.events.trust import MessageQuarantined
from plantangenet.frames import batch_frames, send_frames

_WRONG_LAST = 10071  # JSStreamWrongLastSequenceErrF
_BATCH_DUPLICATE = 10201  # atomic batch contains a duplicate message id
_BATCH_INCOMPLETE = 10176  # JSAtomicPublishIncompleteBatchErr: a batch message went missing
_INSUFFICIENT_RESOURCES = 10023  # JSInsufficientResourcesErr: the server's store is full
_STORE_FAILED = 10077  # JSStreamStoreFailedF: "maximum bytes exceeded", "no space left"...
_MAX_CONSUMERS = 10026  # JSMaximumConsumersLimitErr
#: Where :class:`JournalConfig` finds the server's monitoring URL unless given one.
MONITOR_URL_ENV = "PLANTANGENET_MONITOR_URL"
#: Seconds an append waits for its acknowledgement before asking the server's health
#: whether its store can write (then again every as many seconds, until ``ack_timeout``).
STORE_PROBE_AFTER = 2.0
#: What nats-server's ``/healthz`` says of a store that cannot write (a full disk: the
#: stream met a "critical write error" and refuses every write until restarted), or of
#: JetStream disabled after one.
_WRITE_FAILURES = ("write error", "no space left", "disk full", "insufficient")
_JETSTREAM_OFF = ("jetstream not enabled", "jetstream is not enabled", "disabled")
#: Seconds between an append's attempts at first (doubling up to _RETRY_PAUSE_MAX).
_RETRY_PAUSE = 0.05
_RETRY_PAUSE_MAX = 0.2
#: Reads a retried append makes to find whether an earlier attempt was stored.
_STORED_CHECKS = 10
#: Store failures (err_code 10077) that mean "no room", not "broken".
_NO_ROOM = ("maximum bytes", "maximum messages", "no space left", "insufficient")
#: Seconds a reader's consumer outlives its reader if deleting it failed (a backstop:
#: a stream holds at most 1,000 consumers, so readers must not linger).
READER_INACTIVE_THRESHOLD = 5.0
_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")
#: The stream and subject prefix used unless configured otherwise.
DEFAULT_STREAM = "PLANTANGENET"
DEFAULT_SUBJECT_PREFIX = "plantangenet.events"
#: The session id that names every session's subject at once (a wildcard), for the few
#: stream-wide readers (:meth:`Journal.read_raw`, :meth:`Journal.last_sequence`).
ALL_SESSIONS = "*"

#: Where the stream republishes each stored event for live readers: ``<prefix>.<session_id>``.
DEFAULT_LIVE_PREFIX = "plantangenet.live"
#: JetStream refuses atomic batches above 1000 messages.
MAX_EVENTS_PER_APPEND = 1000
#: Events and bytes a :meth:`Journal.page` holds unless asked otherwise.
DEFAULT_PAGE_EVENTS = 256
DEFAULT_PAGE_BYTES = 1 << 20
#: Messages in the first page of a time seek (later pages double, up to DEFAULT_PAGE_EVENTS).
_SEEK_PAGE = 16
#: The server keeps times as int64 nanoseconds since 1970: a seek before _EARLIEST goes
#: from sequence 1, one after _LATEST (year 2262, where int64 ends) from _LATEST.
_EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
_LATEST = datetime(2262, 1, 1, tzinfo=UTC)
#: A subject prefix: dot-separated tokens of letters, digits, '_' and '-' (as in access.py).
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
#: First tokens of reply subjects, which no prefix may start with.
_REPLY_TOKENS = ("_INBOX", "_R_")
#: Environment variables that set the stream's limits and replicas (see
#: :func:`stream_limits_from_env`), by :class:`JournalConfig` field.
LIMIT_ENV = {
    "max_bytes": "PLANTANGENET_MAX_BYTES",
    "max_msgs": "PLANTANGENET_MAX_MSGS",
    "replicas": "PLANTANGENET_REPLICAS",
}
#: The most replicas a JetStream stream may have.
MAX_REPLICAS = 5
#: A size: bytes, or a number with K, M, G or T (powers of 1024); the sign is checked after.
_SIZE = re.compile(r"(-?\d{1,19})\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)


class InvalidJournalConfig(JournalError, ValueError):
    """A :class:`JournalConfig` value is not usable (a malformed or overlapping prefix)."""


@dataclasses.dataclass(frozen=True, slots=True)
class JournalConfig:
    """Where and how the log is kept.

    :param stream: JetStream stream name.
    :param subject_prefix: a session's events go to ``<prefix>.<session_id>``.
    :param live_prefix: the stream republishes each stored event of a session on
        ``<live_prefix>.<session_id>`` (see :meth:`Journal.live_subject`). Neither
        prefix may be the other or start with it (the republished events would
        be stored again).
    :param replicas: stream replicas (3 on a cluster; at most 5). ``None``: 1 for a new
        stream, an existing stream keeps its own.
    :param duplicate_window: seconds during which a command id is deduplicated.
    :param ack_timeout: seconds an append may take, retries included, before it
        fails with "no acknowledgement" (it may or may not be stored then).
    :param attempt_timeout: seconds one attempt of an append waits for its
        acknowledgement before it is sent again (same message ids, same expected
        sequence: it cannot be stored twice). Short, so that an append whose stream
        leader died is sent to the new leader soon after its election.
    :param idle_timeout: seconds a replay may wait for its next message.
    :param max_bytes: the most bytes the stream holds (``-1``: no limit). ``None``: no
        limit for a new stream, an existing stream keeps its own. A full stream refuses
        appends (:class:`StorageExhausted`); it never drops events, and has no age limit.
    :param max_msgs: the most events (messages) the stream holds, all sessions together
        (``-1``: no limit; ``None``: as for ``max_bytes``).
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
    :param clock_skew: seconds by which an event's ``occurred_at`` (the writer's clock)
        and the stream's stored time of it (the server's clock) may disagree; the
        margin of time seeks (:meth:`Journal.sequence_at`, :meth:`Journal.sequence_after`).
    :param monitor_url: the server's HTTP monitoring (``http://host:8222``; ``None``:
        ``$PLANTANGENET_MONITOR_URL``, if set). An append whose attempt timed out at least
        :data:`STORE_PROBE_AFTER` seconds after it began asks its ``/healthz`` (so within
        about that, with the default ``attempt_timeout``): a store that cannot
        write (a full disk: nats-server answers such appends never) is then
        :class:`StorageExhausted` at once, instead of a timeout after ``ack_timeout``.
    """

    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    live_prefix: str = DEFAULT_LIVE_PREFIX
    replicas: int | None = None
    duplicate_window: float = 120.0
    ack_timeout: float = 10.0
    attempt_timeout: float = 1.0
    idle_timeout: float = 10.0
    max_bytes: int | None = None
    max_msgs: int | None = None
    deny_delete: bool = True
    api_timeout: float = 5.0
    read_window: int = 2048
    leader_reads: bool = True
    delete_readers: bool | None = None
    clock_skew: float = 5.0
    monitor_url: str | None = None

    def __post_init__(self) -> None:
        """:raises InvalidJournalConfig: a prefix is malformed, or the two overlap, or a
        limit or ``clock_skew`` is out of range."""
        if not self.attempt_timeout > 0 or not self.ack_timeout > 0:
            raise InvalidJournalConfig(
                f"ack_timeout and attempt_timeout must be positive, got "
                f"{self.ack_timeout!r} and {self.attempt_timeout!r}"
            )
        if not 0 <= self.clock_skew < 86_400:
            raise InvalidJournalConfig(
                f"clock_skew must be between 0 and 86400 seconds, got {self.clock_skew!r}"
            )
        for name in LIMIT_ENV:
            value = getattr(self, name)
            if value is not None:
                problem = _limit_problem(name, value)
                if problem is not None:
                    raise InvalidJournalConfig(f"{name}: {problem}")
        for label, prefix in (("subject", self.subject_prefix), ("live", self.live_prefix)):
            if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
                raise InvalidJournalConfig(
                    f"{label} prefix {prefix!r} is not allowed: use dot-separated tokens "
                    "of letters, digits, '_' or '-'"
                )
            if prefix.startswith(_REPLY_TOKENS):
                raise InvalidJournalConfig(
                    f"{label} prefix {prefix!r} collides with reply subjects"
                )
        events, live = self.subject_prefix.split("."), self.live_prefix.split(".")
        shortest = min(len(events), len(live))
        if events[:shortest] == live[:shortest]:
            raise InvalidJournalConfig(
                f"subject prefix {self.subject_prefix!r} and live prefix "
                f"{self.live_prefix!r} overlap; neither may be the other or start with it"
            )

    @classmethod
    def from_env(cls) -> JournalConfig:
        """Defaults, with ``PLANTANGENET_STREAM`` / ``PLANTANGENET_SUBJECT_PREFIX`` /
        ``PLANTANGENET_LIVE_PREFIX``, the limits of :func:`stream_limits_from_env` and the
        timeouts of :func:`timeouts_from_env` applied.

        :raises InvalidJournalConfig: one of them is not usable.
        """
        limits = stream_limits_from_env()
        config = cls(
            stream=os.environ.get("PLANTANGENET_STREAM") or DEFAULT_STREAM,
            subject_prefix=os.environ.get("PLANTANGENET_SUBJECT_PREFIX") or DEFAULT_SUBJECT_PREFIX,
            live_prefix=os.environ.get("PLANTANGENET_LIVE_PREFIX") or DEFAULT_LIVE_PREFIX,
            max_bytes=limits.get("max_bytes"),
            max_msgs=limits.get("max_msgs"),
            replicas=limits.get("replicas"),
        )
        return config.with_timeouts(timeouts_from_env())

    def with_timeouts(self, timeouts: Mapping[str, float]) -> JournalConfig:
        """This config with the append timeouts in ``timeouts`` (by field name) set."""
        return dataclasses.replace(
            self,
            ack_timeout=timeouts.get("ack_timeout", self.ack_timeout),
            attempt_timeout=timeouts.get("attempt_timeout", self.attempt_timeout),
        )


#: Environment variables of the append timeouts (see :class:`JournalConfig`).
TIMEOUT_ENV = {
    "ack_timeout": "PLANTANGENET_ACK_TIMEOUT",
    "attempt_timeout": "PLANTANGENET_ATTEMPT_TIMEOUT",
}


def parse_seconds(name: str, text: str) -> float:
    """A positive number of seconds (``ack_timeout``, ``attempt_timeout``) from text.

    :raises InvalidJournalConfig: naming ``name``, if ``text`` is not one.
    """
    try:
        seconds = float(text)
    except ValueError:
        raise InvalidJournalConfig(f"{name}: not a number of seconds: {text!r}") from None
    if not 0 < seconds < 86_400:
        raise InvalidJournalConfig(f"{name}: must be positive and under a day, got {text!r}")
    return seconds


def timeouts_from_env() -> dict[str, float]:
    """The append timeouts set in the environment (:data:`TIMEOUT_ENV`), by field name.

    :raises InvalidJournalConfig: naming the variable, if one is not usable.
    """
    found: dict[str, float] = {}
    for name, variable in TIMEOUT_ENV.items():
        text = os.environ.get(variable)
        if text:
            try:
                found[name] = parse_seconds(name, text)
            except InvalidJournalConfig as exc:
                raise InvalidJournalConfig(f"${variable}: {exc}") from None
    return found


def parse_limit(name: str, text: str) -> int:
    """A :class:`JournalConfig` limit (``max_bytes``, ``max_msgs`` or ``replicas``) from text.

    ``max_bytes`` takes bytes or a number with K, M, G or T (powers of 1024: ``512M``,
    ``10G``); ``max_bytes`` and ``max_msgs`` take ``-1`` for no limit.

    :raises InvalidJournalConfig: not a number, or out of range (the message says why).
    """
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or (match.group(2) and name != "max_bytes"):
        kind = "a size" if name == "max_bytes" else "a whole number"
        raise InvalidJournalConfig(f"{name}: not {kind}: {text!r}; {_LIMIT_RULES[name]}")
    unit = (match.group(2) or "").upper()
    scale = 1 << 10 * ("KMGT".index(unit) + 1) if unit else 1
    value = int(match.group(1)) * scale
    problem = _limit_problem(name, value)
    if problem is not None:
        raise InvalidJournalConfig(f"{name}: {problem}")
    return value


def stream_limits_from_env() -> dict[str, int]:
    """The limits set by ``PLANTANGENET_MAX_BYTES``, ``PLANTANGENET_MAX_MSGS`` and
    ``PLANTANGENET_REPLICAS`` (those set and not empty), by :class:`JournalConfig` field.

    :raises InvalidJournalConfig: naming the variable whose value is not usable.
    """
    limits = {}
    for name, variable in LIMIT_ENV.items():
        text = os.environ.get(variable)
        if text:
            try:
                limits[name] = parse_limit(name, text)
            except InvalidJournalConfig as exc:
                raise InvalidJournalConfig(f"${variable}: {exc}") from None
    return limits


_LIMIT_RULES = {
    "max_bytes": "use -1 (no limit) or a positive number of bytes, e.g. 1073741824, 512M, 10G",
    "max_msgs": "use -1 (no limit) or a positive whole number",
    "replicas": f"use 1 to {MAX_REPLICAS} (3 on a cluster)",
}


def _limit_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a usable ``name`` (``None``: it is)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"not a whole number: {value!r}; {_LIMIT_RULES[name]}"
    if name == "replicas":
        return (
            None if 1 <= value <= MAX_REPLICAS else f"{value} is out of range; {_LIMIT_RULES[name]}"
        )
    if value == 0:
        return f"0 would mean no limit to the server; {_LIMIT_RULES[name]}"
    if value < -1:
        return f"{value} is negative; {_LIMIT_RULES[name]}"
    if value >= 1 << 63:
        return f"{value} is too large; {_LIMIT_RULES[name]}"
    return None


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


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPage:
    """Stored events of one session, read by :meth:`Journal.page`.

    :param messages: ``(stream sequence, payload)`` of each message, in order;
        the payloads are the stored bytes, undecoded.
    :param last_sequence: the session's last stored sequence, as known when the
        page was read (0: the session has no events). With ``more`` false and
        messages in the page it is the page's last sequence; otherwise it comes
        from :meth:`Journal.last_sequence`, asked right after the page.
    :param more: whether the session had messages after the page when it was
        read; ask for the next page from ``messages[-1][0] + 1`` (or, for an
        empty page, from the same sequence again).
    """

    messages: tuple[tuple[int, bytes], ...]
    last_sequence: int
    more: bool


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
        try:
            await self.js.add_stream(config)
            exists = False
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with another config
                raise JournalError(f"cannot create stream {cfg.stream}: {exc.description}") from exc
            exists = True
        except nats.errors.Error as exc:
            raise JournalError(f"cannot create stream {cfg.stream}: {exc}") from exc
        if exists:
            await self._adopt_stream(config.subjects or [], self._republish())
        await self._wait_for_leader()

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

    async def _append_with_retries(
        self,
        session_id: str,
        subject: str,
        msg_ids: Sequence[str],
        expected_sequence: int,
        payloads: Sequence[bytes],
        commit: dict[str, str],
    ) -> int:
        """Send an append until it is acknowledged; the stream sequence of its last message.

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
        deadline = loop.time() + config.ack_timeout
        # A late append asks the server whether its store can write: a full disk is never
        # answered (see JournalConfig.monitor_url), so it is named, not waited out.
        probe_at = loop.time() + STORE_PROBE_AFTER
        attempts = 0
        timed_out = asked = False
        pause = _RETRY_PAUSE
        while True:
            attempts += 1
            attempt = min(config.attempt_timeout, max(deadline - loop.time(), 0.001))
            try:
                reply = await self._send_append(
                    subject, msg_ids, expected_sequence, payloads, commit, attempt
                )
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
            if b"error" in reply.data and _error_code(reply.data) == _BATCH_INCOMPLETE:
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
                return int(_parse_ack(reply.data, expected_sequence, session_id)["seq"])
            try:
                ack = _parse_ack(reply.data, expected_sequence, session_id, retried=True)
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
    ) -> Any:
        """Publish an append (an atomic batch if several) and wait for its acknowledgement."""
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
        return await self.nc.request(subject, payloads[last], timeout, headers=headers)

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
        done: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        def fail(problem: str) -> None:
            if not done.done():
                done.set_exception(JournalError(f"read of {session_id}: {problem}"))

        async def collect(msg: Msg) -> None:
            if done.done():
                return
            headers = msg.headers or {}
            if "Status" in headers:  # end of batch, or no message at all
                done.set_result(headers)
                return
            try:
                sequence = int(headers["Nats-Sequence"])
                previous = int(headers.get("Nats-Last-Sequence", "0"))
            except (KeyError, ValueError):
                fail(f"not a stored message (headers {headers})")
                return
            if headers.get("Nats-Subject") != subject or sequence < start:
                fail(f"got sequence {sequence} of {headers.get('Nats-Subject')}")
                return
            # Nats-Last-Sequence: the batch's message before this one (0 for the first).
            intact = previous == messages[-1][0] < sequence if messages else previous < start
            if not intact:
                fail(f"message lost in transit before sequence {sequence}")
                return
            messages.append((sequence, msg.data))

        timeout = self.config.api_timeout
        try:
            sub = await self.nc.subscribe(self.nc.new_inbox(), cb=collect)
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
        status = end.get("Status")
        if status == "204":  # end of batch
            try:
                pending = int(end.get("Nats-Num-Pending", "0"))
                last_sent = int(end.get("Nats-Last-Sequence", "0"))
            except ValueError:
                raise JournalError(f"read of {session_id}: unreadable end {end}") from None
            if messages and last_sent != messages[-1][0]:
                raise JournalError(
                    f"read of {session_id}: message lost in transit after sequence "
                    f"{messages[-1][0]} (the server sent up to {last_sent})"
                )
            return messages, pending
        if status == "404" and not messages:  # nothing matches
            return [], 0
        if status == "503":  # no responders
            await self._stream_exists(f"cannot read {session_id}")
            raise JournalError(
                f"cannot read {session_id}: stream {stream} answered no direct get (its "
                "replicas may be electing a leader, or it does not allow direct gets)"
            )
        description = end.get("Description", "")
        raise JournalError(
            f"read of {session_id} refused by stream {stream}: status {status} "
            f"{description}".rstrip()
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
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        decode = self.codec.decode
        count = 0
        unreadable: dict[int, DecodeError] = {}
        revision: int | None = 0 if from_sequence <= 1 else None  # of the last one yielded
        rows = self._ordered(session_id, from_sequence, stop_at=end)
        async with contextlib.aclosing(rows):
            async for seq, data in rows:
                count += 1
                if progress is not None and count % 1000 == 0:
                    progress(seq, end)
                try:
                    envelope = decode(data, sequence=seq)
                except (UnknownEventType, UnknownEventVersion):
                    raise  # an event of newer code (or a missing upcaster): not this log's damage
                except DecodeError as exc:
                    unreadable[seq] = exc
                    continue
                if unreadable and type(envelope.event) is MessageQuarantined:
                    unreadable.pop(envelope.event.sequence, None)
                if envelope.revision is None:
                    if revision is None:
                        revision = await self.count_before(session_id, seq)
                    envelope = envelope.with_revision(revision + 1)
                revision = envelope.revision
                yield envelope
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
        end = await self.last_sequence(session_id)
        if to_sequence is not None:
            end = min(end, to_sequence)
        if end < max(from_sequence, 1):
            return
        rows = self._ordered(session_id, from_sequence, stop_at=end)
        async with contextlib.aclosing(rows):
            async for item in rows:
                yield item

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

    async def _stream_exists(self, what: str) -> None:
        """:raises JournalError: naming the stream, if it does not exist."""
        try:
            await self.js.stream_info(self.config.stream)
        except nats.js.errors.NotFoundError:
            raise JournalError(f"{what}: stream {self.config.stream} does not exist") from None
        except nats.errors.Error:
            pass

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
            async for seq, data in rows:
                envelope = self.codec.decode(data, sequence=seq)
                if envelope.revision is None:
                    if revision is None:
                        revision = await self.count_before(session_id, seq)
                    envelope = envelope.with_revision(revision + 1)
                revision = envelope.revision
                yield envelope

    async def _ordered(
        self, session_id: str, from_sequence: int | None, *, stop_at: int | None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
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
                    if not inbox.messages and not await inbox.wait(loop, idle_timeout):
                        break  # stalled, or a quiet tail: start a fresh consumer
                    msg = inbox.messages.popleft()
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
        arrived: Callable[[Msg], Awaitable[None]],
    ) -> Any:
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
                cb=arrived,
                manual_ack=True,
                flow_control=True,
                idle_heartbeat=5.0,
                # The ack window bounds what is in flight; these only must not be lower.
                pending_msgs_limit=max(4 * self.config.read_window, 65_536),
                pending_bytes_limit=256 * 1024 * 1024,
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


async def store_problem(monitor_url: str, timeout: float = 2.0) -> str | None:
    """What the server's ``/healthz`` says is wrong with its store, or ``None``.

    A store that cannot write (nats-server: "JetStream stream ... write error: ... no
    space left on device"), or JetStream disabled, is a problem; a healthy server, an
    unhealthy one for other reasons, or no answer is not (``None``).
    """

    def get() -> str | None:
        try:
            with urllib.request.urlopen(monitor_url.rstrip("/") + "/healthz", timeout=timeout):
                return None  # 200: healthy
        except urllib.error.HTTPError as exc:
            body = exc.read(4096)
        except (OSError, ValueError):
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            return None
        error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        lowered = error.lower()
        if any(word in lowered for word in _WRITE_FAILURES):
            return error
        if "jetstream" in lowered and any(word in lowered for word in _JETSTREAM_OFF):
            return f"{error}: JetStream is off on the server"
        return None

    return await asyncio.to_thread(get)


class _Unavailable(JournalError):
    """The server could not be reached or had no JetStream answer yet (worth retrying).

    So is a request that failed while the connection was lost and regained (a
    server restart). Other failures to create a reader (a timeout on a steady
    connection: typically a permission the user lacks) are reported at once.
    """


_MICROSECOND = timedelta(microseconds=1)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive time is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _shift(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, held at the ends of the calendar."""
    try:
        return moment + delta
    except OverflowError:
        return (
            datetime.max.replace(tzinfo=UTC)
            if delta > timedelta(0)
            else datetime.min.replace(tzinfo=UTC)
        )


def _msg_ids(session_id: str, envelopes: Sequence[Envelope]) -> list[str]:
    """Each message's ``Nats-Msg-Id``: ``session:command:index`` (a retry is stored once).

    A command id is an idempotency key of its principal: the id of a remote principal's
    command carries the principal (``session:principal:command:index``), so another
    principal sending the same id is not taken for a retry of it.
    """
    ids: list[str] = []
    index: dict[tuple[str | None, str], int] = {}
    for envelope in envelopes:
        principal = envelope.principal
        key = (principal, envelope.causation_id)
        n = index.get(key, 0)
        index[key] = n + 1
        if principal is None or principal == OPERATOR:
            ids.append(f"{session_id}:{envelope.causation_id}:{n}")
        else:
            ids.append(f"{session_id}:{principal}:{envelope.causation_id}:{n}")
    return ids


def _error_code(data: bytes) -> int | None:
    """The ``err_code`` of a JetStream error answer, if it is one."""
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("err_code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


def _msg_id(headers: dict[str, str] | None) -> str | None:
    return (headers or {}).get("Nats-Msg-Id")


def _parse_ack(
    data: bytes, expected: int, session_id: str, *, retried: bool = False
) -> dict[str, Any]:
    """The acknowledgement of an append, or its typed error.

    ``retried``: the answer to a retry of an append that timed out. A duplicate
    acknowledgement at a sequence after ``expected`` is then the earlier attempt's,
    i.e. success; otherwise it is :class:`DuplicateCommand` (a new command reusing
    a stored command's id).
    """
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
    if ack.get("duplicate") and not (retried and int(ack.get("seq", 0)) > expected):
        raise DuplicateCommand(f"session {session_id}: command already stored at {ack.get('seq')}")
    if "seq" not in ack:
        raise JournalError(f"acknowledgement without a sequence: {ack}")
    return ack


class _Inbox:
    """Where one reader's consumer delivers: a queue its generator takes from in order.

    nats-py's subscription task hands each message to :meth:`arrived`, which only
    queues it (and wakes the reader if it waits). The reader waits only when the
    queue is empty, with one timer per wait, so a fast log costs no wait at all.
    """

    __slots__ = ("messages", "waiter")

    def __init__(self) -> None:
        self.messages: collections.deque[Msg] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    async def arrived(self, msg: Msg) -> None:
        self.messages.append(msg)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message; whether one came."""
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return bool(self.messages)


def _wake(waiter: asyncio.Future[None]) -> None:
    """End a reader's wait for its next message (the wait timed out)."""
    if not waiter.done():
        waiter.set_result(None)


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
