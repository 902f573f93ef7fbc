"""Direct subscriptions: messages from nats-py's parser to a function, against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from plantangenet import EmbeddedNats
from plantangenet.events import AgentAttached, SessionStarted
from plantangenet.log import deliveries
from plantangenet.log.deliveries import (
    NO_RESPONDERS,
    header_value,
    status_code,
    status_of,
    subscribe_direct,
)
from plantangenet.log.journal_acks import _Inbox, _sequences
from tests.conftest import AsyncJournal
from tests.test_journal import env

Seen = list[tuple[bytes, bytes, bytes | None]]


def connected(url: str, scenario: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        nc = await nats.connect(url)
        try:
            return await scenario(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fallback", [False, True], ids=["direct", "fallback"])
def test_messages_arrive_in_order_with_reply_data_and_headers(
    nats_server: EmbeddedNats, fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths hand over the same (reply, data, headers) for plain and header messages."""
    if fallback:  # a nats-py without the parser hook: the ordinary callback path
        monkeypatch.setattr(deliveries, "_dispatch", lambda nc: None)

    async def scenario(nc: Any) -> tuple[Seen, bool, int]:
        seen: Seen = []
        sub = await subscribe_direct(nc, "direct.t", lambda s, r, d, h: seen.append((r, d, h)))
        before = nc.stats["in_msgs"]
        for i in range(200):
            await nc.publish("direct.t", b"%d" % i, reply=f"r.{i}")
        await nc.publish("direct.t", b"h", headers={"Nats-Msg-Id": "m-1", "X-Two": "2"})
        await until(lambda: len(seen) == 201)
        counted = nc.stats["in_msgs"] - before
        await sub.unsubscribe()
        await nc.publish("direct.t", b"after")
        await nc.flush()
        await asyncio.sleep(0.1)
        return seen, sub.direct, counted

    seen, direct, counted = connected(nats_server.url, scenario)
    assert direct is not fallback
    assert counted == 201  # the connection's statistics count them either way
    assert [(r, d, h) for r, d, h in seen[:200]] == [
        (f"r.{i}".encode(), b"%d" % i, None) for i in range(200)
    ]
    reply, data, headers = seen[200]
    assert (reply, data) == (b"", b"h")
    assert headers is not None and headers.startswith(b"NATS/1.0\r\n")
    assert header_value(headers, b"Nats-Msg-Id") == b"m-1"
    assert header_value(headers, b"X-Two") == b"2"
    assert header_value(headers, b"Missing") is None
    assert len(seen) == 201  # nothing after unsubscribing


@pytest.mark.parametrize("fallback", [False, True], ids=["direct", "fallback"])
def test_status_messages_keep_their_status_line(
    nats_server: EmbeddedNats, fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push consumer's idle heartbeats reach the handler as ``NATS/1.0 100`` blocks."""
    if fallback:
        monkeypatch.setattr(deliveries, "_dispatch", lambda nc: None)

    async def scenario(nc: Any) -> Seen:
        js = nc.jetstream()
        await js.add_stream(name=f"DIRECT{int(fallback)}", subjects=[f"direct{int(fallback)}.>"])
        seen: Seen = []
        inbox = nc.new_inbox()
        sub = await subscribe_direct(nc, inbox, lambda s, r, d, h: seen.append((r, d, h)))
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            idle_heartbeat=0.1,
            deliver_subject=inbox,
            filter_subject=f"direct{int(fallback)}.x",
        )
        await js.add_consumer(f"DIRECT{int(fallback)}", config=config)
        await until(lambda: len(seen) >= 2)
        await sub.unsubscribe()
        return seen

    seen = connected(nats_server.url, scenario)
    for reply, data, headers in seen[:2]:
        assert (reply, data) == (b"", b"")
        assert headers is not None and headers.startswith(b"NATS/1.0 100 Idle Heartbeat")
        assert header_value(headers, b"Nats-Last-Consumer") == b"0"


def test_a_failing_handler_is_logged_and_the_next_messages_still_arrive(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(nc: Any) -> list[bytes]:
        seen: list[bytes] = []

        def handler(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            assert subject == b"direct.f"
            if data == b"bad":
                raise ValueError("bad message")
            seen.append(data)

        sub = await subscribe_direct(nc, "direct.f", handler)
        for data in (b"1", b"bad", b"2"):
            await nc.publish("direct.f", data)
        await until(lambda: len(seen) == 2)
        # Other subscriptions of the connection are nats-py's as before.
        answer = await nc.request("$JS.API.INFO", b"", timeout=5)
        assert b"memory" in answer.data
        await sub.unsubscribe()
        return seen

    with caplog.at_level(logging.ERROR, logger="plantangenet.log.deliveries"):
        assert connected(nats_server.url, scenario) == [b"1", b"2"]
    assert any("bad message" in (r.exc_text or "") for r in caplog.records)


def test_a_reader_inbox_queues_events_and_the_answers_flow_control_wants() -> None:
    """What the journal's reader does with each kind of message its consumer sends."""
    inbox = _Inbox()
    inbox.arrived(b"i", b"$JS.ACK.S.c.1.7.1.0.0", b"event", b"NATS/1.0\r\nNats-Msg-Id: m\r\n\r\n")
    inbox.arrived(b"i", b"$JS.FC.S.c.1", b"", b"NATS/1.0 100 FlowControl Request\r\n\r\n")
    stalled = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Consumer-Stalled: $JS.FC.S.c.2\r\n\r\n"
    inbox.arrived(b"i", b"", b"", stalled)
    inbox.arrived(b"i", b"", b"", b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1\r\n\r\n")
    inbox.arrived(b"i", b"elsewhere", b"not a delivery", None)
    assert list(inbox.messages) == [(b"$JS.ACK.S.c.1.7.1.0.0", b"event")]
    assert inbox.answers == [b"$JS.FC.S.c.1", b"$JS.FC.S.c.2"]
    assert _sequences(b"$JS.ACK.S.c.1.7.1.0.0") == (7, 1)


def test_header_value_takes_the_last_of_a_repeated_header() -> None:
    block = b"NATS/1.0\r\nNats-Subject: forged\r\nNats-Stream: S\r\nNats-Subject: real\r\n\r\n"
    assert header_value(block, b"Nats-Subject") == b"real"
    assert header_value(block, b"Nats-Stream") == b"S"
    assert header_value(block, b"nats-stream") is None  # exact case, as the server sends


def test_a_page_reads_the_servers_headers_not_a_stored_messages_own(
    journal: AsyncJournal,
) -> None:
    """A message written behind the service's back with headers that look like a direct
    get's (another sequence and subject) is paged with what the server says of it."""
    j = journal.journal
    subject = j.subject("forged")
    forged = {"Nats-Sequence": "999", "Nats-Subject": "elsewhere", "Nats-Last-Sequence": "77"}
    ack = journal.run(j.js.publish(subject, b"bytes", headers=forged))
    journal.run(j.js.publish(subject, b"more"))
    page = journal.run(j.page("forged"))
    assert page.messages == ((ack.seq, b"bytes"), (ack.seq + 1, b"more"))
    assert not page.more


def test_without_the_direct_path_the_journal_reads_and_appends_the_same(
    journal: AsyncJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-py without the parser hook the direct path needs: every subscription takes
    the ordinary callback, and appends, reads (flow control included) and pages still work."""
    monkeypatch.setattr(deliveries, "_dispatch", lambda nc: None)
    journal_ = journal.journal
    journal_.config = dataclasses.replace(journal_.config, read_window=64)
    events = [env(SessionStarted("fb", {}), "c0", "fb")]
    journal.run(journal_.append("fb", events, expected_sequence=0))
    for i in range(1, 300):
        batch = [env(AgentAttached(f"a{i}", "bot", ""), f"c{i}", "fb")]
        journal.run(journal_.append("fb", batch, expected_sequence=i))

    async def everything() -> list[int | None]:
        return [e.revision async for e in journal_.read("fb")]

    assert journal.run(everything()) == list(range(1, 301))
    page = journal.run(journal_.page("fb", 1, max_events=500))
    assert len(page.messages) == 300 and not page.more
    assert journal_._acks.prefix is not None  # the acknowledgements came back too
    # ... all through nats-py's own handling: nothing wrapped its parser's hook.
    assert not isinstance(getattr(journal.nc._process_msg, "__self__", None), deliveries._Dispatch)


def test_status_of_reads_the_status_line_or_the_headers_that_say_it() -> None:
    assert status_of(b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\n\r\n") == (b"204", "EOB")
    assert status_of(b"NATS/1.0 503\r\n\r\n") == (b"503", "")
    assert status_of(b"NATS/1.0\r\nStatus: 408\r\nDescription: Request Timeout\r\n\r\n") == (
        b"408",
        "Request Timeout",
    )
    assert status_of(b"NATS/1.0\r\nNats-Msg-Id: m\r\n\r\n") is None
    assert status_of(None) is None
    assert status_code(b"NATS/1.0 503\r\n\r\n") == NO_RESPONDERS
    assert status_code(b"NATS/1.0 100 FlowControl Request\r\n\r\n") == b"100"
    assert status_code(b"NATS/1.0\r\nNats-Msg-Id: m\r\n\r\n") is None
    assert status_code(None) is None
