"""User-defined projections: your own folds over the log, resumable from a checkpoint.

A :class:`Projection` is a name, an initial state and a fold
``fold(state, envelope) -> state``. :func:`rebuild` runs the fold over the
events of every session in the log (or of the sessions you name), each
session's events in stream order, and keeps a *checkpoint* in a NATS KV
bucket so that a rebuild interrupted by a crash or a restart continues where
the last checkpoint left off instead of starting again.

What the checkpoint is, and what it is not
------------------------------------------

The checkpoint holds the projection's **own progress**: for each session, the
stream sequence of the last event the fold has taken in, and the fold's result
up to exactly those positions. Both are written together, in one KV value
under the projection's name, so they can never disagree: resuming means
"decode the state, then fold every event after the recorded positions".

It is the projection's output, a read model like any other, derived from the
log and disposable: :func:`reset` throws it away and the next rebuild starts
from scratch and arrives at the same result. It is **not** a snapshot of
session state kept beside the log: sessions are still rehydrated only by
replaying their events, and nothing here is ever read back into a session.

Requirements on a projection, so that a resumed rebuild ends equal to a
rebuild from scratch:

- **The state must be serialisable with msgpack** (``None``, booleans,
  integers, floats, strings, bytes, lists and maps), after ``encode``.
  ``encode(state)`` turns your state into such a value and ``decode(value)``
  turns it back; by default both are the identity. ``decode(encode(s))`` must
  be a state the fold treats exactly like ``s`` (msgpack returns lists for
  tuples, for instance). Every rebuild from scratch also starts from
  ``decode(encode(initial))``, so fresh and resumed rebuilds see the same kind
  of value.
- **The fold must be deterministic and must not depend on the order between
  sessions.** Within a session, events arrive in stream order; sessions are
  visited one after another in session-id order, and a resumed rebuild may
  fold a session's newer events before another session's older ones.
- **Do not mutate the state in place** (or ``initial``): return a new value.
- **Change the fold, change** ``version``. A checkpoint made by another
  version of the projection is refused with :class:`CheckpointError`; reset it.

Concurrency: every save is a KV ``update`` guarded by the revision the
rebuilder last read or wrote. If another rebuilder (or :func:`reset`) wrote
the key in between, nothing is written and :class:`CheckpointConflict` is
raised; call :func:`rebuild` again to continue from the winner's checkpoint.

Limits: the checkpoint is one KV value, so its encoded size (state plus one
position per session, roughly 40 bytes each) must stay under the server's
maximum payload (1 MiB by default); a larger one is refused with
:class:`CheckpointError` and nothing is saved. The positions are stream
sequences: a checkpoint belongs to one stream, and one made over another
stream (or a stream that was deleted and recreated shorter) is refused.

Layout of the KV value (a msgpack map)::

    {"f": 1,                    # checkpoint format
     "name": "agent-counts",    # the projection's name (also the key)
     "version": 1,              # the projection's version
     "stream": "PLANTANGENET",  # the stream the positions refer to
     "positions": {"harbour": 42, ...},  # last stream sequence folded, per session
     "events": 1234,            # events folded into the state in total
     "saved_at": 1732540000000000,       # microseconds since the epoch, UTC
     "state": ...}              # encode(state)

>>> def count(state, envelope):
...     return {**state, envelope.type_name: state.get(envelope.type_name, 0) + 1}
>>> counts = PROJECTIONS.register(Projection("type-counts", {}, count))
>>> counts.fresh(), "type-counts" in PROJECTIONS
({}, True)

(then ``await rebuild(journal, "type-counts")``, on the journal's event loop).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import nats.errors
import nats.js.errors

from plantangenet.creating import created
from plantangenet.errors import JournalError
from plantangenet.projections.log_view import KeptLog
from plantangenet.projections.user_model import _NAME, _SESSION_ID, _pack, _unpack
from plantangenet.projections.user_model import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from plantangenet.projections.user_model import DEFAULT_BUCKET as DEFAULT_BUCKET
from plantangenet.projections.user_model import DEFAULT_CHECKPOINT_EVERY as DEFAULT_CHECKPOINT_EVERY
from plantangenet.projections.user_model import PROJECTIONS as PROJECTIONS
from plantangenet.projections.user_model import Checkpoint as Checkpoint
from plantangenet.projections.user_model import CheckpointConflict as CheckpointConflict
from plantangenet.projections.user_model import CheckpointError as CheckpointError
from plantangenet.projections.user_model import Projection as Projection
from plantangenet.projections.user_model import ProjectionError as ProjectionError
from plantangenet.projections.user_model import ProjectionRegistry as ProjectionRegistry
from plantangenet.projections.user_model import RebuildProgress as RebuildProgress
from plantangenet.projections.user_model import RebuildResult as RebuildResult
from plantangenet.projections.user_model import S as S
from plantangenet.projections.user_model import UnknownProjection as UnknownProjection

_KEYS = frozenset({"f", "name", "version", "stream", "positions", "events", "saved_at", "state"})


async def _bucket(
    journal: KeptLog,
    bucket: str,
    *,
    create: bool = True,
    description: str = "plantangenet projection checkpoints",
    direct: bool = False,
) -> Any:
    """The KV bucket (created if missing and ``create``, allowing direct gets if
    ``direct``), or ``None``."""
    js = journal.js
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
    except nats.js.errors.InvalidBucketNameError:
        raise ValueError(f"invalid KV bucket name {bucket!r}") from None
    except nats.errors.Error as exc:
        raise JournalError(f"cannot open KV bucket {bucket!r}: {exc}") from exc
    try:
        return await created(
            lambda: js.create_key_value(
                bucket=bucket,
                history=1,
                replicas=journal.config.replicas or 1,
                description=description,
                direct=direct,
            ),
            f"KV bucket {bucket!r}",
        )
    except nats.js.errors.BadRequestError:  # created by another rebuilder meanwhile
        try:
            return await js.key_value(bucket)
        except nats.errors.Error as exc:
            raise JournalError(f"cannot open KV bucket {bucket!r}: {exc}") from exc
    except nats.errors.Error as exc:
        raise JournalError(f"cannot create KV bucket {bucket!r}: {exc}") from exc


def _projection(projection: Projection[S] | str, registry: ProjectionRegistry) -> Projection[S]:
    if isinstance(projection, str):
        return registry.get(projection)
    return projection


async def load_checkpoint(
    journal: KeptLog,
    projection: Projection[S] | str,
    *,
    bucket: str = DEFAULT_BUCKET,
    registry: ProjectionRegistry = PROJECTIONS,
) -> Checkpoint[S]:
    """The projection's saved checkpoint (a fresh one, revision 0, if there is none).

    :raises CheckpointError: the stored value is unreadable, or belongs to
        another version of the projection or another stream.
    """
    p = _projection(projection, registry)
    kv = await _bucket(journal, bucket)
    return await _load(kv, journal, p, bucket)


async def _load(kv: Any, journal: KeptLog, p: Projection[S], bucket: str) -> Checkpoint[S]:
    try:
        entry = await kv.get(p.name)
    except nats.js.errors.KeyNotFoundError as exc:
        # A reset leaves a marker: the next save must follow its revision.
        revision = exc.entry.revision if exc.entry is not None else 0
        return Checkpoint(p.name, p.fresh(), {}, 0, int(revision or 0))
    except nats.errors.Error as exc:
        raise JournalError(f"cannot read the checkpoint of projection {p.name!r}: {exc}") from exc
    revision = int(entry.revision or 0)
    where = f"the checkpoint of projection {p.name!r} in bucket {bucket!r} (revision {revision})"
    remedy = f"; reset it (reset(journal, {p.name!r})) to rebuild the projection from scratch"

    def refuse(problem: str, field: str | None = None) -> CheckpointError:
        return CheckpointError(f"{where} {problem}{remedy}", projection=p.name, field=field)

    try:
        raw = _unpack(entry.value or b"")
    except Exception as exc:
        raise refuse(f"is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if type(raw) is not dict or raw.keys() != _KEYS:
        shape = sorted(map(str, raw)) if type(raw) is dict else type(raw).__name__
        raise refuse(f"is not a checkpoint (got {shape})")
    if raw["f"] != CHECKPOINT_FORMAT or type(raw["f"]) is not int:
        raise refuse(f"has unsupported format {raw['f']!r}", "format")
    if raw["name"] != p.name:
        raise refuse(f"was saved by projection {raw['name']!r}", "name")
    if raw["version"] != p.version or type(raw["version"]) is not int:
        raise refuse(
            f"was made by version {raw['version']!r} of the projection, this is version "
            f"{p.version}",
            "version",
        )
    if raw["stream"] != journal.config.stream:
        raise refuse(
            f"follows stream {raw['stream']!r}, not {journal.config.stream!r}",
            "stream",
        )
    positions = raw["positions"]
    if type(positions) is not dict or not all(
        type(k) is str and type(v) is int and v >= 0 for k, v in positions.items()
    ):
        raise refuse("has malformed positions (expected session id -> sequence)", "positions")
    for name in ("events", "saved_at"):
        if type(raw[name]) is not int or raw[name] < 0:
            raise refuse(f"has a malformed {name!r} count", name)
    try:
        state = p.decode(raw["state"])
    except Exception as exc:
        raise refuse(
            f"holds a state the projection cannot decode ({type(exc).__name__}: {exc})", "state"
        ) from None
    return Checkpoint(p.name, state, positions, raw["events"], revision, raw["saved_at"])


async def _save(
    kv: Any,
    journal: KeptLog,
    p: Projection[S],
    bucket: str,
    state: S,
    positions: Mapping[str, int],
    events: int,
    revision: int,
) -> int:
    """Write the checkpoint if the key is still at ``revision``; the new revision."""
    try:
        value = _pack(
            {
                "f": CHECKPOINT_FORMAT,
                "name": p.name,
                "version": p.version,
                "stream": journal.config.stream,
                "positions": dict(positions),
                "events": events,
                "saved_at": time.time_ns() // 1000,
                "state": p.encode(state),
            }
        )
    except Exception as exc:
        raise CheckpointError(
            f"projection {p.name!r}: the state cannot be saved; it must be msgpack-serialisable "
            f"after encode() ({type(exc).__name__}: {exc})",
            projection=p.name,
            field="state",
        ) from exc
    limit = int(getattr(journal.nc, "max_payload", 0) or 0)
    if limit and len(value) > limit - 1024:  # room for the subject and headers
        raise CheckpointError(
            f"projection {p.name!r}: the checkpoint is {len(value)} bytes, over the server's "
            f"limit of {limit}; keep a smaller state or rebuild fewer sessions per projection",
            projection=p.name,
            field="state",
        )
    try:
        new_revision: int = await kv.update(p.name, value, last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        raise CheckpointConflict(
            f"the checkpoint of projection {p.name!r} in bucket {bucket!r} moved on from "
            f"revision {revision}: another rebuilder or a reset wrote it first; nothing was "
            "saved, rebuild again to continue from its checkpoint",
            projection=p.name,
            expected=revision,
        ) from None
    except nats.errors.Error as exc:
        raise JournalError(f"cannot save the checkpoint of projection {p.name!r}: {exc}") from exc
    return new_revision


async def rebuild(
    journal: KeptLog,
    projection: Projection[S] | str,
    *,
    sessions: Iterable[str] | None = None,
    bucket: str = DEFAULT_BUCKET,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    stop_after: int | None = None,
    progress: RebuildProgress | None = None,
    registry: ProjectionRegistry = PROJECTIONS,
) -> RebuildResult[S]:
    """Fold the log into ``projection``, continuing from its saved checkpoint.

    Reads, for each session (every session in the log, or ``sessions``), the
    events after the checkpoint's position up to the session's last event when
    the rebuild began, and saves a checkpoint every ``checkpoint_every`` events
    and at the end (when anything changed). Memory does not grow with the
    number of events, only with the state and the number of sessions.

    :param projection: a :class:`Projection`, or a name in ``registry``.
    :param stop_after: stop after folding this many events, without saving
        what was folded since the last checkpoint (a simulated crash, for
        tests); the result then has ``complete=False``.
    :param progress: ``progress(session_id, sequence, last_sequence)``, every
        1,000 events and at the end of each session.
    :raises CheckpointConflict: another rebuilder saved first (nothing saved).
    :raises CheckpointError: the stored checkpoint cannot be used, or the
        state cannot be saved.
    :raises DecodeError: an event in the log cannot be decoded by the journal's codec.
    """
    p = _projection(projection, registry)
    if type(checkpoint_every) is not int or checkpoint_every < 1:
        raise ValueError("checkpoint_every must be a positive integer")
    if stop_after is not None and (type(stop_after) is not int or stop_after < 0):
        raise ValueError("stop_after must be a non-negative integer or None")
    targets: list[str] | None = None
    if sessions is not None:
        targets = list(dict.fromkeys(sessions))
        for session_id in targets:
            if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
                raise ValueError(f"invalid session id {session_id!r}")
    kv = await _bucket(journal, bucket)
    checkpoint = await _load(kv, journal, p, bucket)
    state = checkpoint.state
    positions = dict(checkpoint.positions)
    revision = checkpoint.revision
    events = checkpoint.events
    folded = unsaved = saves = 0

    def result(complete: bool) -> RebuildResult[S]:
        return RebuildResult(
            p.name, state, dict(positions), events, folded, saves, complete, revision
        )

    if stop_after == 0:
        return result(False)
    if targets is None:
        targets = sorted(await journal.sessions())
    # Where each session ends now; a checkpoint ahead of the log is refused before any work.
    ends: list[tuple[str, int, int]] = []
    for session_id in targets:
        start = positions.get(session_id, 0)
        last = await journal.last_sequence(session_id)
        if last < start:
            raise CheckpointError(
                f"the checkpoint of projection {p.name!r} in bucket {bucket!r} has folded "
                f"session {session_id!r} up to sequence {start}, but the log ends at {last}: "
                f"the stream was replaced; reset it (reset(journal, {p.name!r})) to rebuild",
                projection=p.name,
                field="positions",
            )
        if last > start:
            ends.append((session_id, start, last))
    fold = p.fold
    for session_id, start, last in ends:
        reading = journal.read(
            session_id,
            from_sequence=start + 1,
            to_sequence=last,
            progress=None if progress is None else _reporter(progress, session_id),
        )
        async with contextlib.aclosing(reading) as envelopes:
            async for envelope in envelopes:
                sequence = envelope.sequence or 0
                try:
                    state = fold(state, envelope)
                except Exception as exc:
                    exc.add_note(
                        f"in projection {p.name!r}, folding {envelope.type_name} of session "
                        f"{session_id!r} at sequence {sequence}"
                    )
                    raise
                positions[session_id] = sequence
                events += 1
                folded += 1
                unsaved += 1
                if unsaved >= checkpoint_every:
                    revision = await _save(
                        kv, journal, p, bucket, state, positions, events, revision
                    )
                    saves += 1
                    unsaved = 0
                if stop_after is not None and folded >= stop_after:
                    return result(False)
    if unsaved or (saves == 0 and checkpoint.saved_at == 0):
        # Save what is left, or record that the projection was rebuilt (even empty).
        revision = await _save(kv, journal, p, bucket, state, positions, events, revision)
        saves += 1
    return result(True)


def _reporter(progress: RebuildProgress, session_id: str) -> Callable[[int, int], None]:
    def report(sequence: int, end: int) -> None:
        progress(session_id, sequence, end)

    return report


async def reset(
    journal: KeptLog,
    projection: Projection[Any] | str,
    *,
    bucket: str = DEFAULT_BUCKET,
) -> bool:
    """Discard the projection's checkpoint; the next rebuild starts from scratch.

    Returns whether there was one. A rebuild running meanwhile gets
    :class:`CheckpointConflict` at its next save (it saves nothing).
    """
    name = projection if isinstance(projection, str) else projection.name
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid projection name {name!r}")
    kv = await _bucket(journal, bucket, create=False)
    if kv is None:
        return False
    try:
        await kv.get(name)
    except nats.js.errors.KeyNotFoundError:
        return False
    except nats.errors.Error as exc:
        raise JournalError(f"cannot read the checkpoint of projection {name!r}: {exc}") from exc
    try:
        await kv.purge(name)
    except nats.errors.Error as exc:
        raise JournalError(f"cannot reset projection {name!r}: {exc}") from exc
    return True


__all__ = [
    "DEFAULT_BUCKET",
    "PROJECTIONS",
    "Checkpoint",
    "CheckpointConflict",
    "CheckpointError",
    "Projection",
    "ProjectionError",
    "ProjectionRegistry",
    "RebuildProgress",
    "RebuildResult",
    "UnknownProjection",
    "load_checkpoint",
    "rebuild",
    "reset",
]
