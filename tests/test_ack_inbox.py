"""The journal's acknowledgement inbox: requests on one subscription, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet import EmbeddedNats
from plantangenet.log.ack_inbox import AckInbox
from plantangenet.log.frames import publish_frame, request_frame
from tests.test_frames import nats_py_frames

visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
#: An HTTP token: what nats-py accepts as a header name.
header_name = st.text(
    st.sampled_from(
        "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ),
    min_size=1,
    max_size=20,
)


def parse_request(frame: bytes) -> tuple[str, str, bytes, bytes]:
    """``(subject, reply, header block, payload)`` of one HPUB frame with a reply subject."""
    line, rest = frame.split(b"\r\n", 1)
    words = line.split()
    assert words[0] == b"HPUB" and len(words) == 5, line
    hdr_len, total = int(words[3]), int(words[4])
    assert rest[total:] == b"\r\n" and len(rest) == total + 2
    return words[1].decode(), words[2].decode(), rest[:hdr_len], rest[hdr_len:total]


@settings(max_examples=80, deadline=None)
@given(
    subject=visible,
    reply=visible,
    headers=st.dictionaries(header_name, visible, max_size=6),
    payload=st.binary(max_size=300),
)
def test_a_request_frame_carries_what_nats_py_would_send(
    subject: str, reply: str, headers: dict[str, str], payload: bytes
) -> None:
    ours = request_frame(subject, reply, headers, payload)
    assert ours is not None
    theirs = nats_py_frames(subject, [headers], [payload], reply=reply)
    assert parse_request(ours) == parse_request(theirs)


@pytest.mark.parametrize(
    ("subject", "reply", "headers"),
    [
        ("p.sé", "r.1", {}),
        ("p.s", "r 1", {}),
        ("p.s", "r.1", {"Nats-Msg-Id": "a b"}),
        ("p.s", "r.1", {"Nats-Msg-Id": "a\r\nX-Injected: 1"}),
        ("p.s", "r.1", {"Bad:Key": "1"}),
        ("p.s", "r.1", {"Bad(Key)": "1"}),
        ("p.s", "r.1", {"Key": "é"}),
    ],
)
def test_values_that_need_escaping_get_no_request_frame(
    subject: str, reply: str, headers: dict[str, str]
) -> None:
    assert request_frame(subject, reply, headers, b"x") is None
    if " " not in reply:  # the same subject and headers as a reply of the service
        assert publish_frame(subject, headers or None, b"x") is None


@pytest.mark.parametrize(
    "subject", ["_R_.a\r\nPUB plantangenet.events.s 1\r\nx", "_R_.a b", "_R_.é", ""]
)
def test_a_reply_subject_that_could_carry_another_command_gets_no_frame(subject: str) -> None:
    """What the service would publish on falls back to nats-py (which refuses it) rather
    than become protocol text of its own."""
    assert publish_frame(subject, None, b"x") is None
    assert publish_frame(subject, {"traceparent": "00-1-2-01"}, b"x") is None


class Connected:
    """A connection to the module's server, a responder on ``echo.>``, and an inbox."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.nc: Any = self.run(nats.connect(url))
        self.responder: Any = self.run(nats.connect(url))
        self.seen: list[Any] = []
        self.run(self.responder.subscribe("echo.>", cb=self._echo))
        self.run(self.responder.flush())
        self.inbox = AckInbox(self.nc)

    async def _echo(self, msg: Any) -> None:
        self.seen.append(msg)
        if msg.subject == "echo.silent":
            return
        await self.responder.publish(msg.reply, b"re:" + msg.data, headers=msg.headers)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.nc.close())
        self.run(self.responder.close())
        self.loop.close()


@pytest.fixture
def connected(nats_server: EmbeddedNats) -> Iterator[Connected]:
    c = Connected(nats_server.url)
    yield c
    c.close()


def test_each_request_gets_its_own_answer(connected: Connected) -> None:
    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(
                connected.inbox.request(f"echo.{i}", b"%d" % i, 5, {"Nats-Msg-Id": f"m{i}"})
                for i in range(300)
            )
        )

    answers = connected.run(scenario())
    assert answers == [b"re:%d" % i for i in range(300)]
    # headers went out as framed: the responder saw each request's own
    assert {m.data: m.headers["Nats-Msg-Id"] for m in connected.seen} == {
        b"%d" % i: f"m{i}" for i in range(300)
    }
    assert connected.inbox.waiting == 0


def test_the_first_requests_share_one_subscription(connected: Connected) -> None:
    before = len(connected.nc._subs)

    async def scenario() -> None:
        await asyncio.gather(*(connected.inbox.request("echo.a", b"", 5, {}) for _ in range(20)))

    connected.run(scenario())
    assert len(connected.nc._subs) == before + 1


def test_an_unanswered_request_times_out_and_leaves_nothing_waiting(
    connected: Connected,
) -> None:
    async def scenario() -> None:
        await connected.inbox.request("echo.silent", b"x", 0.3, {})

    with pytest.raises(nats.errors.TimeoutError):
        connected.run(scenario())
    assert connected.inbox.waiting == 0 and len(connected.seen) == 1
    # a late answer to the expired token is dropped, and the next request is answered
    answer = connected.run(connected.inbox.request("echo.b", b"y", 5, {}))
    assert answer == b"re:y"


def test_a_request_nobody_listens_to_says_no_responders(connected: Connected) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        connected.run(connected.inbox.request("nobody.here", b"x", 5, {}))
    assert connected.inbox.waiting == 0


def test_headers_that_cannot_be_framed_go_through_nats_py(connected: Connected) -> None:
    answer = connected.run(connected.inbox.request("echo.c", b"z", 5, {"Note": "two words"}))
    assert answer == b"re:z"
    assert connected.seen[-1].headers == {"Note": "two words"}


def test_a_cancelled_request_leaves_nothing_waiting(connected: Connected) -> None:
    async def scenario() -> None:
        task = asyncio.ensure_future(connected.inbox.request("echo.silent", b"x", 30, {}))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    connected.run(scenario())
    assert connected.inbox.waiting == 0


def test_each_request_times_out_at_its_own_deadline_whatever_the_order_sent(
    connected: Connected,
) -> None:
    """One timer serves every request: a shorter timeout sent after a longer one still
    expires first, each within the timer's granularity of its own deadline."""

    async def timed(subject: str, timeout: float) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await connected.inbox.request(subject, b"x", timeout, {})
            return "answered", loop.time() - started
        except nats.errors.TimeoutError:
            return "timed out", loop.time() - started

    async def scenario() -> list[tuple[str, float]]:
        return list(
            await asyncio.gather(
                timed("echo.silent", 1.2),
                timed("echo.silent", 0.3),
                timed("echo.d", 5),
                timed("echo.silent", 0.6),
            )
        )

    outcomes = connected.run(scenario())
    assert [o for o, _ in outcomes] == ["timed out", "timed out", "answered", "timed out"]
    for (_, took), timeout in zip(outcomes, [1.2, 0.3, None, 0.6], strict=True):
        if timeout is not None:  # not before its deadline, and not long after it
            assert timeout <= took < timeout + 0.5
    assert connected.inbox.waiting == 0


def test_answered_requests_do_not_pile_up_in_the_timer(connected: Connected) -> None:
    """Deadlines of answered requests leave the heap once it is mostly theirs."""

    async def scenario() -> None:
        for lo in range(0, 12_000, 500):
            await asyncio.gather(
                *(connected.inbox.request("echo.e", b"", 60, {}) for _ in range(lo, lo + 500))
            )

    connected.run(scenario())
    assert connected.inbox.waiting == 0
    assert len(connected.inbox._deadlines) <= 4096 + 500


def test_a_request_sent_from_an_expired_ones_answer_keeps_a_single_timer(
    connected: Connected,
) -> None:
    """An answer may send the next request at once (an append's retry, a session's next
    append): from inside the timer's own sweep too. The inbox still keeps one timer, and
    the new request still expires at its own deadline."""
    inbox = connected.inbox

    async def scenario() -> tuple[BaseException | None, float, int]:
        await inbox.request("echo.a", b"", 5, {})  # opens the inbox
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        sent_at: list[float] = []

        def second(_reply: bytes | None, error: BaseException | None) -> None:
            done.set_result(error)

        def first(_reply: bytes | None, error: BaseException | None) -> None:
            assert isinstance(error, nats.errors.TimeoutError)
            sent_at.append(loop.time())
            assert inbox.request_now("echo.silent", b"y", 0.3, {}, second)

        for _ in range(3):  # answered ones, due later: the heap is not empty
            assert inbox.request_now("echo.b", b"", 30, {}, lambda _r, _e: None)
        assert inbox.request_now("echo.silent", b"x", 0.1, {}, first)
        error = await asyncio.wait_for(done, 5)
        took = loop.time() - sent_at[0]
        sweeps = [
            h
            for h in loop._scheduled  # type: ignore[attr-defined]
            if not h.cancelled() and h._callback == inbox._expire_due
        ]
        return error, took, len(sweeps)

    error, took, sweeps = connected.run(scenario())
    assert isinstance(error, nats.errors.TimeoutError)
    assert 0.3 <= took < 0.3 + 0.2
    assert sweeps == 1
