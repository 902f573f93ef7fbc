"""The bot client: everything a bot needs to work with sessions, over a NATS connection.

>>> async def bot(url: str) -> None:                                # doctest: +SKIP
...     async with await BotClient.connect(url, agent_id="tide-bot") as client:
...         await client.open("harbour", {"purpose": "tides"})
...         await client.attach("harbour", kind="bot", name="Tide bot")
...         await client.add_cursor("harbour", "tide", ["ocean.tide"], 0, 60)
...         async for envelope in client.events("harbour", from_sequence=1):
...             print(envelope.sequence, envelope.type_name)

Commands are requests (see :mod:`plantangenet.wire.protocol`); a failure reply is
raised as its typed :class:`~plantangenet.errors.PlantangenetError`. A request
whose reply is lost is retried with the same command id, so it is applied once.
Command ids hold 128 random bits: nobody can guess the next one.

A bot never uses the JetStream API of the service's stream: it reads a session's
history in pages the service answers (``history`` requests), and follows it live
on ``<live prefix>.<session_id>``, where the stream republishes every stored
event (with its sequence and the sequence of the session's event before it, so
a missed event is noticed and fetched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgpack
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from plantangenet.domain.checks import check_id
from plantangenet.errors import (
    DecodeError,
    JournalError,
    PlantangenetError,
    ReplyTooLarge,
    SessionAlreadyStarted,
)
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import Envelope
from plantangenet.log.ack_inbox import AckInbox
from plantangenet.log.journal import JournalConfig
from plantangenet.log.session_replay import replay
from plantangenet.nats.connect import DeniedSubjects
from plantangenet.nats.connect import connect as connect_nats
from plantangenet.projections.views import plain
from plantangenet.wire.client_commands import SessionCommands
from plantangenet.wire.protocol import (
    BATCH,
    DEFAULT_COMMAND_PREFIX,
    MAX_BATCH_COMMANDS,
    MAX_HISTORY_PAGE,
    PROTOCOL_VERSION,
    command_subject,
    decode_reply,
    encode_batch,
    encode_request,
    error_from,
    request_map,
)

log = logging.getLogger("plantangenet.wire.client")

#: Seconds a live follower waits for an event before it asks the service whether it
#: missed some (a reconnect may lose live messages; the log never does).
LIVE_CHECK_INTERVAL = 5.0


def new_command_id() -> str:
    """A fresh command id: 128 random bits (32 hex characters), unguessable."""
    return secrets.token_hex(16)


class BotClient(SessionCommands):
    """An asyncio client for one bot.

    :param nc: a connected nats-py client.
    :param agent_id: the agent this bot acts as; commands are issued on its
        behalf (``issued_by``), so the session's policy applies to them.
    :param journal: the log's subjects (for the live subject; default
        :meth:`JournalConfig.from_env`).
    :param timeout: seconds to wait for each reply.
    :param retries: how often a request with no reply is sent again (same id).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        agent_id: str | None = None,
        command_prefix: str = DEFAULT_COMMAND_PREFIX,
        journal: JournalConfig | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        codec: EventCodec = CODEC,
    ) -> None:
        self.nc = nc
        self.agent_id = agent_id
        self.command_prefix = command_prefix
        self.config = journal or JournalConfig.from_env()
        self.codec = codec
        self.timeout = timeout
        self.retries = retries
        self._owns_connection = False
        #: Replies come back on one subscription of the connection (the journal's own
        #: request path: no per-request timer, ``Msg``, queue or task; see
        #: :mod:`plantangenet.log.ack_inbox`).
        self._replies = AckInbox(nc)
        #: What the server refused this client's connection (set by :meth:`connect`).
        self._denied: DeniedSubjects | None = None

    @classmethod
    async def connect(cls, url: str, *, agent_id: str | None = None, **kwargs: Any) -> Self:
        """Connect to ``url`` (comma-separated for a cluster) and make a client.

        Keyword arguments other than the client's own go to ``nats.connect``
        (``user``, ``password``, ``inbox_prefix``...). A refused login raises
        :class:`~plantangenet.errors.JournalError` at once, a server that accepts no
        connection within 20 s too; once connected, the client reconnects for ever.
        """
        own = {
            k: kwargs.pop(k)
            for k in ("command_prefix", "journal", "timeout", "retries")
            if k in kwargs
        }
        if "user" in kwargs and "inbox_prefix" not in kwargs:
            # Bots may only subscribe to their own inboxes (see plantangenet.wire.access).
            kwargs["inbox_prefix"] = "_INBOX_" + str(kwargs["user"])
        # A refused login fails at once, an unreachable server within CONNECT_WAIT, as
        # the runtime's connections do (nats-py alone retried a wrong password for ~2
        # minutes, a traceback each time); once connected it reconnects for ever.
        name = kwargs.pop("name", "plantangenet-bot")
        denied = DeniedSubjects()
        nc = await connect_nats(url, kwargs, name=name, denied=denied)
        client = cls(nc, agent_id=agent_id, **own)
        client._denied = denied
        client._owns_connection = True
        return client

    async def close(self) -> None:
        """Close the connection if this client opened it."""
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- requests -------------------------------------------------------------------

    async def request(
        self,
        session_id: str,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        command_id: str | None = None,
        issued_by: str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one command (or query) and return the reply map; failures are raised.

        ``command_id`` defaults to a fresh :func:`new_command_id`; pass one only to retry a
        command yourself (the same id with other content is refused:
        ``idempotency_conflict``).
        """
        command_id = command_id or new_command_id()
        payload = encode_request(
            args or {},
            command_id=command_id,
            issued_by=issued_by,
            correlation_id=correlation_id,
            context=context,
        )
        return await self._send(session_id, name, payload)

    async def request_many(
        self,
        session_id: str,
        commands: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        issued_by: str | None = None,
        correlation_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any] | PlantangenetError]:
        """Send several commands in one request; per command, its reply map or its error.

        ``commands`` are ``(wire name, args)`` pairs (``query_cursor`` and queries go on
        their own); more than ``MAX_BATCH_COMMANDS`` go as several batches, one after
        the other. The session decides and stores them in order, each on its own,
        exactly as if each were sent with :meth:`request`: a refused command does not
        stop the ones after it, and the outcomes come back in the order sent, a typed
        :class:`~plantangenet.errors.PlantangenetError` for each refused one (not
        raised). A batch with no reply is sent again with the same command ids, so
        each command is applied at most once. A batch the service refuses as a whole
        (e.g. over 256 KiB) is raised.
        """
        results: list[dict[str, Any] | PlantangenetError] = []
        for lo in range(0, len(commands), MAX_BATCH_COMMANDS):
            chunk = commands[lo : lo + MAX_BATCH_COMMANDS]
            payload = encode_batch(
                [
                    (
                        name,
                        request_map(
                            args,
                            command_id=new_command_id(),
                            issued_by=issued_by,
                            correlation_id=correlation_id,
                            context=context,
                        ),
                    )
                    for name, args in chunk
                ]
            )
            reply = await self._send(session_id, BATCH, payload)
            outcomes = reply.get("outcomes")
            if not isinstance(outcomes, list) or len(outcomes) != len(chunk):
                raise DecodeError(f"a batch reply has one outcome per command: {reply!r:.200}")
            results += [
                o if isinstance(o, dict) and o.get("ok") else error_from(_error_of(o))
                for o in outcomes
            ]
        return results

    async def _send(self, session_id: str, name: str, payload: bytes) -> dict[str, Any]:
        # Refused here as the service would refuse it, before it becomes a subject: an
        # id with a space is no subject at all, one with a dot another session's.
        check_id(session_id, "session_id")
        subject = command_subject(session_id, name, self.command_prefix)
        for attempt in range(self.retries + 1):
            try:
                answer = await self._replies.request(subject, payload, self.timeout)
            except nats.errors.TimeoutError:
                denial = self._denied and self._denied.denial(subject)
                if denial:  # never carried: sending it again would be refused again
                    raise JournalError(
                        f"{name} on {session_id}: the NATS server refused it ({denial}); "
                        "this bot's account does not reach that session"
                    ) from None
                if attempt == self.retries:
                    raise JournalError(
                        f"no reply to {name} on {session_id} after {attempt + 1} tries"
                    ) from None
                continue  # same command id: the service applies it at most once
            except nats.errors.NoRespondersError:
                raise JournalError(f"no session service is serving {subject}") from None
            return decode_reply(answer)
        raise AssertionError("unreachable")

    async def open(
        self, session_id: str, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start the session, or join it if it exists; returns its state."""
        with contextlib.suppress(SessionAlreadyStarted):
            await self.request(session_id, "start", {"metadata": dict(metadata or {})})
        return await self.state(session_id)

    async def state(self, session_id: str) -> dict[str, Any]:
        """The session's current state (plain data).

        A state too large for one NATS message (``reply_too_large``) is folded
        from the session's events in the log instead, up to the sequence the
        service reported.
        """
        try:
            reply = await self.request(session_id, "state")
        except ReplyTooLarge as too_large:
            log_ = _PagedLog(self)
            folded = await replay(log_, session_id, to_sequence=too_large.sequence or None)
            whole: dict[str, Any] = plain(folded)
            return whole
        state: dict[str, Any] = reply["state"]
        return state

    # -- events ----------------------------------------------------------------------

    async def page(
        self, session_id: str, from_sequence: int = 1, max_events: int = MAX_HISTORY_PAGE
    ) -> tuple[list[tuple[int, bytes]], int, bool]:
        """One page of the session's stored events: ``([(sequence, bytes)...], last, more)``.

        ``last`` is the session's last stream sequence as the page saw it, ``more``
        whether events follow the page. The bytes are the stored envelopes
        (``CODEC.decode(data, sequence=...)``).
        """
        payload: bytes = msgpack.packb(
            {"v": PROTOCOL_VERSION, "from": from_sequence, "max": max_events}
        )
        reply = await self._send(session_id, "history", payload)
        events = reply.get("events")
        last, more = reply.get("last"), reply.get("more")
        if not isinstance(events, list) or type(last) is not int or type(more) is not bool:
            raise DecodeError(f"a history reply has events, last and more: {reply!r:.200}")
        page: list[tuple[int, bytes]] = []
        for item in events:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int
                and type(item[1]) is bytes
            ):
                raise DecodeError(f"a history event is [sequence, bytes]: {item!r:.200}")
            page.append((item[0], item[1]))
        return page, last, more

    async def stored(
        self, session_id: str, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """``(sequence, stored bytes)`` of the session's events, page by page, in order."""
        async for page in self.stored_pages(session_id, from_sequence, to_sequence):
            for item in page:
                yield item

    async def stored_pages(
        self, session_id: str, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """:meth:`stored` a page at a time (never an empty one)."""
        start = from_sequence
        empty = 0  # pages in a row that said "more" but held nothing
        while to_sequence is None or start <= to_sequence:
            page, _, more = await self.page(session_id, start)
            if to_sequence is not None and page and page[-1][0] > to_sequence:
                page = [item for item in page if item[0] <= to_sequence]
                more = False
            if page:
                start = page[-1][0] + 1
                yield page
            if not more:
                return
            if page:
                empty = 0
                continue
            # A replica behind the leader can answer an empty page while more is stored:
            # ask again (briefly), never end the history early.
            empty += 1
            if empty > 20:
                raise JournalError(
                    f"history of {session_id}: the service says more events follow sequence "
                    f"{start - 1} but sends none"
                )
            await asyncio.sleep(min(0.05 * empty, 0.5))

    async def history(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> list[Envelope]:
        """The session's events so far (those that decode; see :meth:`events`)."""
        stored = self.stored(session_id, from_sequence, to_sequence)
        return [e async for e in self._decoded(session_id, stored)]

    async def events(
        self, session_id: str, *, from_sequence: int | None = 1
    ) -> AsyncIterator[Envelope]:
        """The session's events from ``from_sequence`` (``None``: new ones only), then live.

        History comes in pages from the service, then each event as the stream
        republishes it on the session's live subject. Every event is yielded once,
        in order: an event missed live (a reconnect, a slow reader) is fetched from
        the log. A stored message that is not an event of the session is skipped
        (and logged): the session itself refuses commands until it is quarantined.
        Runs until the caller stops iterating.
        """
        check_id(session_id, "session_id")  # a wildcard would follow every session
        live: asyncio.Queue[Msg] = asyncio.Queue()

        async def take(msg: Msg) -> None:
            live.put_nowait(msg)

        sub = await self.nc.subscribe(f"{self.config.live_prefix}.{session_id}", cb=take)
        try:
            await self.nc.flush()
            if from_sequence is None:
                _, last, _ = await self.page(session_id, 1, 1)
                next_sequence = last + 1
            else:
                next_sequence = max(from_sequence, 1)
            while True:
                async for envelope in self._decoded(
                    session_id, self.stored(session_id, next_sequence)
                ):
                    next_sequence = (envelope.sequence or next_sequence) + 1
                    yield envelope
                # Caught up with the log: follow it live until an event is missing.
                while True:
                    try:
                        msg = await asyncio.wait_for(live.get(), LIVE_CHECK_INTERVAL)
                    except TimeoutError:
                        _, last, _ = await self.page(session_id, next_sequence, 1)
                        if last >= next_sequence:
                            break  # events were stored that never came live: read them
                        continue
                    sequence, previous = _live_sequences(msg)
                    if sequence < next_sequence:
                        continue  # delivered already (from a page)
                    if previous >= next_sequence:
                        live.put_nowait(msg)  # keep it; read what was missed first
                        break
                    next_sequence = sequence + 1
                    async for envelope in self._decoded(session_id, _one(sequence, msg.data)):
                        yield envelope
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _decoded(
        self, session_id: str, stored: AsyncIterator[tuple[int, bytes]]
    ) -> AsyncIterator[Envelope]:
        async for sequence, data in stored:
            try:
                envelope = self.codec.decode(data, sequence=sequence)
            except DecodeError as exc:
                log.warning("session %s: skipping the message at %d: %s", session_id, sequence, exc)
                continue
            if envelope.session_id != session_id:
                log.warning(
                    "session %s: skipping another session's event at %d", session_id, sequence
                )
                continue
            yield envelope


class _PagedLog:
    """What :func:`~plantangenet.log.session_replay.replay` reads of a journal, from
    history pages."""

    def __init__(self, client: BotClient) -> None:
        self.client = client
        self.codec = client.codec

    async def last_sequence(self, session_id: str) -> int:
        _, last, _ = await self.client.page(session_id, 1, 1)
        return last

    async def read_batches(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncGenerator[list[tuple[int, bytes]], None]:
        async for page in self.client.stored_pages(session_id, from_sequence, to_sequence):
            yield page


async def _one(sequence: int, data: bytes) -> AsyncIterator[tuple[int, bytes]]:
    yield sequence, data


def _live_sequences(msg: Msg) -> tuple[int, int]:
    """``(sequence, the session's previous sequence)`` of a republished event."""
    headers = msg.headers or {}
    try:
        return int(headers["Nats-Sequence"]), int(headers.get("Nats-Last-Sequence", 0))
    except (KeyError, ValueError):
        raise DecodeError(f"a live event without its sequence headers: {headers!r:.200}") from None


def _error_of(outcome: object) -> object:
    """The ``error`` map of a failed batch outcome (anything else reads as a bare error)."""
    return outcome.get("error") if isinstance(outcome, dict) else None
