"""An append sent from the loop without a task (``plantangenet.log.append_now``), on a real
server: stored and answered as ``Journal.append_payloads`` would, and a first attempt that
is not acknowledged as stored goes on exactly as ``append_payloads`` goes on after it."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import nats.errors
import pytest

from plantangenet import AgentAttached, ConcurrencyError, EmbeddedNats, Envelope, SessionStarted
from plantangenet.log.append_now import append_now
from plantangenet.log.journal import AppendResult, JournalConfig
from tests.conftest import AsyncJournal
from tests.test_append_retry import env, faulty, read


@pytest.fixture
def ready(journal: AsyncJournal) -> AsyncJournal:
    """Short attempts; ``s1`` started (sequence 1), ``s2`` too (2): the inbox is open."""
    journal.journal.config = dataclasses.replace(
        journal.journal.config, attempt_timeout=0.3, ack_timeout=3.0
    )
    journal.run(
        journal.journal.append("s1", [env(SessionStarted("s1", {}), "start")], expected_sequence=0)
    )
    other = [env(SessionStarted("s2", {}), "other", "s2")]
    journal.run(journal.journal.append("s2", other, expected_sequence=0))
    return journal


def send_now(
    j: AsyncJournal, events: list[Envelope], expected: int, first: str | None = None
) -> tuple[bool, asyncio.Future[AppendResult] | None]:
    """``append_now`` on the journal's loop; its outcome once ``then`` was called. ``first``
    makes the first attempt's answer ``lost`` (sent and stored, answered as a timeout),
    ``dropped`` (never sent, a timeout) or ``no-responders``."""
    journal = j.journal
    inbox = journal._acks
    real = inbox.request_now

    def request_now(
        subject: str, payload: bytes, timeout: float, headers: Any, answered: Any
    ) -> bool:
        loop = asyncio.get_running_loop()
        if first == "dropped":
            loop.call_later(timeout, answered, None, nats.errors.TimeoutError())
            return True
        if first == "no-responders":
            loop.call_soon(answered, None, nats.errors.NoRespondersError())
            return True
        if first == "lost":
            return real(
                subject,
                payload,
                timeout,
                headers,
                lambda _r, _e: answered(None, nats.errors.TimeoutError()),
            )
        return real(subject, payload, timeout, headers, answered)

    journal._acks = _Faulty(inbox, request_now)  # type: ignore[assignment]

    async def go() -> tuple[bool, asyncio.Future[AppendResult] | None]:
        told: asyncio.Future[asyncio.Future[AppendResult]] = (
            asyncio.get_running_loop().create_future()
        )
        payloads = [journal.codec.encode(e) for e in events]
        sent = append_now(
            journal,
            "s1",
            events,
            payloads,
            expected_sequence=expected,
            digests=None,
            then=told.set_result,
        )
        if not sent:
            return False, None
        return True, await asyncio.wait_for(told, 10)

    try:
        return j.run(go())  # type: ignore[no-any-return]
    finally:
        journal._acks = inbox


class _Faulty:
    """The journal's inbox, with its ``request_now`` replaced."""

    def __init__(self, inbox: Any, request_now: Any) -> None:
        self._inbox = inbox
        self.request_now = request_now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inbox, name)


def test_an_append_sent_now_is_stored_and_answered_as_append_payloads_would(
    ready: AsyncJournal,
) -> None:
    observed: list[float] = []
    ready.journal.append_observer = observed.append
    event = env(AgentAttached("a1", "bot", ""), "attach")
    sent, outcome = send_now(ready, [event], expected=1)
    assert sent and outcome is not None
    result = outcome.result()
    (stored,) = result.envelopes
    assert stored.sequence == 3 and result.session_id == "s1"
    assert stored.digest == hashlib.sha256(ready.journal.codec.encode(event)).digest()
    assert [e.sequence for e in read(ready)] == [1, 3]
    assert read(ready)[1].event == event.event
    assert len(observed) == 1


@pytest.mark.parametrize("first", ["lost", "dropped", "no-responders"])
def test_a_first_attempt_not_acknowledged_goes_on_and_stores_once(
    ready: AsyncJournal, first: str
) -> None:
    attempts = faulty(ready, [])  # the attempts after the first, through append_payloads' path
    event = env(AgentAttached("a1", "bot", ""), "attach")
    sent, outcome = send_now(ready, [event], expected=1, first=first)
    assert sent and outcome is not None
    assert [e.sequence for e in outcome.result().envelopes] == [3]
    assert attempts == ["ok"]  # one more attempt: a duplicate of a lost one is success
    assert [e.sequence for e in read(ready)] == [1, 3]


def test_a_refusal_in_the_acknowledgement_is_the_futures_error(ready: AsyncJournal) -> None:
    event = env(AgentAttached("a1", "bot", ""), "attach")
    sent, outcome = send_now(ready, [event], expected=0)  # s1 is at 1: another writer
    assert sent and outcome is not None
    with pytest.raises(ConcurrencyError):
        outcome.result()
    assert [e.sequence for e in read(ready)] == [1]


def test_what_cannot_be_sent_at_once_is_not_sent(
    ready: AsyncJournal, nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    two = [env(AgentAttached(f"a{i}", "bot", ""), "attach") for i in range(2)]
    assert send_now(ready, two, expected=1) == (False, None)  # an atomic batch: a task's work
    fresh = AsyncJournal(nats_server.url, journal_config)
    try:
        # No request was made on it yet: its inbox is not open.
        assert send_now(fresh, [env(AgentAttached("a1", "bot", ""), "x")], expected=1) == (
            False,
            None,
        )
    finally:
        fresh.close()
    assert [e.sequence for e in read(ready)] == [1]
