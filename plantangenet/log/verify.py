"""Tamper evidence: recompute a session's hash chain from the log.

Every stored envelope carries ``previous_hash``, the SHA-256 of the encoded
previous event of its session (empty for the first). :func:`verify` streams
the session's raw messages, hashes each one, and checks each link. Deleting a
message breaks the link of the event after it; republishing an altered copy
breaks the link of the copy itself; altering an event in place would break
the next event's link. The first broken link is reported.

A message that is not an event of the session (it does not decode as an
envelope, or it is another session's) is not a link of the chain: the event
after it must link to the event before it. Such a message breaks the session
until an operator quarantines it (``MessageQuarantined``, written by
``plantangenet quarantine``); a quarantined message stays in the log and is
reported, and the chain around it is checked as usual.

Known limit: removing the *last* events of a session leaves a shorter chain
that is still consistent; anchor the head elsewhere if that matters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from plantangenet.errors import DecodeError
from plantangenet.log.journal import Journal


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify`."""

    session_id: str
    intact: bool
    #: Events checked (up to and including the first broken one).
    checked: int
    #: Stream sequence of the first event whose link is broken (0 if intact).
    broken_at: int = 0
    #: Stream sequence of the event before it in the log (0: none).
    previous_sequence: int = 0
    problem: str = ""
    #: Messages that are no events of the session, quarantined (skipped by every fold).
    quarantined: tuple[int, ...] = ()

    def describe(self) -> str:
        """One human-readable line."""
        if self.intact:
            skipped = (
                f"; {len(self.quarantined)} quarantined message(s) skipped: "
                + ", ".join(map(str, self.quarantined))
                if self.quarantined
                else ""
            )
            return (
                f"session {self.session_id}: history intact ({self.checked} events verified"
                f"{skipped})"
            )
        return f"session {self.session_id}: BROKEN at sequence {self.broken_at}: {self.problem}"


async def verify(
    journal: Journal,
    session_id: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Recompute ``session_id``'s hash chain; memory stays flat whatever its length.

    The first problem not resolved by a later quarantine is reported: a broken
    link, or a message that is no event of the session (quarantine it).
    """
    end = await journal.last_sequence(session_id)
    if end == 0:
        return VerifyResult(session_id, False, 0, problem="the session has no events")
    chain = _Chain(session_id)
    batches = journal.read_batches(session_id, to_sequence=end)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            before = chain.checked
            for sequence, payload in batch:
                chain.link(sequence, payload)
            if progress is not None and chain.checked // 1000 != before // 1000:
                progress(batch[-1][0], end)  # about every 1,000 events
    if progress is not None:
        progress(end, end)
    return chain.result()


class _Chain:
    """A session's hash chain, checked one stored message at a time (see :func:`verify`)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.previous_digest = b""
        self.previous_sequence = 0
        self.checked = 0
        #: Messages that are no events of the session: sequence -> (the one before it, why).
        self.strays: dict[int, tuple[int, str]] = {}
        self.quarantined: set[int] = set()
        self.first_break: VerifyResult | None = None

    def link(self, sequence: int, payload: bytes) -> None:
        """Check the message stored at ``sequence`` against the chain so far."""
        self.checked += 1
        try:
            claimed, raw = _previous_hash(payload, self.session_id)
        except DecodeError as exc:
            if len(self.strays) < _MAX_STRAYS:
                why = f"not an event of this session: {exc}"
                self.strays[sequence] = (self.previous_sequence, why)
            return
        if claimed != self.previous_digest:
            if self.first_break is None:
                self.first_break = VerifyResult(
                    self.session_id,
                    False,
                    self.checked,
                    sequence,
                    self.previous_sequence,
                    _break(self.previous_sequence),
                )
            return  # the events after it may still link past it (a stray before them)
        if raw.get("t") == "MessageQuarantined":
            data = raw.get("d")
            number = data.get("sequence") if isinstance(data, dict) else None
            if type(number) is int:
                self.quarantined.add(number)
        self.previous_digest = hashlib.sha256(payload).digest()
        self.previous_sequence = sequence

    def result(self) -> VerifyResult:
        """What the chain shows once every message is linked."""
        session_id, strays, checked = self.session_id, self.strays, self.checked
        unresolved = sorted(s for s in strays if s not in self.quarantined)
        problems = []
        if unresolved:
            stray = unresolved[0]
            before, why = strays[stray]
            hint = f"; an operator may quarantine it: plantangenet quarantine {session_id} {stray}"
            problems.append(VerifyResult(session_id, False, checked, stray, before, why + hint))
        if self.first_break is not None:
            problems.append(self.first_break)
        if problems:
            return min(problems, key=lambda result: result.broken_at)
        return VerifyResult(
            session_id, True, checked, quarantined=tuple(sorted(self.quarantined & set(strays)))
        )


#: Any msgpack value as Python values (checked as ``msgpack.unpackb`` checks them: UTF-8
#: strings, no trailing bytes), in C and faster: verify reads every payload of a session.
_unpack = msgspec.msgpack.Decoder().decode

#: The most strays remembered (a log with more is reported broken at the first anyway).
_MAX_STRAYS = 10_000


def _break(previous_sequence: int) -> str:
    if previous_sequence == 0:
        return (
            "the first event in the log does not start the chain: "
            "earlier events were removed, or this one was inserted"
        )
    return (
        f"it does not follow the event at sequence {previous_sequence}: "
        "an event between them was removed, or one of them was altered or inserted"
    )


def _previous_hash(payload: bytes, session_id: str) -> tuple[bytes, dict[str, Any]]:
    """The chain link an envelope claims, and the envelope's map; or :class:`DecodeError`."""
    try:
        raw = _unpack(payload)
    except Exception as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    if type(raw) is not dict or type(raw.get("p")) is not bytes:
        raise DecodeError("not an envelope with a previous hash", field="previous_hash")
    if raw.get("s") != session_id:
        raise DecodeError(f"an event of session {str(raw.get('s'))[:128]!r}", field="session_id")
    previous: bytes = raw["p"]
    return previous, raw
