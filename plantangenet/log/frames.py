"""Wire frames for the messages of a JetStream atomic batch (the journal's appends).

An append of several events is one atomic batch: every message but the last is a
plain publish carrying ``Nats-Msg-Id``, ``Nats-Batch-Id`` and ``Nats-Batch-Sequence``
(the first also ``Nats-Expected-Last-Subject-Sequence``); the last commits it and is
a request for the acknowledgement. nats-py's ``publish`` builds each message's
header block key by key (validating and escaping every value) at ~5 µs a message,
a large part of an append's cost on the event-loop thread. :func:`batch_frames`
builds the same ``HPUB`` frames for all of a batch's non-final messages in one
pass, and :func:`send_frames` queues them as one write on the connection, in order
with everything else published on it.

The frames are built only from values that need no escaping (visible ASCII, no
spaces, for the subject and the message ids; the other values are digits and a
hex id). When a value does not qualify, the connection is not up, a payload is
over the server's limit, or the installed nats-py lacks the write queue these use
(``Client._send_command``, there since nats-py 2.0), the journal publishes through
nats-py's ``publish`` instead: that path raises nats-py's own errors.

:func:`request_frame` builds the commit's frame the same way, with the reply subject
its acknowledgement comes back on (see :mod:`plantangenet.log.ack_inbox`), and a bot
client's request; :func:`publish_frame` a message without a reply subject (the
session service's replies).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

_VISIBLE = re.compile(r"[!-~]+")
#: What a header name may hold (an HTTP token: what nats-py's publish accepts).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def batch_frames(
    subject: str,
    msg_ids: Sequence[str],
    batch_id: str,
    expected_sequence: int,
    payloads: Sequence[bytes],
) -> bytes | None:
    """The ``HPUB`` frames of a batch's messages before its commit, or ``None``.

    ``payloads[i]`` becomes batch message ``i + 1`` with ``msg_ids[i]``. ``None``
    means some value is not plain visible ASCII: publish through nats-py instead.
    """
    visible = _VISIBLE.fullmatch
    if not visible(subject) or not visible(batch_id):
        return None
    target = subject.encode()
    parts: list[bytes] = []
    for i, payload in enumerate(payloads):
        msg_id = msg_ids[i]
        if not visible(msg_id):
            return None
        expected = f"Nats-Expected-Last-Subject-Sequence: {expected_sequence}\r\n" if i == 0 else ""
        header = (
            f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n{expected}"
            f"Nats-Batch-Id: {batch_id}\r\nNats-Batch-Sequence: {i + 1}\r\n\r\n"
        ).encode()
        size = len(header)
        parts.append(
            b"HPUB %s %d %d\r\n%s%s\r\n" % (target, size, size + len(payload), header, payload)
        )
    return b"".join(parts)


def request_frame(
    subject: str, reply: str, headers: Mapping[str, str] | None, payload: bytes
) -> bytes | None:
    """The ``HPUB`` frame of one message asking for an answer on ``reply`` (``PUB`` if
    ``headers`` is ``None``, as nats-py's ``publish``), or ``None``.

    Used for an append's last message (its commit, which JetStream acknowledges) and a
    bot's request. ``None`` means some name or value is not plain visible ASCII:
    publish through nats-py instead.
    """
    if not _VISIBLE.fullmatch(reply):
        return None
    return _frame(subject, reply.encode() + b" ", headers, payload)


def publish_frame(subject: str, headers: Mapping[str, str] | None, payload: bytes) -> bytes | None:
    """The frame of one message without a reply subject (the session service's replies),
    as :func:`request_frame`."""
    return _frame(subject, b"", headers, payload)


def _frame(
    subject: str, reply: bytes, headers: Mapping[str, str] | None, payload: bytes
) -> bytes | None:
    """``reply`` is the reply subject and a space, or empty."""
    visible = _VISIBLE.fullmatch
    if not visible(subject):
        return None
    if headers is None:
        return b"PUB %s %s%d\r\n%s\r\n" % (subject.encode(), reply, len(payload), payload)
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        if not _TOKEN.fullmatch(key) or not visible(value):
            return None
        lines.append(f"{key}: {value}\r\n")
    lines.append("\r\n")
    header = "".join(lines).encode()
    size = len(header)
    return b"HPUB %s %s%d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply,
        size,
        size + len(payload),
        header,
        payload,
    )


async def send_frames(
    nc: Any, frames: bytes, payloads: Sequence[bytes], *, flush: bool = False
) -> bool:
    """Queue ``frames`` (carrying ``payloads``) on ``nc`` as one write; False if it cannot.

    Nothing is sent when False is returned: the caller publishes the messages
    through nats-py instead. ``flush`` asks the connection's writer to send what is
    queued (as nats-py's ``publish`` does); without it the frames go with the next
    publish.
    """
    if flush and queue_frames(nc, frames, payloads):
        return True  # the common case: nothing to wait for
    send = getattr(nc, "_send_command", None)
    if send is None or not _sendable(nc, payloads):
        return False
    await send(frames)
    _count(nc, payloads)
    if flush:
        flush_queue = getattr(nc, "_flush_queue", None)
        if flush_queue is not None and flush_queue.empty():
            await nc._flush_pending()
    return True


def queue_frames(nc: Any, frames: bytes, payloads: Sequence[bytes]) -> bool:
    """:func:`send_frames` (with ``flush``) without waiting: ``frames`` join the
    connection's pending writes and its writer is woken, as nats-py's ``publish`` does;
    ``False`` (nothing queued) wherever that could have to wait (a full write buffer, a
    writer not running) or cannot be done: then the caller takes the waiting path."""
    pending = getattr(nc, "_pending", None)
    flush_queue = getattr(nc, "_flush_queue", None)
    flusher = getattr(nc, "_flusher_task", None)
    if (
        type(pending) is not list
        or flush_queue is None
        or flusher is None
        or flusher.done()
        or not _sendable(nc, payloads)
    ):
        return False
    size = len(frames)
    limit = getattr(nc, "_max_pending_size", 0)
    if limit > 0 and nc._pending_data_size + size > limit:
        return False  # nats-py would flush and wait first
    pending.append(frames)
    nc._pending_data_size += size
    _count(nc, payloads)
    if flush_queue.empty():
        flush_queue.put_nowait(asyncio.get_running_loop().create_future())
    return True


def _sendable(nc: Any, payloads: Sequence[bytes]) -> bool:
    """Whether nats-py's ``publish`` would send these payloads now (else it raises)."""
    return bool(
        nc.is_connected
        and not nc.is_draining_pubs
        and max(map(len, payloads), default=0) <= nc.max_payload
    )


def _count(nc: Any, payloads: Sequence[bytes]) -> None:
    """Count the messages sent, as nats-py's ``publish`` does."""
    stats = nc.stats
    stats["out_msgs"] += len(payloads)
    stats["out_bytes"] += sum(map(len, payloads))
