"""An append started and answered without a task, for a writer on the event loop's thread.

:meth:`Journal.append_payloads` is a coroutine: run as a task, each append costs the
task's creation, its first step, its wake-up when the acknowledgement comes and its
done-callback: four turns of the loop and a chain of coroutine frames, per command, on
the thread that does everything else of the session service (a session actor decides
there when it is idle, :mod:`plantangenet.actors.turns`). :func:`append_now` sends a
single event's append at once (:meth:`AckInbox.request_now
<plantangenet.log.ack_inbox.AckInbox.request_now>`) and, when its acknowledgement says it
is stored, hands the outcome over as an ended future from the callback that received
it. Anything else goes the usual way: an append it cannot send without waiting is not
sent (it returns ``False``; the caller runs ``append_payloads``), and a first attempt
that was not acknowledged as stored (no answer in time, no stream leader, an error in
the acknowledgement) continues as ``append_payloads`` would after that attempt, as a
task (the same retries, the same message id and expected sequence, the same errors).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from plantangenet.events.envelope import Envelope
from plantangenet.log.journal_acks import AppendResult, _msg_ids, _parse_ack, stored_result

if TYPE_CHECKING:
    from plantangenet.log.journal import Journal

#: What is told the outcome: an ended future holding the append's result or error.
Then = Callable[["asyncio.Future[AppendResult]"], object]


def append_now(
    journal: Journal,
    session_id: str,
    envelopes: Sequence[Envelope],
    payloads: Sequence[bytes],
    *,
    expected_sequence: int,
    digests: Sequence[bytes] | None,
    then: Then,
) -> bool:
    """Send ``envelopes`` (one event) as :meth:`Journal.append_payloads` would, and call
    ``then(future)`` on the loop once the append ended; ``False`` if it was not sent
    (see the module docs). Call it on the journal's event loop."""
    if len(envelopes) != 1 or len(payloads) != 1:
        return False
    if digests is not None and len(digests) != 1:
        return False
    subject = journal.subject(session_id)
    msg_ids = _msg_ids(session_id, envelopes)
    commit = {
        "Nats-Msg-Id": msg_ids[0],
        "Nats-Expected-Last-Subject-Sequence": str(expected_sequence),
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    observer = journal.append_observer
    clock = time.perf_counter() if observer is not None else 0.0

    def answered(reply: bytes | None, error: BaseException | None) -> None:
        if reply is not None and b"error" not in reply:
            outcome: asyncio.Future[AppendResult] = loop.create_future()
            try:
                seq = int(_parse_ack(reply, expected_sequence, session_id)["seq"])
                outcome.set_result(stored_result(session_id, envelopes, payloads, digests, seq))
            except Exception as exc:  # as append_payloads would raise it
                outcome.set_exception(exc)
            if observer is not None:
                observer(time.perf_counter() - clock)
            then(outcome)
            return

        async def go_on() -> AppendResult:
            try:
                seq = await journal._append_with_retries(
                    session_id,
                    subject,
                    msg_ids,
                    expected_sequence,
                    payloads,
                    commit,
                    prior=error if error is not None else reply,
                    started=started,
                )
            finally:
                if observer is not None:
                    observer(time.perf_counter() - clock)
            return stored_result(session_id, envelopes, payloads, digests, seq)

        asyncio.ensure_future(go_on()).add_done_callback(then)

    timeout = min(journal.config.attempt_timeout, journal.config.ack_timeout)
    return journal._acks.request_now(subject, payloads[0], timeout, commit, answered)
