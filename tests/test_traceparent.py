"""A W3C ``traceparent`` header on a request: its trace id becomes the correlation id of
the events the request stores, and the header comes back on the reply -- also when the
request is passed on to its session's owner by another ``serve`` process. Malformed or
oversized headers are ignored, as the Trace Context spec says."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import pytest

from plantangenet import EmbeddedNats, Plantangenet
from plantangenet.wire.client import new_command_id
from plantangenet.wire.protocol import command_subject, decode_reply, encode_request
from plantangenet.wire.service import SessionService
from tests.conftest import wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADER = f"00-{TRACE}-00f067aa0ba902b7-01"


def send(
    url: str,
    session_id: str,
    name: str,
    args: dict[str, object],
    *,
    headers: dict[str, str],
    correlation_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """One raw request; ``(reply map, reply headers)``."""

    async def go() -> tuple[dict[str, Any], dict[str, str]]:
        nc = await nats.connect(url)
        try:
            payload = encode_request(
                args, command_id=new_command_id(), correlation_id=correlation_id
            )
            msg = await nc.request(
                command_subject(session_id, name), payload, timeout=10, headers=headers
            )
            return decode_reply(msg.data), dict(msg.headers or {})
        finally:
            await nc.close()

    return asyncio.run(go())


def test_the_trace_id_becomes_the_correlation_and_comes_back(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    reply, headers = send(
        nats_server.url, "traced", "start", {"metadata": {}}, headers={"traceparent": HEADER}
    )
    assert reply["ok"] and headers.get("traceparent") == HEADER
    (event,) = runtime.history("traced")
    assert event.correlation_id == TRACE
    # A correlation id the request names itself wins; the header still comes back.
    reply, headers = send(
        nats_server.url,
        "traced",
        "change_metadata",
        {"changed": {"k": 1}},
        correlation_id="mine",
        headers={"Traceparent": HEADER},
    )
    assert headers.get("traceparent") == HEADER
    assert runtime.history("traced")[-1].correlation_id == "mine"


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # an all-zero trace id is invalid
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case is invalid
        f"00-{TRACE}-00f067aa0ba902b7-01-" + "x" * 100_000,  # oversized
    ],
)
def test_a_malformed_traceparent_is_ignored(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService, bad: str
) -> None:
    reply, headers = send(
        nats_server.url, "untraced", "start", {"metadata": {}}, headers={"traceparent": bad}
    )
    assert reply["ok"] and "traceparent" not in headers
    (event,) = runtime.history("untraced")
    assert event.correlation_id != TRACE and len(event.correlation_id or "") <= 128


def test_the_trace_survives_being_passed_on_to_the_owner(
    nats_server: EmbeddedNats, make_runtime: Callable[[], Plantangenet]
) -> None:
    services = [SessionService(make_runtime(), partitions=4, lease_ttl=2.0) for _ in range(2)]
    for s in services:
        s.runtime.run(s.start())
    try:
        wait_until(lambda: all(s.ownership and len(s.ownership.owned) == 2 for s in services))
        for i in range(16):
            reply, headers = send(
                nats_server.url, f"t{i}", "start", {"metadata": {}}, headers={"traceparent": HEADER}
            )
            assert reply["ok"] and headers.get("traceparent") == HEADER
            assert services[0].runtime.history(f"t{i}")[0].correlation_id == TRACE
        assert sum(s.forwarded for s in services) > 0
    finally:
        for s in services:
            s.runtime.run(s.stop(timeout=10))
