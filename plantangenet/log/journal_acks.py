"""What the journal sends and gets back: message ids, acknowledgements, error codes, pages.

The pieces of :mod:`plantangenet.log.journal` that read JetStream's answers
(:func:`_parse_ack`, the error codes, whether the store can write: :func:`store_problem`),
name what it writes (``Nats-Msg-Id``: :func:`_msg_ids`), and what an append or a page
returns (:class:`AppendResult`, :class:`HistoryPage`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from plantangenet.errors import (
    ConcurrencyError,
    DuplicateCommand,
    JournalError,
    StorageExhausted,
)
from plantangenet.events.envelope import OPERATOR, Envelope
from plantangenet.log.deliveries import header_value, status_code

_WRONG_LAST = 10071  # JSStreamWrongLastSequenceErrF

#: The status of a consumer's control messages (flow-control requests, idle heartbeats).
_CONTROL = b"100"


_BATCH_DUPLICATE = 10201  # atomic batch contains a duplicate message id


_BATCH_INCOMPLETE = 10176  # JSAtomicPublishIncompleteBatchErr: a batch message went missing


_INSUFFICIENT_RESOURCES = 10023  # JSInsufficientResourcesErr: the server's store is full


_STORE_FAILED = 10077  # JSStreamStoreFailedF: "maximum bytes exceeded", "no space left"...


_MAX_CONSUMERS = 10026  # JSMaximumConsumersLimitErr


#: What nats-server's ``/healthz`` says of a store that cannot write (a full disk: the
#: stream met a "critical write error" and refuses every write until restarted), or of
#: JetStream disabled after one.
_WRITE_FAILURES = ("write error", "no space left", "disk full", "insufficient")


_JETSTREAM_OFF = ("jetstream not enabled", "jetstream is not enabled", "disabled")


#: Store failures (err_code 10077) that mean "no room", not "broken".
_NO_ROOM = ("maximum bytes", "maximum messages", "no space left", "insufficient")


_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")


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


def stored_result(
    session_id: str,
    envelopes: Sequence[Envelope],
    payloads: Sequence[bytes],
    digests: Sequence[bytes] | None,
    last_seq: int,
) -> AppendResult:
    """The append's envelopes as stored: their sequences (the last is ``last_seq``) and
    digests (computed from the payloads where not given)."""
    first_seq = last_seq - len(envelopes) + 1
    if digests is None:
        digests = [
            e.digest or hashlib.sha256(p).digest() for e, p in zip(envelopes, payloads, strict=True)
        ]
    stored = tuple(
        e.stored_at(first_seq + i, digest)
        for i, (e, digest) in enumerate(zip(envelopes, digests, strict=True))
    )
    return AppendResult(session_id, stored)


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

    The reader's direct subscription (:mod:`plantangenet.log.deliveries`) hands each
    message to :meth:`arrived`, on the loop's thread, straight from nats-py's parser. A
    stored event is queued as ``(reply subject, payload)``; a flow-control request, or
    a heartbeat saying flow control stalled, queues the subject it wants an empty
    answer on (:attr:`answers`, sent by the reader); either wakes the reader if it
    waits. The reader waits only when both queues are empty, with one timer per wait,
    so a fast log costs no wait at all.
    """

    __slots__ = ("answers", "messages", "waiter")

    def __init__(self) -> None:
        self.messages: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.answers: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None

    def arrived(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if reply[:8] == b"$JS.ACK.":
            self.messages.append((reply, data))
        elif headers is not None and status_code(headers) == _CONTROL:
            target = reply or header_value(headers, b"Nats-Consumer-Stalled")
            if not target:
                return  # a plain idle heartbeat
            self.answers.append(target)
        else:
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message or an answer to send; whether one came."""
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return bool(self.messages or self.answers)


def _wake(waiter: asyncio.Future[None]) -> None:
    """End a reader's wait for its next message (the wait timed out)."""
    if not waiter.done():
        waiter.set_result(None)


def _sequences(reply: bytes) -> tuple[int, int]:
    """``(stream sequence, consumer sequence)`` from a JetStream message's reply subject."""
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
    # v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>...
    tokens = reply.split(b".")
    offset = 5 if len(tokens) == 9 else 7
    try:
        return int(tokens[offset]), int(tokens[offset + 1])
    except (IndexError, ValueError):
        raise JournalError(f"not a JetStream message (reply subject {reply!r})") from None
