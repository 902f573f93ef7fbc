"""Tamper evidence: recompute a session's hash chain from the log.

Every stored envelope carries ``previous_hash``, the SHA-256 of the encoded
previous event of its session (empty for the first). :func:`verify` streams
the session's raw messages, hashes each one, and checks each link. Deleting a
message breaks the link of the event after it; republishing an altered copy
breaks the link of the copy itself; altering an event in place would break
the next event's link. The first broken link is reported.

Known limit: removing the *last* events of a session leaves a shorter chain
that is still consistent; anchor the head elsewhere if that matters.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import msgpack

from plantangenet.errors import DecodeError
from plantangenet.journal import Journal


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

    def describe(self) -> str:
        """One human-readable line."""
        if self.intact:
            return f"session {self.session_id}: history intact ({self.checked} events verified)"
        return f"session {self.session_id}: BROKEN at sequence {self.broken_at}: {self.problem}"


async def verify(
    journal: Journal,
    session_id: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Recompute ``session_id``'s hash chain; memory stays flat whatever its length."""
    end = await journal.last_sequence(session_id)
    previous_digest = b""
    previous_sequence = 0
    checked = 0
    if end == 0:
        return VerifyResult(session_id, False, 0, problem="the session has no events")
    async for sequence, payload in journal.read_raw(session_id, to_sequence=end):
        checked += 1
        try:
            claimed = _previous_hash(payload)
        except DecodeError as exc:
            return VerifyResult(
                session_id, False, checked, sequence, previous_sequence, f"unreadable event: {exc}"
            )
        if claimed != previous_digest:
            if previous_sequence == 0:
                problem = (
                    "the first event in the log does not start the chain: "
                    "earlier events were removed, or this one was inserted"
                )
            else:
                problem = (
                    f"it does not follow the event at sequence {previous_sequence}: "
                    "an event between them was removed, or one of them was altered or inserted"
                )
            return VerifyResult(session_id, False, checked, sequence, previous_sequence, problem)
        previous_digest = hashlib.sha256(payload).digest()
        previous_sequence = sequence
        if progress is not None and checked % 1000 == 0:
            progress(sequence, end)
    if progress is not None:
        progress(end, end)
    return VerifyResult(session_id, True, checked)


def _previous_hash(payload: bytes) -> bytes:
    try:
        raw = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from None
    if type(raw) is not dict or type(raw.get("p")) is not bytes:
        raise DecodeError("not an envelope with a previous hash", field="previous_hash")
    previous: bytes = raw["p"]
    return previous
