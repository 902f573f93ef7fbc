"""The cross-session correlation index: a correlation id -> where its events are.

A request can reach several sessions (commands to each carrying the same
``correlation_id``). :class:`CorrelationIndex` keeps, in a JetStream key-value
bucket next to the stream (``<stream>_CORRELATIONS``), for each correlation id
the ``(session, stream sequence)`` of every event carrying it, and a
*checkpoint*: the last stream sequence indexed. :meth:`CorrelationIndex.catch_up`
reads the stream's events after the checkpoint -- one ordered read of the
session subjects, decoding each event once -- and adds them, a chunk at a time
(the chunk's keys, then the checkpoint); so the first use indexes the whole
stream once, and each later one only what was stored since.

Writes are compare-and-set on each key's revision and merge (a set of
``(session, sequence)``), so concurrent catch-ups, or one that stopped between
a chunk's keys and its checkpoint, only redo work: an entry is never lost nor
doubled. The checkpoint only moves forward.

Keys are ``c.`` and the SHA-256 of the correlation id (hex; any text is a
valid id, not a valid key); the value is JSON ``{"correlation_id", "events":
[[session, sequence], ...]}`` in stream order, the id compared on lookup. One
correlation id's entry must fit in a message (about 20,000 events at the
server's default 1 MB).

:func:`plantangenet.timetravel.history.why` uses it with ``across=True`` when given an
index (the command line's ``why --across``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from plantangenet.creating import created
from plantangenet.errors import (
    DecodeError,
    JournalError,
    UnknownEventType,
    UnknownEventVersion,
)
from plantangenet.events.envelope import Envelope
from plantangenet.log.journal import ALL_SESSIONS, Journal

#: Suffix of the bucket's name (after the stream's).
BUCKET_SUFFIX = "_CORRELATIONS"
CHECKPOINT = "checkpoint"
#: Events indexed per chunk (keys written, then the checkpoint).
CHUNK = 10_000
_TRIES = 50


def correlation_key(correlation_id: str) -> str:
    """The bucket key of ``correlation_id``."""
    return "c." + hashlib.sha256(correlation_id.encode()).hexdigest()


class CorrelationIndex:
    """The correlation index of ``journal``'s stream (see the module docs)."""

    def __init__(self, journal: Journal, *, chunk: int = CHUNK) -> None:
        self.journal = journal
        self.bucket_name = journal.config.stream + BUCKET_SUFFIX
        self.chunk = max(1, chunk)
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            js = self.journal.js
            try:
                self._kv = await js.key_value(self.bucket_name)
            except nats.js.errors.BucketNotFoundError:
                try:
                    self._kv = await created(
                        lambda: js.create_key_value(bucket=self.bucket_name, history=1),
                        self.bucket_name,
                    )
                except nats.errors.Error as exc:
                    raise JournalError(f"cannot create {self.bucket_name}: {exc}") from exc
            except nats.errors.Error as exc:
                raise JournalError(f"cannot open {self.bucket_name}: {exc}") from exc
        return self._kv

    async def checkpoint(self) -> int:
        """The last stream sequence indexed (0: none yet)."""
        entry = await self._get(CHECKPOINT)
        return 0 if entry is None else int(json.loads(entry[0]))

    async def catch_up(self) -> int:
        """Index the events stored after the checkpoint; the new checkpoint."""
        start = await self.checkpoint()
        end = await self.journal.last_sequence(ALL_SESSIONS)  # the last event of any session
        if end <= start:
            return start
        pending: dict[str, list[tuple[str, int]]] = {}
        count = last = 0
        rows = self.journal.read_raw(ALL_SESSIONS, from_sequence=start + 1, to_sequence=end)
        async with contextlib.aclosing(rows):
            async for sequence, payload in rows:
                last = sequence
                try:
                    envelope = self.journal.codec.decode(payload, sequence=sequence)
                except (UnknownEventType, UnknownEventVersion):
                    raise  # an event of newer code: index it with newer code
                except DecodeError:
                    pass  # damage: not an event of any request (verify reports it)
                else:
                    pending.setdefault(envelope.correlation_id, []).append(
                        (envelope.session_id, sequence)
                    )
                count += 1
                if count % self.chunk == 0:
                    await self._flush(pending, last)
                    pending = {}
        await self._flush(pending, max(last, end))
        return max(last, end)

    async def _flush(self, pending: dict[str, list[tuple[str, int]]], checkpoint: int) -> None:
        for correlation_id, events in pending.items():
            await self._merge(correlation_id, events)
        await self._advance(checkpoint)

    async def lookup(self, correlation_id: str, *, catch_up: bool = True) -> list[tuple[str, int]]:
        """``(session, sequence)`` of every event with ``correlation_id``, in stream order.

        Caught up first unless ``catch_up`` is false (then as of the checkpoint).
        """
        if catch_up:
            await self.catch_up()
        entry = await self._get(correlation_key(correlation_id))
        if entry is None:
            return []
        data = json.loads(entry[0])
        if data.get("correlation_id") != correlation_id:
            raise JournalError(f"{self.bucket_name}: key collision for {correlation_id!r}")
        return [(str(s), int(q)) for s, q in data["events"]]

    async def events(
        self, correlation_id: str, *, exclude: Iterable[str] = (), catch_up: bool = True
    ) -> tuple[Envelope, ...]:
        """The events with ``correlation_id`` (but those of ``exclude`` sessions), in order.

        Each is fetched by its stream sequence (a direct get).
        """
        skip = set(exclude)
        found: list[Envelope] = []
        for session_id, sequence in await self.lookup(correlation_id, catch_up=catch_up):
            if session_id in skip:
                continue
            try:
                msg = await self.journal.js.get_msg(
                    self.journal.config.stream, sequence, direct=True
                )
            except nats.js.errors.NotFoundError:
                continue  # gone from the stream (a limit, a deletion): verify reports it
            except nats.errors.Error as exc:
                raise JournalError(f"cannot read sequence {sequence}: {exc}") from exc
            envelope = self.journal.codec.decode(msg.data or b"", sequence=sequence)
            found.append(envelope)
        return tuple(found)

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except nats.js.errors.NotFoundError:  # never written, or deleted (purged)
            return None
        except nats.errors.Error as exc:
            raise JournalError(f"cannot read {self.bucket_name} {key}: {exc}") from exc
        return (entry.value or b"", entry.revision or 0)

    async def _put(self, key: str, value: bytes, revision: int | None) -> bool:
        """Write ``key`` if it is still at ``revision`` (``None``: absent); whether it was."""
        kv = await self._bucket()
        try:
            if revision is None:
                await kv.create(key, value)
            else:
                await kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.errors.Error as exc:
            raise JournalError(f"cannot write {self.bucket_name} {key}: {exc}") from exc
        return True

    async def _merge(self, correlation_id: str, events: list[tuple[str, int]]) -> None:
        key = correlation_key(correlation_id)
        for _ in range(_TRIES):
            entry = await self._get(key)
            known: set[tuple[str, int]] = set()
            if entry is not None:
                data: dict[str, Any] = json.loads(entry[0])
                known = {(str(s), int(q)) for s, q in data["events"]}
            merged = sorted(known | set(events), key=lambda pair: pair[1])
            if entry is not None and len(merged) == len(known):
                return  # nothing new (another catch-up got there first)
            value = json.dumps({"correlation_id": correlation_id, "events": merged}).encode()
            if await self._put(key, value, None if entry is None else entry[1]):
                return
        raise JournalError(f"{self.bucket_name}: {key} keeps changing; retry")

    async def _advance(self, checkpoint: int) -> None:
        for _ in range(_TRIES):
            entry = await self._get(CHECKPOINT)
            if entry is not None and int(json.loads(entry[0])) >= checkpoint:
                return
            revision = None if entry is None else entry[1]
            if await self._put(CHECKPOINT, str(checkpoint).encode(), revision):
                return
        raise JournalError(f"{self.bucket_name}: the checkpoint keeps changing; retry")
