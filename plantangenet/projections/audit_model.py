"""The audit read model: a session's audit trail kept in NATS KV, caught up from a checkpoint.

:func:`audit_model` answers ``plantangenet audit`` without replaying the
session: the entries :func:`~plantangenet.projections.audit.audit_entries`
derives from the log are stored in a KV bucket of their own
(:data:`AUDIT_BUCKET`, made with the machinery of
:mod:`plantangenet.projections.user`, allowing direct gets), and each call
folds only the events stored after the model's checkpoint, up to the session's
last event at that moment, before answering.

It is a read model, never the source of truth: derived from the log only,
disposable (:func:`reset_audit_model`), and rebuilt from scratch whenever what
is stored cannot be trusted (unreadable, of another version or stream, of
another log: the event at its position is not the one it recorded, a chunk
missing or not the one the checkpoint recorded).

Layout, per session, under ``audit.<stream>.<session>``:

* ``.c<i>``: chunk ``i`` of the entries, in log order. A chunk is closed at an
  event boundary once it holds :data:`CHUNK_ENTRIES` entries or about
  :data:`CHUNK_BYTES` bytes, so no value grows with the session; closed chunks
  never change. Columnar and dictionary-encoded (msgpack)::

      {"f": 1, "s": [strings...],        # every string of the chunk once (and nil)
       "c": [sequences, times (microseconds since the epoch, UTC), agents, command ids,
             commands, actions, resources, outcomes (0 allowed, 1 denied), statements,
             policy versions, reasons]}  # the string columns hold indices into "s",
                                         # but command ids (all distinct) are strings

* ``.head``: the checkpoint::

      {"f": 1, "version": 1, "stream": "PLANTANGENET", "session": "harbour",
       "position": 1234,                 # stream sequence of the last event folded
       "event": "9f0c...",               # its event id: checked against the log each time
       "chunks": [[entries, last sequence, blake2b digest], ...],
       "saved_at": 1732540000000000}

  Chunks are written before the head that lists them, and the head is written
  with a KV ``update`` guarded by the revision read, so a crash between the two
  leaves chunks the head does not trust, and of two writers only one head wins
  (the other catches up again from it). A listed chunk whose digest does not
  match is not used: the last (open) chunk is folded again from the end of the
  one before, any other means a rebuild.

Memory stays bounded: catching up holds one open chunk; a query reads the
chunks one at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors

from plantangenet.errors import DecodeError, JournalError
from plantangenet.events.envelope import CheckedEvent
from plantangenet.projections.audit import AuditEntry
from plantangenet.projections.audit_chunks import (
    _GROUP_COLUMN,
    _HEAD_KEYS,
    _OUTCOME,
    _OUTCOMES,
    _SEQ,
    _Chunk,
    _Damaged,
    _digest,
)
from plantangenet.projections.audit_chunks import AUDIT_BUCKET as AUDIT_BUCKET
from plantangenet.projections.audit_chunks import CHECKPOINT_EVERY as CHECKPOINT_EVERY
from plantangenet.projections.audit_chunks import CHUNK_BYTES as CHUNK_BYTES
from plantangenet.projections.audit_chunks import CHUNK_ENTRIES as CHUNK_ENTRIES
from plantangenet.projections.audit_chunks import GROUP_ATTRIBUTE as GROUP_ATTRIBUTE
from plantangenet.projections.audit_chunks import GROUP_BY as GROUP_BY
from plantangenet.projections.audit_chunks import MODEL_FORMAT as MODEL_FORMAT
from plantangenet.projections.audit_chunks import MODEL_VERSION as MODEL_VERSION
from plantangenet.projections.audit_chunks import AuditFilter as AuditFilter
from plantangenet.projections.audit_chunks import FoldedAudit as FoldedAudit
from plantangenet.projections.audit_chunks import GroupBy as GroupBy
from plantangenet.projections.log_view import KeptLog
from plantangenet.projections.user import (
    CheckpointConflict,
    CheckpointError,
    _bucket,
)
from plantangenet.projections.user_model import _pack, _unpack


def _prefix(journal: KeptLog, session_id: str) -> str:
    return f"audit.{journal.config.stream}.{session_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Store:
    """The KV bucket, and how to read it directly."""

    kv: Any
    js: Any
    stream: str  # the bucket's stream
    subjects: str  # the prefix of its keys' subjects
    direct: bool  # whether direct gets are allowed (and wanted)


async def _store(journal: KeptLog, bucket: str, *, create: bool = True) -> _Store | None:
    kv = await _bucket(
        journal, bucket, create=create, description="plantangenet audit read models", direct=True
    )
    if kv is None:
        return None
    stream = f"KV_{bucket}"
    try:
        info = await journal.js.stream_info(stream)
    except nats.errors.Error as exc:
        raise JournalError(f"cannot open KV bucket {bucket!r}: {exc}") from exc
    direct = bool(info.config.allow_direct) and not journal.config.leader_reads
    return _Store(kv, journal.js, stream, f"$KV.{bucket}.", direct)


async def _get(store: _Store, key: str, *, direct: bool = False) -> bytes | None:
    """The value of ``key`` (``None``: none, or deleted); ``direct``: a direct get, which
    any replica answers and which comes as the raw bytes (not base64 in JSON)."""
    try:
        if not direct:
            entry = await store.kv.get(key)
            return bytes(entry.value or b"")
        msg = await store.js.get_msg(store.stream, subject=store.subjects + key, direct=True)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.NotFoundError):
        return None
    except nats.errors.Error as exc:
        raise JournalError(f"cannot read the audit read model ({key}): {exc}") from exc
    if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
        return None
    return bytes(msg.data or b"")


async def _put(kv: Any, key: str, value: bytes) -> None:
    try:
        await kv.put(key, value)
    except nats.errors.Error as exc:
        raise JournalError(f"cannot save the audit read model ({key}): {exc}") from exc


class _Writes:
    """Chunk puts in flight while the fold goes on: at most ``limit`` at once (the
    oldest awaited first), all of them stored before a head may list them."""

    def __init__(self, kv: Any, limit: int = 4) -> None:
        self._kv = kv
        self._limit = limit
        self._pending: collections.deque[asyncio.Task[None]] = collections.deque()

    async def put(self, key: str, data: bytes) -> None:
        if len(self._pending) >= self._limit:
            await self._pending.popleft()
        self._pending.append(asyncio.ensure_future(_put(self._kv, key, data)))

    async def settled(self) -> None:
        """Once every put so far is stored (:class:`JournalError` if one was not)."""
        while self._pending:
            await self._pending.popleft()

    async def abandoned(self) -> None:
        """Cancel what is still in flight (and take its outcome, so none is left unread)."""
        pending, self._pending = list(self._pending), collections.deque()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _head(
    kv: Any, journal: KeptLog, session_id: str
) -> tuple[int, str, list[_ChunkMeta], int, bool]:
    """``(position, id of the event there, chunks, KV revision, usable)`` of the stored
    checkpoint (none: ``0, "", []``)."""
    key = f"{_prefix(journal, session_id)}.head"
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError as exc:
        # A reset leaves a marker: the next save must follow its revision.
        revision = exc.entry.revision if exc.entry is not None else 0
        return 0, "", [], int(revision or 0), True
    except nats.errors.Error as exc:
        raise JournalError(f"cannot read the audit read model ({key}): {exc}") from exc
    revision = int(entry.revision or 0)
    try:
        raw = _unpack(entry.value or b"")
        if type(raw) is not dict or raw.keys() != _HEAD_KEYS:
            raise _Damaged("not a checkpoint")
        if (raw["f"], raw["version"], raw["stream"], raw["session"]) != (
            MODEL_FORMAT,
            MODEL_VERSION,
            journal.config.stream,
            session_id,
        ):
            raise _Damaged("of another format, version, stream or session")
        position = raw["position"]
        if type(position) is not int or position < 0:
            raise _Damaged("a malformed position")
        event = raw["event"]
        if type(event) is not str or (position > 0) != bool(event):
            raise _Damaged("a malformed event id")
        chunks = [_ChunkMeta(int(n), int(last), str(d)) for n, last, d in raw["chunks"]]
        if any(m.entries < 1 or not 0 < m.last_sequence <= position for m in chunks):
            raise _Damaged("malformed chunks")
    except Exception:
        return 0, "", [], revision, False
    return position, event, chunks, revision, True


async def _still_there(
    journal: KeptLog, session_id: str, position: int, event: str, last: int
) -> bool:
    """Whether the session's event at stream sequence ``position`` is still ``event``
    (one direct get): a checkpoint applies only to the log it was made from."""
    if position > last:
        return False
    page = await journal.page(session_id, position, max_events=1)
    if not page.messages or page.messages[0][0] != position:
        return False
    try:
        return journal.codec.decode(page.messages[0][1], sequence=position).event_id == event
    except DecodeError:
        return False


async def _save_head(
    kv: Any,
    journal: KeptLog,
    session_id: str,
    position: int,
    event: str,
    chunks: list[_ChunkMeta],
    revision: int,
) -> int:
    key = f"{_prefix(journal, session_id)}.head"
    value = _pack(
        {
            "f": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "stream": journal.config.stream,
            "session": session_id,
            "position": position,
            "event": event,
            "chunks": [[m.entries, m.last_sequence, m.digest] for m in chunks],
            "saved_at": time.time_ns() // 1000,
        }
    )
    try:
        new_revision: int = await kv.update(key, value, last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        raise CheckpointConflict(
            f"the audit read model of {session_id!r} moved on from revision {revision}",
            projection="audit",
            expected=revision,
        ) from None
    except nats.errors.Error as exc:
        raise JournalError(f"cannot save the audit read model ({key}): {exc}") from exc
    return new_revision


async def audit_model(
    journal: KeptLog,
    session_id: str,
    *,
    bucket: str = AUDIT_BUCKET,
    chunk_entries: int = CHUNK_ENTRIES,
    chunk_bytes: int = CHUNK_BYTES,
    checkpoint_every: int = CHECKPOINT_EVERY,
    stop_after: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditModel:
    """The session's audit read model, caught up to the session's last event now.

    Folds the events after the stored checkpoint (all of them the first time,
    or when the stored model cannot be used) and saves chunks and checkpoint
    as it goes. If another writer saves first, this one catches up again from
    its checkpoint (three times at most, then its answer stands unsaved).

    :param stop_after: stop after folding this many events without saving what
        was folded since the last checkpoint (a simulated crash, for tests).
    :param progress: ``progress(sequence, last_sequence)`` every 1,000 events.
    """
    if type(chunk_entries) is not int or chunk_entries < 1:
        raise ValueError("chunk_entries must be a positive integer")
    if type(checkpoint_every) is not int or checkpoint_every < 1:
        raise ValueError("checkpoint_every must be a positive integer")
    store = await _store(journal, bucket)
    assert store is not None
    for attempt in range(5):
        try:
            return await _catch_up(
                store,
                journal,
                session_id,
                chunk_entries,
                chunk_bytes,
                checkpoint_every,
                stop_after,
                progress,
            )
        except CheckpointConflict:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _catch_up(
    store: _Store,
    journal: KeptLog,
    session_id: str,
    chunk_entries: int,
    chunk_bytes: int,
    checkpoint_every: int,
    stop_after: int | None,
    progress: Callable[[int, int], None] | None,
) -> AuditModel:
    prefix = _prefix(journal, session_id)
    kv = store.kv
    position, event, chunks, revision, usable = await _head(kv, journal, session_id)
    last = await journal.last_sequence(session_id)
    rebuilt = not usable or position == 0
    if position and not await _still_there(journal, session_id, position, event, last):
        # The stream was replaced (or the session's history rewritten): nothing stored applies.
        position, chunks, rebuilt = 0, [], True
    tail = _Chunk()
    if chunks:
        meta = chunks[-1]
        data = await _get(store, f"{prefix}.c{len(chunks) - 1}", direct=store.direct)
        try:
            if data is None or _digest(data) != meta.digest:
                raise _Damaged("the open chunk is not the one recorded")
            loaded = _Chunk.unpack(data, to_extend=True)
            if len(loaded) != meta.entries:
                raise _Damaged("the open chunk has another length")
        except _Damaged:
            # Fold it again from the end of the chunk before.
            chunks.pop()
            position = chunks[-1].last_sequence if chunks else 0
            rebuilt = rebuilt or not chunks
        else:
            if not loaded.full(chunk_entries, chunk_bytes):
                chunks.pop()
                tail = loaded
    saved_position = position if usable else -1
    folded = unsaved = 0
    changed = False  # the open chunk differs from the stored one
    stored_digest = _digest(tail.pack()) if len(tail) else ""
    writes = _Writes(kv)

    async def checkpoint() -> None:
        nonlocal revision, saved_position, unsaved, changed, stored_digest
        await writes.settled()  # every chunk the head lists is stored first
        metas = list(chunks)
        if len(tail):
            if changed:
                data = tail.pack()
                await _put(kv, f"{prefix}.c{len(chunks)}", data)
                tail_digest = stored_digest = _digest(data)
            else:
                tail_digest = stored_digest
            metas.append(_ChunkMeta(len(tail), tail.columns[_SEQ][-1], tail_digest))
        revision = await _save_head(kv, journal, session_id, position, event, metas, revision)
        saved_position = position
        unsaved = 0
        changed = False

    stopped = False
    try:
        if last > position:
            reading = journal.read_event_batches(
                session_id,
                from_sequence=position + 1,
                to_sequence=last,
                progress=progress,
                checked=True,  # no envelope built for what the entries need no more of
            )
            async with contextlib.aclosing(reading) as batches:
                async for batch in batches:
                    for item in batch:
                        if isinstance(item, CheckedEvent):
                            changed = tail.fold_checked(item) or changed
                        elif tail.fold(item):
                            changed = True
                        position = item.sequence or position
                        event = item.event_id
                        folded += 1
                        unsaved += 1
                        if tail.full(chunk_entries, chunk_bytes):
                            data = tail.pack()  # stored while the fold goes on, before any head
                            await writes.put(f"{prefix}.c{len(chunks)}", data)
                            meta = _ChunkMeta(len(tail), tail.columns[_SEQ][-1], _digest(data))
                            chunks.append(meta)
                            tail = _Chunk()
                            changed = False
                        if unsaved >= checkpoint_every:
                            await checkpoint()
                        if stop_after is not None and folded >= stop_after:
                            stopped = True
                            break
                    if stopped:
                        break
        if not stopped and position != saved_position:
            await checkpoint()
    finally:
        await writes.abandoned()  # (a crash, or a failure: nothing more is written)
    return AuditModel(
        session_id,
        position,
        sum(m.entries for m in chunks) + len(tail),
        folded,
        rebuilt,
        position == saved_position,
        store,
        prefix,
        tuple(chunks),
        tail,
    )


async def reset_audit_model(
    journal: KeptLog, session_id: str, *, bucket: str = AUDIT_BUCKET
) -> bool:
    """Discard the session's audit read model (its checkpoint and chunks); whether there was one.

    The next :func:`audit_model` rebuilds it from the log.
    """
    store = await _store(journal, bucket, create=False)
    if store is None:
        return False
    kv = store.kv
    prefix = _prefix(journal, session_id)
    existed = (await _get(store, f"{prefix}.head")) is not None
    _, _, chunks, _, _ = await _head(kv, journal, session_id)
    try:
        if existed:
            await kv.purge(f"{prefix}.head")
        for i in range(len(chunks)):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await kv.purge(f"{prefix}.c{i}")
    except nats.errors.Error as exc:
        raise JournalError(f"cannot reset the audit read model of {session_id!r}: {exc}") from exc
    return existed


async def query_audit(
    journal: KeptLog,
    session_id: str,
    answer: Callable[[AuditModel], Any],
    **options: Any,
) -> Any:
    """``await answer(model)`` on the caught-up model; if a stored chunk turns out
    unusable meanwhile, the model is reset, rebuilt and asked again."""
    model = await audit_model(journal, session_id, **options)
    try:
        return await answer(model)
    except _Damaged:
        await reset_audit_model(journal, session_id, bucket=options.get("bucket", AUDIT_BUCKET))
        model = await audit_model(journal, session_id, **options)
        return await answer(model)


#: The filter that passes every entry (the default of the queries).
_EVERYTHING = AuditFilter()


@dataclasses.dataclass(frozen=True, slots=True)
class _ChunkMeta:
    entries: int
    last_sequence: int
    digest: str


@dataclasses.dataclass(slots=True)
class AuditModel:
    """A session's audit read model, caught up to ``position`` (a stream sequence).

    ``folded`` counts the events this catch-up folded, ``rebuilt`` whether it
    started from scratch (no model yet, or one that could not be used), ``saved``
    whether its checkpoint was written (false if another writer's won).
    """

    session_id: str
    position: int
    entries: int
    folded: int
    rebuilt: bool
    saved: bool
    _store: _Store
    _prefix: str
    _chunks: tuple[_ChunkMeta, ...]
    _tail: _Chunk

    async def _each_chunk(self) -> AsyncIterator[_Chunk]:
        for i, meta in enumerate(self._chunks):
            key = f"{self._prefix}.c{i}"
            data = await _get(self._store, key, direct=self._store.direct)
            if self._store.direct and (data is None or _digest(data) != meta.digest):
                data = await _get(self._store, key)  # a replica behind the leader: ask the leader
            if data is None or _digest(data) != meta.digest:
                raise _Damaged(f"chunk {i} is missing or not the one recorded")
            chunk = _Chunk.unpack(data)
            if len(chunk) != meta.entries:
                raise _Damaged(f"chunk {i} holds {len(chunk)} entries, not {meta.entries}")
            yield chunk
        yield self._tail

    async def entries_matching(self, where: AuditFilter = _EVERYTHING) -> AsyncIterator[AuditEntry]:
        """The entries that pass ``where``, in log order, a chunk at a time."""
        async for chunk in self._each_chunk():
            entry = chunk.entry
            for i in where.rows(chunk):
                yield entry(i)

    async def all_entries(self, where: AuditFilter = _EVERYTHING) -> list[AuditEntry]:
        """:meth:`entries_matching` as a list."""
        return [e async for e in self.entries_matching(where)]

    async def counts(
        self, group_by: GroupBy, where: AuditFilter = _EVERYTHING
    ) -> collections.Counter[str | None]:
        """How many entries that pass ``where`` each value of ``group_by`` has
        (agent ``None``: the session's owner; statement ``None``: none named)."""
        if group_by not in _GROUP_COLUMN:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
        column = _GROUP_COLUMN[group_by]
        total: collections.Counter[str | None] = collections.Counter()
        everything = where.empty
        async for chunk in self._each_chunk():
            values = chunk.columns[column]
            counted = collections.Counter(
                values if everything else [values[i] for i in where.rows(chunk)]
            )
            names: Sequence[str | None] = _OUTCOMES if column == _OUTCOME else chunk.strings
            for code, n in counted.items():
                total[names[code]] += n
        return total


__all__ = [
    "AUDIT_BUCKET",
    "CHUNK_BYTES",
    "CHUNK_ENTRIES",
    "GROUP_BY",
    "MODEL_VERSION",
    "AuditFilter",
    "AuditModel",
    "CheckpointError",
    "FoldedAudit",
    "GroupBy",
    "audit_model",
    "query_audit",
    "reset_audit_model",
]
