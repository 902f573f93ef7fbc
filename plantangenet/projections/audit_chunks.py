"""The audit read model's values: entries in columnar chunks, filters, folded answers.

What :mod:`plantangenet.projections.audit_model` keeps in its KV bucket and answers
with: a session's audit entries as chunks of columns (:class:`AuditModel`), the
filter a query takes (:class:`AuditFilter`) and what it answers (:class:`FoldedAudit`).
Pure: the bucket, the log and catching up are in ``audit_model``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import msgspec

from plantangenet.events.envelope import Authorization, CheckedEvent, Envelope
from plantangenet.events.policy_values import pattern_matches
from plantangenet.events.session import AccessDenied
from plantangenet.projections.audit import AuditEntry, Outcome
from plantangenet.projections.user_model import _unpack

#: The KV bucket of the audit read models unless told otherwise.
AUDIT_BUCKET = "plantangenet-audit"


_encode = msgspec.msgpack.Encoder().encode


#: Bump when what the fold stores changes: older models are rebuilt.
MODEL_VERSION = 1


MODEL_FORMAT = 1


#: A chunk is closed (at an event boundary) at this many entries...
CHUNK_ENTRIES = 4096


#: ... or about this many bytes of strings and numbers.
CHUNK_BYTES = 256 * 1024


#: Events folded between two checkpoints (besides one at the end); closed chunks are
#: stored as they close, and a checkpoint lists those stored by then.
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


_DENIED = AccessDenied.type_name


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Damaged(Exception):
    """What is stored cannot be used (the caller rebuilds)."""


class _Chunk:
    """Entries in columns, their strings dictionary-encoded."""

    __slots__ = ("_allowed", "columns", "index", "shapes", "size", "strings")

    def __init__(self) -> None:
        self.strings: list[str | None] = []
        self.index: dict[str | None, int] = {}
        #: Numbers, or codes of strings (command ids: the strings themselves, all distinct).
        self.columns: list[list[int]] = [[] for _ in range(11)]
        self.size = 0
        #: (outcome, agent, command, action, resource, statement, reason) -> codes
        self.shapes: dict[tuple[Any, ...], tuple[int, ...]] = {}
        #: (command, agent, id of an authorization) -> (it, the codes of its entries)
        self._allowed: dict[tuple[Any, ...], tuple[Authorization, list[tuple[int, ...]]]] = {}

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
        return self._fold(
            envelope.sequence or 0,
            _micros(envelope.occurred_at),
            envelope.causation_id,
            envelope.type_name,
            envelope.agent_id,
            envelope.authorization,
            event if isinstance(event, AccessDenied) else None,
        )

    def fold_checked(self, checked: CheckedEvent) -> bool:
        """:meth:`fold` for an event read as its checked values (no envelope built)."""
        auth = checked.authorization
        if auth is not None:  # the common case first: an allowed command's entries, known
            found = self._allowed.get((checked.type_name, checked.agent_id, id(auth)))
            if found is not None and found[0] is auth and checked.type_name != _DENIED:
                rows = found[1]
                self._append(
                    rows,
                    checked.sequence or 0,
                    checked.occurred_at,
                    checked.causation_id,
                    auth.policy_version,
                )
                return bool(rows)
        return self._fold(
            checked.sequence or 0,
            checked.occurred_at,
            checked.causation_id,
            checked.type_name,
            checked.agent_id,
            auth,
            checked.fields if checked.type_name == _DENIED else None,
        )

    def _fold(
        self,
        sequence: int,
        at: int,
        causation_id: str,
        command: str,
        agent: str | None,
        auth: Authorization | None,
        denied: Any,
    ) -> bool:
        """The entries of one event stored at ``sequence``, ``at`` µs since the epoch:
        ``denied`` (an ``AccessDenied``'s fields) is one refused; else ``auth``'s."""
        if denied is not None:
            what = (1, denied.agent_id, denied.command, denied.action, denied.resource)
            rows = [self._codes(what, denied.statement_id, denied.reason)]
            version = denied.policy_version
        elif auth is None:
            return False
        else:
            # The entries' codes by command, agent and authorization: the codec hands out
            # one object per distinct stored authorization (kept here, its id stays its own).
            key = (command, agent, id(auth))
            found = self._allowed.get(key)
            if found is None or found[0] is not auth:
                action = auth.action
                found = self._allowed[key] = (
                    auth,
                    [
                        self._codes((0, agent, command, action, resource), statement, None)
                        for resource, statement in zip(
                            auth.resources, auth.statements, strict=False
                        )
                    ],
                )
            rows, version = found[1], auth.policy_version
        self._append(rows, sequence, at, causation_id, version)
        return bool(rows)

    def _append(
        self,
        rows: list[tuple[int, ...]],
        sequence: int,
        at: int,
        causation_id: str,
        version: int,
    ) -> None:
        """One entry per shape in ``rows`` (see :meth:`_codes`) for the event at ``sequence``."""
        (seqs, ats, agents, cids, commands, actions, resources, outcomes, statements, policies,
         reasons) = self.columns  # fmt: skip
        for codes in rows:
            seqs.append(sequence)
            ats.append(at)
            agents.append(codes[0])
            cids.append(causation_id)  # type: ignore[arg-type]  # (strings, not codes)
            commands.append(codes[1])
            actions.append(codes[2])
            resources.append(codes[3])
            outcomes.append(codes[4])
            statements.append(codes[5])
            policies.append(version)
            reasons.append(codes[6])
            self.size += 40 + len(causation_id)

    def _codes(
        self, what: tuple[int, str | None, str, str, str], statement: str | None, reason: str | None
    ) -> tuple[int, ...]:
        """The codes of an entry's shape: ``what`` is (outcome, agent, command, action,
        resource); an allowed entry's reason (``None`` here) follows from its statement."""
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
        return codes

    def full(self, entries: int, size: int) -> bool:
        return len(self) >= entries or self.size >= size

    def pack(self) -> bytes:
        # msgspec writes these values as msgpack.packb(use_bin_type=True) does, byte for
        # byte (a test holds the two equal), about four times faster.
        return _encode({"f": MODEL_FORMAT, "s": self.strings, "c": self.columns})

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
