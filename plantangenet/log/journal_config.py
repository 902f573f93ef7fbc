"""How the journal is configured: the stream, its subjects, limits and timeouts.

:class:`JournalConfig` names the stream and its subject prefixes and sets its limits,
replicas and the appends' timeouts, from arguments or from the environment
(:meth:`JournalConfig.from_env`, :func:`stream_limits_from_env`,
:func:`timeouts_from_env`). Every name is importable from :mod:`plantangenet.log.journal` too.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from plantangenet.errors import JournalError

#: Where :class:`JournalConfig` finds the server's monitoring URL unless given one.
MONITOR_URL_ENV = "PLANTANGENET_MONITOR_URL"


#: The stream and subject prefix used unless configured otherwise.
DEFAULT_STREAM = "PLANTANGENET"


DEFAULT_SUBJECT_PREFIX = "plantangenet.events"


#: The session id that names every session's subject at once (a wildcard), for the few
#: stream-wide readers (:meth:`Journal.read_raw`, :meth:`Journal.last_sequence`).
ALL_SESSIONS = "*"


#: Where the stream republishes each stored event for live readers: ``<prefix>.<session_id>``.
DEFAULT_LIVE_PREFIX = "plantangenet.live"


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
        API (tamper resistance; :mod:`plantangenet.log.verify` detects it anyway).
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
