"""The journal's own batch frames: the same messages nats-py's publish would send."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from plantangenet import AgentAttached, ConcurrencyError, DuplicateCommand, SessionStarted
from plantangenet.log import journal as journal_module
from plantangenet.log.frames import batch_frames, publish_frame, request_frame, send_frames
from tests.conftest import AsyncJournal
from tests.test_journal import env, read

visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


def parse(frames: bytes) -> list[tuple[str, bytes, bytes]]:
    """``(subject, header block, payload)`` of each HPUB frame (reply subjects: none)."""
    out = []
    rest = frames
    while rest:
        line, rest = rest.split(b"\r\n", 1)
        words = line.split()
        assert words[0] == b"HPUB" and len(words) == 4, line
        hdr_len, total = int(words[2]), int(words[3])
        body, crlf, rest = rest[:total], rest[total : total + 2], rest[total + 2 :]
        assert crlf == b"\r\n" and len(body) == total
        out.append((words[1].decode(), body[:hdr_len], body[hdr_len:]))
    return out


def nats_py_frames(
    subject: str,
    headers: Sequence[dict[str, str] | None],
    payloads: Sequence[bytes],
    reply: str = "",
) -> bytes:
    """What nats-py's own publish path queues for the same messages."""
    nc = Client()
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc._send_command = capture  # type: ignore[method-assign]
    nc._flush_queue = None

    async def publish_all() -> None:
        for hdr, payload in zip(headers, payloads, strict=True):
            await nc._send_publish(subject, reply, payload, len(payload), hdr)

    asyncio.run(publish_all())
    return b"".join(sent)


#: An HTTP token: what nats-py accepts as a header name.
token = st.text(
    st.sampled_from(
        "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(
    subject=visible,
    reply=st.none() | visible,
    headers=st.none() | st.dictionaries(token, visible, max_size=4),
    payload=st.binary(max_size=300),
)
def test_a_message_frame_is_byte_for_byte_what_nats_py_sends(
    subject: str, reply: str | None, headers: dict[str, str] | None, payload: bytes
) -> None:
    """A reply of the service (no reply subject) and a request (one): with headers or
    none (then ``PUB``, as nats-py), the bytes nats-py's publish queues (nats-py writes
    an empty reply subject as a second space: the same words)."""
    if reply is None:
        ours = publish_frame(subject, headers, payload)
    else:
        ours = request_frame(subject, reply, headers, payload)
    assert ours is not None

    def words(frame: bytes) -> tuple[list[bytes], bytes]:
        line, rest = frame.split(b"\r\n", 1)
        return line.split(b" "), rest

    theirs = words(nats_py_frames(subject, [headers], [payload], reply=reply or ""))
    assert words(ours) == ([w for w in theirs[0] if w], theirs[1])


@settings(max_examples=60, deadline=None)
@given(
    subject=visible,
    batch_id=visible,
    expected=st.integers(min_value=0, max_value=2**63),
    messages=st.lists(st.tuples(visible, st.binary(max_size=300)), min_size=1, max_size=8),
)
def test_frames_carry_what_nats_py_would_send(
    subject: str, batch_id: str, expected: int, messages: list[tuple[str, bytes]]
) -> None:
    msg_ids = [m for m, _ in messages]
    payloads = [p for _, p in messages]
    ours = batch_frames(subject, msg_ids, batch_id, expected, payloads)
    assert ours is not None
    headers = []
    for i, msg_id in enumerate(msg_ids):
        hdr = {"Nats-Msg-Id": msg_id}
        if i == 0:
            hdr["Nats-Expected-Last-Subject-Sequence"] = str(expected)
        hdr["Nats-Batch-Id"] = batch_id
        hdr["Nats-Batch-Sequence"] = str(i + 1)
        headers.append(hdr)
    # Byte for byte the same header blocks and payloads (nats-py writes an empty reply
    # subject as a second space in the command line; the parse reads either).
    assert parse(ours) == parse(nats_py_frames(subject, headers, payloads))


@pytest.mark.parametrize(
    ("subject", "msg_id", "batch_id"),
    [
        ("p.sé", "s:c:0", "b"),
        ("p.s", "s:c 1:0", "b"),
        ("p.s", "s:c\r\nX-Injected: 1:0", "b"),
        ("p.s", "s:c:0", "b\n"),
        ("p s", "s:c:0", "b"),
    ],
)
def test_values_that_need_escaping_get_no_frames(subject: str, msg_id: str, batch_id: str) -> None:
    assert batch_frames(subject, [msg_id], batch_id, 0, [b"x"]) is None


class Disconnected:
    is_connected = False
    is_draining_pubs = False
    max_payload = 1 << 20


def test_frames_are_not_sent_on_a_connection_that_cannot_take_them() -> None:
    async def attempt(nc: Any, payloads: list[bytes]) -> bool:
        return await send_frames(nc, b"frames", payloads)

    assert asyncio.run(attempt(Disconnected(), [b"x"])) is False
    assert asyncio.run(attempt(object(), [b"x"])) is False  # no write queue at all

    class Connected(Disconnected):
        is_connected = True

        def __init__(self) -> None:
            self.stats = {"out_msgs": 0, "out_bytes": 0}
            self.sent: list[bytes] = []

        async def _send_command(self, cmd: bytes) -> None:
            self.sent.append(cmd)

    nc = Connected()
    assert asyncio.run(attempt(nc, [b"x" * (nc.max_payload + 1)])) is False
    assert nc.sent == []
    assert asyncio.run(attempt(nc, [b"ab", b"cde"])) is True
    assert nc.sent == [b"frames"] and nc.stats == {"out_msgs": 2, "out_bytes": 5}


def stored_headers(journal: AsyncJournal, sequence: int) -> dict[str, str]:
    msg = journal.run(journal.journal.js.get_msg(journal.journal.config.stream, sequence))
    return dict(msg.headers or {})


@pytest.mark.parametrize("framed", [True, False])
def test_a_batch_is_stored_the_same_with_or_without_frames(
    journal: AsyncJournal, framed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[bool] = []

    async def spy(nc: Any, frames: bytes, payloads: Any) -> bool:
        sent = framed and await send_frames(nc, frames, payloads)
        used.append(sent)
        return sent

    monkeypatch.setattr(journal_module, "send_frames", spy)
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    batch = [env(AgentAttached(f"a{i}", "bot", ""), "c2") for i in range(4)]
    result = journal.run(j.append("s1", batch, expected_sequence=1))
    assert used == [framed]
    assert [e.sequence for e in result.envelopes] == [2, 3, 4, 5]
    assert [e.event for e in read(journal)[1:]] == [e.event for e in batch]
    headers = [stored_headers(journal, seq) for seq in range(2, 6)]
    assert [h["Nats-Msg-Id"] for h in headers] == [f"s1:c2:{i}" for i in range(4)]
    # A retried batch is refused as a whole (its ids were stored), and so is a stale
    # one (its first message carries the expected sequence).
    again = [env(AgentAttached(f"a{i}", "bot", ""), "c2") for i in range(4)]
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", again, expected_sequence=5))
    stale = [env(AgentAttached(f"b{i}", "bot", ""), "c3") for i in range(3)]
    with pytest.raises(ConcurrencyError):
        journal.run(j.append("s1", stale, expected_sequence=4))
    assert len(read(journal)) == 5
    assert used == [framed] * 3
