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

import collections
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import nats.errors
import nats.js.errors

from plantangenet.errors import DecodeError, JournalError
from plantangenet.events.envelope import Envelope
from plantangenet.events.policy_values import pattern_matches
from plantangenet.events.session import AccessDenied
from plantangenet.projections.audit import AuditEntry, Outcome
from plantangenet.projections.log_view import KeptLog
from plantangenet.projections.user import (
    CheckpointConflict,
    CheckpointError,
    _bucket,
    _pack,
    _unpack,
)

#: The KV bucket of the audit read models unless told otherwise.
AUDIT_BUCKET = "plantangenet-audit"
#: Bump when what the fold stores changes: older models are rebuilt.
MODEL_VERSION = 1
MODEL_FORMAT = 1
#: A chunk is closed (at an event boundary) at this many entries...
CHUNK_ENTRIES = 4096
#: ... or about this many bytes of strings and numbers.
CHUNK_BYTES = 256 * 1024
#: Events folded between two checkpoints (besides one per closed chunk and one at the end).
CHECKPOINT_EVERY = 20_000

GroupBy = Literal["agent", "action", "resource", "statement", "outcome"]
GROUP_BY: tuple[GroupBy, ...] = get_args(GroupBy)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTCOMES: tuple[Outcome, Outcome] = ("allowed", "denied")
# Column numbers.
_SEQ, _AT, _AGENT, _CID, _CMD, _ACTION, _RESOURCE, _OUTCOME, _STATEMENT, _POLICY, _REASON = range(
    11
)
_STRING_COLUMNS = (_AGENT, _CMD, _ACTION, _RESOURCE, _STATEMENT, _REASON)
_NUMBER_COLUMNS = tuple(n for n in range(11) if n != _CID)
_GROUP_COLUMN = {
    "agent": _AGENT,
    "action": _ACTION,
    "resource": _RESOURCE,
    "statement": _STATEMENT,
    "outcome": _OUTCOME,
}
_HEAD_KEYS = frozenset(
    {"f", "version", "stream", "session", "position", "event", "chunks", "saved_at"}
)


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Damaged(Exception):
    """What is stored cannot be used (the caller rebuilds)."""


class _Chunk:
    """Entries in columns, their strings dictionary-encoded."""

    __slots__ = ("columns", "index", "shapes", "size", "strings")

    def __init__(self) -> None:
        self.strings: list[str | None] = []
        self.index: dict[str | None, int] = {}
        #: Numbers, or codes of strings (command ids: the strings themselves, all distinct).
        self.columns: list[list[int]] = [[] for _ in range(11)]
        self.size = 0
        #: (outcome, agent, command, action, resource, statement, reason) -> codes
        self.shapes: dict[tuple[Any, ...], tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.columns[_SEQ])

    def _code(self, text: str | None) -> int:
        code = self.index.get(text)
        if code is None:
            code = self.index[text] = len(self.strings)
            self.strings.append(text)
            self.size += 8 + (len(text) if text else 0)
        return code

    def fold(self, envelope: Envelope) -> bool:
        """Add the entries ``envelope`` contributes; whether it contributed any.

        The same entries as :func:`~plantangenet.projections.audit.audit_entries`
        (the tests hold the two equal), written straight into the columns: no
        :class:`AuditEntry` is made on the way, which keeps a first build near
        the cost of a replay.
        """
        event = envelope.event
        if isinstance(event, AccessDenied):
            self._row(
                envelope,
                event.policy_version,
                (1, event.agent_id, event.command, event.action, event.resource),
                event.statement_id,
                event.reason,
            )
            return True
        auth = envelope.authorization
        if auth is None:
            return False
        added = False
        agent, command, action, version = (
            envelope.agent_id,
            envelope.type_name,
            auth.action,
            auth.policy_version,
        )
        for resource, statement in zip(auth.resources, auth.statements, strict=False):
            self._row(envelope, version, (0, agent, command, action, resource), statement, None)
            added = True
        return added

    def _row(
        self,
        envelope: Envelope,
        version: int,
        what: tuple[int, str | None, str, str, str],
        statement: str | None,
        reason: str | None,
    ) -> None:
        """One entry: ``what`` is (outcome, agent, command, action, resource); an allowed
        entry's reason (``None`` here) follows from its statement."""
        key = (*what, statement, reason)
        codes = self.shapes.get(key)
        if codes is None:
            code = self._code
            if reason is None:
                reason = (
                    "session owner" if statement is None else f"allowed by statement {statement!r}"
                )
            outcome, agent, command, action, resource = what
            codes = self.shapes[key] = (
                code(agent),
                code(command),
                code(action),
                code(resource),
                outcome,
                code(statement),
                code(reason),
            )
        (seqs, ats, agents, cids, commands, actions, resources, outcomes, statements, policies,
         reasons) = self.columns  # fmt: skip
        seqs.append(envelope.sequence or 0)
        ats.append(_micros(envelope.occurred_at))
        agents.append(codes[0])
        cid = envelope.causation_id
        cids.append(cid)  # type: ignore[arg-type]  # (a column of strings, not of codes)
        commands.append(codes[1])
        actions.append(codes[2])
        resources.append(codes[3])
        outcomes.append(codes[4])
        statements.append(codes[5])
        policies.append(version)
        reasons.append(codes[6])
        self.size += 40 + len(cid)

    def full(self, entries: int, size: int) -> bool:
        return len(self) >= entries or self.size >= size

    def pack(self) -> bytes:
        return _pack({"f": MODEL_FORMAT, "s": self.strings, "c": self.columns})

    @classmethod
    def unpack(cls, data: bytes, *, to_extend: bool = False) -> _Chunk:
        """The chunk stored as ``data`` (:class:`_Damaged` if it is none); ``to_extend``:
        ready for more entries (the index of its strings and its size computed)."""
        try:
            raw = _unpack(data)
            strings, columns = raw["s"], raw["c"]
            if raw["f"] != MODEL_FORMAT or type(strings) is not list or type(columns) is not list:
                raise _Damaged("not a chunk")
            if len(columns) != 11 or len({len(c) for c in columns}) != 1:
                raise _Damaged("columns of different lengths")
            if not all(s is None or type(s) is str for s in strings):
                raise _Damaged("a string that is not one")
            if not all(type(s) is str for s in columns[_CID]):
                raise _Damaged("a command id that is not a string")
            for n in _NUMBER_COLUMNS:
                if columns[n] and min(columns[n]) < 0:  # (types: min/max raise on others)
                    raise _Damaged("a negative number")
            for n in _STRING_COLUMNS:
                if columns[n] and max(columns[n]) >= len(strings):
                    raise _Damaged("a string index out of range")
            if columns[_OUTCOME] and max(columns[_OUTCOME]) > 1:
                raise _Damaged("an unknown outcome")
        except _Damaged:
            raise
        except Exception as exc:
            raise _Damaged(f"unreadable ({type(exc).__name__}: {exc})") from None
        chunk = cls()
        chunk.strings = strings
        chunk.columns = columns
        if to_extend:
            chunk.index = {s: i for i, s in enumerate(strings)}
            chunk.size = sum(8 + (len(s) if s else 0) for s in strings) + sum(
                40 + len(cid) for cid in columns[_CID]
            )
        return chunk

    def entry(self, i: int) -> AuditEntry:
        s = self.strings
        c = self.columns
        return AuditEntry(
            c[_SEQ][i],
            _EPOCH + timedelta(microseconds=c[_AT][i]),
            s[c[_AGENT][i]],
            c[_CID][i],  # type: ignore[arg-type]
            s[c[_CMD][i]],  # type: ignore[arg-type]
            s[c[_ACTION][i]],  # type: ignore[arg-type]
            s[c[_RESOURCE][i]],  # type: ignore[arg-type]
            _OUTCOMES[c[_OUTCOME][i]],
            s[c[_STATEMENT][i]],
            c[_POLICY][i],
            s[c[_REASON][i]],  # type: ignore[arg-type]
        )


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries a query keeps (as :meth:`Audit.query` does)."""

    agent: str | None = None
    action: str | None = None
    resource: str | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None

    def rows(self, chunk: _Chunk) -> Sequence[int]:
        """Indices of the chunk's entries that pass."""
        rows: Sequence[int] = range(len(chunk))
        c = chunk.columns
        strings = chunk.strings
        tests: list[tuple[int, Callable[[str | None], bool]]] = []
        agent, action, resource = self.agent, self.action, self.resource
        if agent is not None:
            tests.append((_AGENT, lambda s: s == agent))
        if action is not None:
            tests.append((_ACTION, lambda s: s is not None and pattern_matches(action, s)))
        if resource is not None:
            tests.append((_RESOURCE, lambda s: s is not None and pattern_matches(resource, s)))
        for column, test in tests:
            codes = {i for i, s in enumerate(strings) if test(s)}
            values = c[column]
            rows = [i for i in rows if values[i] in codes]
        if self.outcome is not None:
            wanted = _OUTCOMES.index(self.outcome)
            outcomes = c[_OUTCOME]
            rows = [i for i in rows if outcomes[i] == wanted]
        at = c[_AT]
        if self.since is not None:
            since = _micros(self.since)
            rows = [i for i in rows if at[i] >= since]
        if self.until is not None:
            until = _micros(self.until)
            rows = [i for i in rows if at[i] <= until]
        return rows

    @property
    def empty(self) -> bool:
        return self == AuditFilter()

    def keeps(self, e: AuditEntry) -> bool:
        """Whether one entry passes (as :meth:`Audit.query` decides)."""
        return (
            (self.agent is None or e.agent_id == self.agent)
            and (self.action is None or pattern_matches(self.action, e.action))
            and (self.resource is None or pattern_matches(self.resource, e.resource))
            and (self.outcome is None or e.outcome == self.outcome)
            and (self.since is None or e.occurred_at >= self.since)
            and (self.until is None or e.occurred_at <= self.until)
        )


#: The AuditEntry attribute each ``group_by`` counts.
GROUP_ATTRIBUTE = {
    "agent": "agent_id",
    "action": "action",
    "resource": "resource",
    "statement": "statement_id",
    "outcome": "outcome",
}


class FoldedAudit:
    """The questions of :class:`AuditModel`, asked of entries in memory (a fold of the
    log): what ``plantangenet audit`` answers from when the read model cannot be kept."""

    def __init__(self, entries: Sequence[AuditEntry]) -> None:
        self.entries = entries

    async def entries_matching(
        self, where: AuditFilter = AuditFilter()
    ) -> AsyncIterator[AuditEntry]:
        for entry in self.entries:
            if where.keeps(entry):
                yield entry

    async def counts(
        self, group_by: GroupBy, where: AuditFilter = AuditFilter()
    ) -> collections.Counter[str | None]:
        attribute = GROUP_ATTRIBUTE[group_by]
        return collections.Counter(getattr(e, attribute) for e in self.entries if where.keeps(e))


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

    async def entries_matching(
        self, where: AuditFilter = AuditFilter()
    ) -> AsyncIterator[AuditEntry]:
        """The entries that pass ``where``, in log order, a chunk at a time."""
        async for chunk in self._each_chunk():
            entry = chunk.entry
            for i in where.rows(chunk):
                yield entry(i)

    async def all_entries(self, where: AuditFilter = AuditFilter()) -> list[AuditEntry]:
        """:meth:`entries_matching` as a list."""
        return [e async for e in self.entries_matching(where)]

    async def counts(
        self, group_by: GroupBy, where: AuditFilter = AuditFilter()
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

    async def checkpoint() -> None:
        nonlocal revision, saved_position, unsaved, changed, stored_digest
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
    if last > position:
        reading = journal.read(
            session_id, from_sequence=position + 1, to_sequence=last, progress=progress
        )
        async with contextlib.aclosing(reading) as envelopes:
            async for envelope in envelopes:
                if tail.fold(envelope):
                    changed = True
                position = envelope.sequence or position
                event = envelope.event_id
                folded += 1
                unsaved += 1
                if tail.full(chunk_entries, chunk_bytes):
                    data = tail.pack()
                    await _put(kv, f"{prefix}.c{len(chunks)}", data)
                    chunks.append(_ChunkMeta(len(tail), tail.columns[_SEQ][-1], _digest(data)))
                    tail = _Chunk()
                    changed = False
                    await checkpoint()
                elif unsaved >= checkpoint_every:
                    await checkpoint()
                if stop_after is not None and folded >= stop_after:
                    stopped = True
                    break
    if not stopped and position != saved_position:
        await checkpoint()
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
