"""Subscriptions whose messages go from nats-py's protocol parser straight to a function.

For every message it reads, nats-py parses the header block into a dict, builds a
``Msg``, puts it on the subscription's queue, and the subscription's task takes it off
and awaits the callback. For a reader of stored events that machinery costs more of the
event loop's thread than everything else the transport does: a push consumer read this
way delivered 2.2-2.5 times as many messages a second as the same read through a
callback (``docs/benchmarks.md``, issue 15). A *direct* subscription skips it: each
message goes, in the order it arrived and on the loop's thread, to a plain function
``handler(subject, reply, data, headers)`` (bytes; ``headers`` the raw header block,
status line included, or ``None``). The handler must be quick and must not block; what it raises is
logged, and the next message is handed over as usual.

How: the connection's ``_process_msg`` (what nats-py's parser calls with each message,
with these parameters since nats-py 2.0) is wrapped once per connection by a dispatcher
that looks the message's subscription id up among the direct ones, and hands every other
message to nats-py's own. The subscription itself is an ordinary nats-py one without a
callback (nothing is queued for it), so a reconnect subscribes it again like any other.
A connection without that method gets an ordinary callback instead, which rebuilds the
header block from nats-py's parsed headers: slower, with the same result.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

__all__ = [
    "NO_RESPONDERS",
    "DirectSubscription",
    "Handler",
    "header_value",
    "status_code",
    "status_of",
    "subscribe_direct",
]

log = logging.getLogger("plantangenet.log.deliveries")

#: ``handler(subject, reply, data, headers)``: a message's subject, its reply subject
#: (``b""`` if none), its payload, and its raw header block (``None`` if it has none).
Handler = Callable[[bytes, bytes, bytes, bytes | None], None]

_PARAMETERS = ["sid", "subject", "reply", "data", "headers"]
_STATUS = "Status"
#: The status the server answers a request with when nobody subscribes to its subject.
NO_RESPONDERS = b"503"
_DESCRIPTION = "Description"


class _Dispatch:
    """Wraps one connection's ``_process_msg``: direct subscriptions first, then nats-py's."""

    __slots__ = ("handlers", "original", "stats")

    def __init__(self, nc: Any) -> None:
        self.handlers: dict[int, Handler] = {}
        self.original: Callable[..., Awaitable[None]] = nc._process_msg
        self.stats: dict[str, int] = nc.stats

    async def process(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self.original(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception:
            log.exception("handler of direct subscription %d failed", sid)


def _dispatch(nc: Any) -> _Dispatch | None:
    """The connection's dispatcher, installed on first use; ``None`` if it cannot be."""
    process = getattr(nc, "_process_msg", None)
    owner = getattr(process, "__self__", None)
    if isinstance(owner, _Dispatch):
        return owner
    if process is None or not isinstance(getattr(nc, "stats", None), dict):
        return None
    try:
        if list(inspect.signature(process).parameters) != _PARAMETERS:
            return None
    except (TypeError, ValueError):
        return None
    dispatch = _Dispatch(nc)
    nc._process_msg = dispatch.process
    return dispatch


class DirectSubscription:
    """A subscription made by :func:`subscribe_direct`."""

    __slots__ = ("_dispatch", "_sub")

    def __init__(self, sub: Any, dispatch: _Dispatch | None) -> None:
        self._sub = sub
        self._dispatch = dispatch

    @property
    def direct(self) -> bool:
        """Whether messages skip nats-py's queue (False: the fallback callback)."""
        return self._dispatch is not None

    @property
    def subject(self) -> str:
        """The subject subscribed to."""
        subject: str = self._sub.subject
        return subject

    async def unsubscribe(self) -> None:
        """Stop the deliveries (nothing more reaches the handler)."""
        if self._dispatch is not None:
            self._dispatch.handlers.pop(self._sub._id, None)
        await self._sub.unsubscribe()


async def subscribe_direct(nc: Any, subject: str, handler: Handler) -> DirectSubscription:
    """Subscribe ``handler`` to ``subject`` on ``nc`` (see the module docs)."""
    dispatch = _dispatch(nc)
    if dispatch is None:
        sub = await nc.subscribe(subject, cb=_callback(handler))
        return DirectSubscription(sub, None)
    sub = await nc.subscribe(subject)
    dispatch.handlers[sub._id] = handler
    return DirectSubscription(sub, dispatch)


def _callback(handler: Handler) -> Callable[[Msg], Awaitable[None]]:
    async def arrived(msg: Msg) -> None:
        handler(msg.subject.encode(), msg.reply.encode(), msg.data, _header_block(msg.headers))

    return arrived


def _header_block(headers: dict[str, str] | None) -> bytes | None:
    """The header block nats-py parsed ``headers`` from (status line included)."""
    if not headers:
        return None
    status = headers.get(_STATUS)
    first = "NATS/1.0"
    if status:
        description = headers.get(_DESCRIPTION)
        first = f"NATS/1.0 {status} {description}" if description else f"NATS/1.0 {status}"
    lines = [first]
    lines.extend(f"{k}: {v}" for k, v in headers.items() if k not in (_STATUS, _DESCRIPTION))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (exact case) in a raw header block, or ``None``.

    Of a header given more than once, the last value (the one nats-py's parsed
    headers keep): a server adds its own headers after a stored message's.
    """
    start = headers.rfind(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = headers.find(b"\r\n", start)
    return headers[start : end if end >= 0 else len(headers)].strip()


def status_code(headers: bytes | None) -> bytes | None:
    """The status code of a status message (``b"100"``, ``b"503"``...), else ``None``."""
    status = status_of(headers)
    return None if status is None else status[0]


def status_of(headers: bytes | None) -> tuple[bytes, str] | None:
    """``(code, description)`` of a status message (``None``: an ordinary message).

    The server puts a status in the header block's first line (``NATS/1.0 503``,
    ``NATS/1.0 100 FlowControl Request``); ``Status`` and ``Description`` headers say
    the same (what nats-py makes of that line, and what a stand-in for the server may
    send).
    """
    if headers is None:
        return None
    if headers[8:9] == b" ":
        line = headers.split(b"\r\n", 1)[0][9:]
        code, _, description = line.partition(b" ")
        return code, description.decode(errors="replace").strip()
    given = header_value(headers, b"Status")
    if given is None:
        return None
    said = header_value(headers, b"Description") or b""
    return given, said.decode(errors="replace")
