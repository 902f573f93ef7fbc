"""The bot client: everything a bot needs to work with sessions, over a NATS connection.

>>> async def bot(url: str) -> None:                                # doctest: +SKIP
...     async with await BotClient.connect(url, agent_id="tide-bot") as client:
...         await client.open("harbour", {"purpose": "tides"})
...         await client.attach("harbour", kind="bot", name="Tide bot")
...         await client.add_cursor("harbour", "tide", ["ocean.tide"], 0, 60)
...         async for envelope in client.events("harbour", from_sequence=1):
...             print(envelope.sequence, envelope.type_name)

Commands are requests (see :mod:`plantangenet.protocol`); a failure reply is
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
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgpack
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from plantangenet.disclosure import Sample
from plantangenet.errors import (
    DecodeError,
    JournalError,
    PlantangenetError,
    ReplyTooLarge,
    SessionAlreadyStarted,
)
from plantangenet.events.codec import CODEC, EventCodec
from plantangenet.events.envelope import Envelope
from plantangenet.journal import JournalConfig
from plantangenet.protocol import (
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
from plantangenet.replay import replay
from plantangenet.runtime import redact
from plantangenet.views import plain

log = logging.getLogger("plantangenet.client")

#: Seconds a live follower waits for an event before it asks the service whether it
#: missed some (a reconnect may lose live messages; the log never does).
LIVE_CHECK_INTERVAL = 5.0


def new_command_id() -> str:
    """A fresh command id: 128 random bits (32 hex characters), unguessable."""
    return secrets.token_hex(16)


class BotClient:
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

    @classmethod
    async def connect(cls, url: str, *, agent_id: str | None = None, **kwargs: Any) -> Self:
        """Connect to ``url`` (comma-separated for a cluster) and make a client.

        Keyword arguments other than the client's own go to ``nats.connect``
        (``user``, ``password``, ``inbox_prefix``...).
        """
        own = {
            k: kwargs.pop(k)
            for k in ("command_prefix", "journal", "timeout", "retries")
            if k in kwargs
        }
        if "user" in kwargs and "inbox_prefix" not in kwargs:
            # Bots may only subscribe to their own inboxes (see plantangenet.access).
            kwargs["inbox_prefix"] = "_INBOX_" + str(kwargs["user"])
        try:
            nc = await nats.connect(servers=[u.strip() for u in url.split(",")], **kwargs)
        except (OSError, nats.errors.Error) as exc:
            raise JournalError(f"cannot connect to NATS at {redact(url)}: {exc}") from exc
        client = cls(nc, agent_id=agent_id, **own)
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
        subject = command_subject(session_id, name, self.command_prefix)
        for attempt in range(self.retries + 1):
            try:
                msg = await self.nc.request(subject, payload, timeout=self.timeout)
            except nats.errors.TimeoutError:
                if attempt == self.retries:
                    raise JournalError(
                        f"no reply to {name} on {session_id} after {attempt + 1} tries"
                    ) from None
                continue  # same command id: the service applies it at most once
            except nats.errors.NoRespondersError:
                raise JournalError(f"no session service is serving {subject}") from None
            return decode_reply(msg.data)
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

    async def attach(
        self,
        session_id: str,
        agent_id: str | None = None,
        *,
        kind: str = "bot",
        name: str = "",
        **kw: Any,
    ) -> dict[str, Any]:
        """Attach this bot (or ``agent_id``) to the session.

        Sent in the owner form (the session's owners only) unless ``issued_by`` is given: a
        bot joining a session it does not own attaches itself with ``issued_by=<its agent>``,
        as the session's policy allows (see docs/protocol.md, "Who may do what").
        """
        agent = agent_id or self.agent_id
        return await self.request(
            session_id, "attach", {"agent_id": agent, "kind": kind, "name": name}, **kw
        )

    async def detach(
        self, session_id: str, agent_id: str | None = None, reason: str = "detached", **kw: Any
    ) -> dict[str, Any]:
        """Detach this bot (or ``agent_id``).

        Detaching itself, the bot speaks as its own agent (an agent may always leave);
        detaching another is the owner form (owners only) unless ``issued_by`` says otherwise.
        """
        agent = agent_id or self.agent_id
        if agent == self.agent_id:
            kw.setdefault("issued_by", self.agent_id)
        return await self.request(session_id, "detach", {"agent_id": agent, "reason": reason}, **kw)

    async def add_cursor(
        self,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Open a cursor for this bot (``resolution``: the time step of the data it wants)."""
        region = (axes, start, end, resolution)
        return await self._cursor("add_cursor", session_id, cursor_id, *region, **kw)

    async def move_cursor(
        self,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Give this bot's cursor a new region (move, resize, change its resolution)."""
        region = (axes, start, end, resolution)
        return await self._cursor("move_cursor", session_id, cursor_id, *region, **kw)

    async def _cursor(
        self,
        name: str,
        session_id: str,
        cursor_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        resolution: float | None,
        **kw: Any,
    ) -> dict[str, Any]:
        kw.setdefault("issued_by", self.agent_id)
        args = {
            "agent_id": self.agent_id,
            "cursor_id": cursor_id,
            "axes": list(axes),
            "start": start,
            "end": end,
            "resolution": resolution,
        }
        return await self.request(session_id, name, args, **kw)

    async def remove_cursor(self, session_id: str, cursor_id: str, **kw: Any) -> dict[str, Any]:
        """Close this bot's cursor."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"agent_id": self.agent_id, "cursor_id": cursor_id}
        return await self.request(session_id, "remove_cursor", args, **kw)

    async def change_metadata(
        self,
        session_id: str,
        changed: Mapping[str, Any] | None = None,
        removed: Sequence[str] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        """Set and/or remove metadata keys (on this bot's behalf)."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"changed": dict(changed or {}), "removed": list(removed)}
        return await self.request(session_id, "change_metadata", args, **kw)

    async def change_policy(
        self,
        session_id: str,
        *,
        replace: Sequence[Any] | None = None,
        add: Sequence[Any] = (),
        remove: Sequence[str] = (),
        **kw: Any,
    ) -> dict[str, Any]:
        """Change the session's policy (as the owner unless ``issued_by`` is given)."""
        args: dict[str, Any] = {"add": list(add), "remove": list(remove)}
        if replace is not None:
            args["replace"] = list(replace)
        return await self.request(session_id, "change_policy", args, **kw)

    async def query_cursor(
        self, session_id: str, cursor_id: str, compositor: str, **kw: Any
    ) -> list[Sample]:
        """The data under this bot's cursor, as the session's policy discloses it to the bot.

        Priced queries are paid from the bot's dust (``InsufficientDust`` if it cannot).
        """
        kw.setdefault("issued_by", self.agent_id)
        args = {"agent_id": self.agent_id, "cursor_id": cursor_id, "compositor": compositor}
        reply = await self.request(session_id, "query_cursor", args, **kw)
        return [
            Sample(s["axis"], s["time"], s["value"], s.get("fields") or {})
            for s in reply.get("samples", ())
        ]

    async def grant(
        self, session_id: str, target: str, amount: int, memo: str = "", **kw: Any
    ) -> dict[str, Any]:
        """Give ``amount`` of this bot's dust to ``target`` (an agent or the treasury)."""
        kw.setdefault("issued_by", self.agent_id)
        args = {"source": self.agent_id, "target": target, "amount": amount, "memo": memo}
        return await self.request(session_id, "grant", args, **kw)

    # -- chems: negotiated disclosure between sessions ------------------------------
    #
    # A chem step is sent to the bot's own session (the acting side; the bot must own it,
    # or send it as one of its agents the policy allows ``chem.<step>``); the service
    # records it there, then in the peer session. A step that failed half-way (the peer's
    # write) is completed by sending it again with the same ``command_id``.

    async def propose_chem(
        self,
        session_id: str,
        peer: str,
        chem_id: str,
        terms: Sequence[Any],
        **kw: Any,
    ) -> dict[str, Any]:
        """``session_id`` proposes ``terms`` (``ChemClause`` objects or maps of their fields) to
        the session ``peer``; on a chem the peer proposed, a counter-proposal."""
        args = {"chem_id": chem_id, "peer": peer, "terms": list(terms)}
        return await self.request(session_id, "propose_chem", args, **kw)

    async def accept_chem(self, session_id: str, chem_id: str, **kw: Any) -> dict[str, Any]:
        """``session_id`` accepts the peer's latest proposal: the chem is active in both."""
        return await self.request(session_id, "accept_chem", {"chem_id": chem_id}, **kw)

    async def refuse_chem(
        self, session_id: str, chem_id: str, reason: str = "", **kw: Any
    ) -> dict[str, Any]:
        """``session_id`` refuses (or withdraws) the proposal: the negotiation ends in both."""
        args = {"chem_id": chem_id, "reason": reason}
        return await self.request(session_id, "refuse_chem", args, **kw)

    async def revoke_chem(
        self, session_id: str, chem_id: str, reason: str = "", **kw: Any
    ) -> dict[str, Any]:
        """``session_id`` revokes the active chem: it stops disclosing at once, in both."""
        args = {"chem_id": chem_id, "reason": reason}
        return await self.request(session_id, "revoke_chem", args, **kw)

    async def query_chem(
        self,
        session_id: str,
        chem_id: str,
        axes: Sequence[str],
        start: float,
        end: float,
        compositor: str,
        resolution: float | None = None,
        **kw: Any,
    ) -> list[Sample]:
        """This bot asks the chem's peer for data, as the peer's terms disclose it.

        ``session_id`` records (and charges this bot for) the query; the peer's
        ``compositor`` answers. A refusal of the peer is refunded.
        """
        kw.setdefault("issued_by", self.agent_id)
        args = {
            "chem_id": chem_id,
            "agent_id": self.agent_id,
            "axes": list(axes),
            "start": start,
            "end": end,
            "compositor": compositor,
            "resolution": resolution,
        }
        reply = await self.request(session_id, "query_chem", args, **kw)
        return [
            Sample(s["axis"], s["time"], s["value"], s.get("fields") or {})
            for s in reply.get("samples", ())
        ]

    async def end(self, session_id: str, reason: str = "ended", **kw: Any) -> dict[str, Any]:
        """End the session."""
        return await self.request(session_id, "end", {"reason": reason}, **kw)

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
        start = from_sequence
        empty = 0  # pages in a row that said "more" but held nothing
        while to_sequence is None or start <= to_sequence:
            page, _, more = await self.page(session_id, start)
            for sequence, data in page:
                if to_sequence is not None and sequence > to_sequence:
                    return
                yield sequence, data
                start = sequence + 1
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
    """The part of a journal :func:`~plantangenet.replay.replay` reads, over ``history`` pages."""

    def __init__(self, client: BotClient) -> None:
        self.client = client
        self.codec = client.codec

    async def last_sequence(self, session_id: str) -> int:
        _, last, _ = await self.client.page(session_id, 1, 1)
        return last

    async def read_raw(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        async for item in self.client.stored(session_id, from_sequence, to_sequence):
            yield item


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
