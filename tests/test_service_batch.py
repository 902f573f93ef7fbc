"""Batches over the wire: several commands in one request, each decided on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import nats
import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.actors.session import SessionActor
from plantangenet.errors import (
    AccessRefused,
    DecodeError,
    InvalidCommand,
    PlantangenetError,
    UnknownAgent,
)
from plantangenet.wire.client import BotClient
from plantangenet.wire.protocol import (
    MAX_BATCH_COMMANDS,
    PROTOCOL_VERSION,
    command_subject,
    decode_batch,
    encode_batch,
    request_map,
)
from plantangenet.wire.service import SessionService
from tests.conftest import two_services, with_client

ALLOW_MOVES = {
    "id": "bots-move",
    "effect": "allow",
    "actions": ["cursor.*"],
    "resources": ["*"],
}


def raw_batch(url: str, session_id: str, payload: bytes) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(command_subject(session_id, "batch"), payload, timeout=10)
        finally:
            await nc.close()
        reply: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
        return reply

    return asyncio.run(ask())


def move(i: int, agent: str = "a") -> tuple[str, dict[str, Any]]:
    args = {"agent_id": agent, "cursor_id": "c", "axes": ["x"], "start": i, "end": i + 1}
    return ("move_cursor", args)


def replies(outcomes: Sequence[dict[str, Any] | PlantangenetError]) -> list[dict[str, Any]]:
    """``outcomes``, each asserted to be a reply map (none a refusal)."""
    maps = [o for o in outcomes if isinstance(o, dict)]
    assert len(maps) == len(outcomes), outcomes
    return maps


# -- decoding (no server) ----------------------------------------------------------------------


def test_a_batch_decodes_to_its_commands_and_per_item_refusals_in_order() -> None:
    good = request_map({"agent_id": "a"}, command_id="c1")
    payload = msgpack.packb(
        {
            "v": PROTOCOL_VERSION,
            "commands": [
                {**good, "cmd": "attach"},
                "not a map",
                {**good, "cmd": "no_such"},
                {**good, "cmd": ["unhashable"]},
                {**good, "cmd": "query_cursor"},
                {**good, "cmd": "state"},
                {**good, "cmd": "attach", "extra": 1},
                {**good, "cmd": "attach", "v": 99},
                {**good, "cmd": "attach", "id": ""},
                {**good, "cmd": "detach"},
            ],
        }
    )
    items = decode_batch(payload)
    assert len(items) == 10
    assert type(items[0]).__name__ == "AttachAgent" and items[0].command_id == "c1"  # type: ignore[union-attr]
    assert all(isinstance(i, InvalidCommand) for i in items[1:9]), items
    assert "commands[4]: query_cursor cannot be batched" in str(items[4])
    assert "commands[3].cmd: unknown command" in str(items[3])
    assert "unsupported protocol version 99" in str(items[7])
    assert type(items[9]).__name__ == "DetachAgent"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xc1", DecodeError),
        (msgpack.packb([1, 2]), DecodeError),
        (msgpack.packb({"v": 2, "commands": []}), InvalidCommand),
        (msgpack.packb({"v": PROTOCOL_VERSION}), InvalidCommand),
        (msgpack.packb({"v": PROTOCOL_VERSION, "commands": {}}), InvalidCommand),
        (msgpack.packb({"v": PROTOCOL_VERSION, "commands": [], "x": 1}), InvalidCommand),
        (
            msgpack.packb({"v": PROTOCOL_VERSION, "commands": [{}] * (MAX_BATCH_COMMANDS + 1)}),
            InvalidCommand,
        ),
        (b"\x90" + b"\x00" * (256 * 1024), InvalidCommand),
    ],
)
def test_a_malformed_batch_is_refused_as_a_whole(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_batch(payload)


JUNK = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8)
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ITEM = st.one_of(
    JUNK,
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["attach", "move_cursor", "end", "zzz"]) | JUNK},
        optional={"id": st.text(max_size=5) | JUNK, "args": JUNK, "by": JUNK, "v": JUNK},
    ),
)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(ITEM, max_size=12))
def test_any_batch_decodes_to_one_command_or_typed_error_per_item(items: list[Any]) -> None:
    payload = msgpack.packb({"v": PROTOCOL_VERSION, "commands": items})
    decoded = decode_batch(payload)
    assert len(decoded) == len(items)
    for item in decoded:
        assert (
            isinstance(item, PlantangenetError)
            or type(item).__module__ == "plantangenet.domain.commands"
        )


# -- over the wire -----------------------------------------------------------------------------


def test_a_bot_batch_is_stored_in_order_with_each_refusal_in_its_place(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    async def body(client: BotClient) -> tuple[list[Any], list[Any]]:
        setup = await client.request_many(
            "s1",
            [
                ("start", {"metadata": {"k": "v"}}),
                ("attach", {"agent_id": "a"}),
                ("change_policy", {"add": [ALLOW_MOVES]}),
                (
                    "add_cursor",
                    {"agent_id": "a", "cursor_id": "c", "axes": ["x"], "start": 0, "end": 1},
                ),
            ],
        )
        moves = await client.request_many(
            "s1",
            [
                move(1),
                move(2, agent="ghost"),  # refused: unknown agent
                ("attach", {"agent_id": 7}),  # refused: wrong type
                move(3),
                ("change_metadata", {"changed": {"k": "w"}}),  # refused for `a` by policy
                move(4),
            ],
            issued_by="a",
        )
        return setup, moves

    setup, moves = with_client(nats_server.url, journal_config, body)
    assert [o["seq"] for o in setup] == [1, 2, 3, 4]
    assert [o["events"] for o in setup][3] == ["CursorAdded"]
    assert moves[0]["seq"] == 5 and moves[3]["seq"] == 6
    assert isinstance(moves[1], UnknownAgent)
    assert isinstance(moves[2], InvalidCommand)
    assert isinstance(moves[4], AccessRefused) and moves[4].sequence == 7  # recorded refusal
    assert moves[5]["seq"] == 8
    state = runtime.session("s1").state
    assert state.cursors["c"].start == 4 and state.metadata == {"k": "v"}
    assert runtime.replay("s1") == state
    assert [e.type_name for e in runtime.history("s1")][4:] == [
        "CursorMoved",
        "CursorMoved",
        "AccessDenied",
        "CursorMoved",
    ]


def test_a_batch_sent_again_is_stored_once(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    runtime.session("s1").start()
    payload = encode_batch(
        [
            ("attach", request_map({"agent_id": "a"}, command_id="attach-a")),
            ("attach", request_map({"agent_id": "b"}, command_id="attach-b")),
        ]
    )
    first = raw_batch(nats_server.url, "s1", payload)
    again = raw_batch(nats_server.url, "s1", payload)  # as after a lost reply
    assert [o["seq"] for o in first["outcomes"]] == [2, 3]
    assert [o["seq"] for o in again["outcomes"]] == [2, 3]
    assert [o["duplicate"] for o in again["outcomes"]] == [True, True]
    assert runtime.sessions()["s1"] == 3


def test_a_malformed_batch_gets_one_error_and_writes_nothing(
    nats_server: EmbeddedNats, runtime: Plantangenet, service: SessionService
) -> None:
    runtime.session("s1").start()
    for payload in (b"\x00\xff", msgpack.packb({"v": PROTOCOL_VERSION, "commands": "no"})):
        reply = raw_batch(nats_server.url, "s1", payload)
        assert reply["ok"] is False and reply["error"]["code"] in (
            "decode_error",
            "invalid_command",
        )
    assert runtime.sessions()["s1"] == 1
    assert service.failed == 2


def test_a_batch_for_a_session_never_started_starts_no_actor(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    actors = len(pykka.ActorRegistry.get_by_class(SessionActor))

    async def body(client: BotClient) -> list[Any]:
        return await client.request_many("ghost", [("attach", {"agent_id": "a"}), move(1)])

    outcomes = with_client(nats_server.url, journal_config, body)
    assert [o.code for o in outcomes] == ["session_not_started"] * 2
    assert len(pykka.ActorRegistry.get_by_class(SessionActor)) == actors
    assert runtime.sessions() == {}
    # A batch that starts the session does start its actor.
    started = with_client(
        nats_server.url,
        journal_config,
        lambda client: client.request_many("ghost", [("start", {}), ("attach", {"agent_id": "a"})]),
    )
    assert [o["seq"] for o in replies(started)] == [1, 2]


def test_an_empty_batch_costs_no_request(
    nats_server: EmbeddedNats, journal_config: JournalConfig, service: SessionService
) -> None:
    assert with_client(nats_server.url, journal_config, lambda c: c.request_many("s", [])) == []
    assert service.handled == 0


def test_batches_through_two_services_on_one_session_land_once_each(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_runtime: Callable[[], Plantangenet],
) -> None:
    # Both services write the session: commands that lose a race with the other
    # writer are decided again on the caught-up state (conflict retries), batch or not.

    async def body(client: BotClient) -> list[Any]:
        await client.open("shared")
        batches = [
            client.request_many(
                "shared", [("attach", {"agent_id": f"a{b}-{i}"}) for i in range(10)]
            )
            for b in range(12)
        ]
        return [o for outcomes in await asyncio.gather(*batches) for o in outcomes]

    with two_services(make_runtime) as services:
        outcomes = with_client(nats_server.url, journal_config, body)
    runtimes = [s.runtime for s in services]
    assert all(s.handled > 1 for s in services)  # the queue group used both
    assert all(isinstance(o, dict) for o in outcomes), [
        o for o in outcomes if not isinstance(o, dict)
    ]
    history = runtimes[0].history("shared")
    attached = [e.event.agent_id for e in history if e.type_name == "AgentAttached"]  # type: ignore[attr-defined]
    assert sorted(attached) == sorted(f"a{b}-{i}" for b in range(12) for i in range(10))
    assert sorted(o["seq"] for o in outcomes) == [e.sequence for e in history[1:]]
    assert runtimes[1].replay("shared") == runtimes[0].replay("shared")


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(ITEM, max_size=10))
def test_a_hostile_batch_over_the_wire_gets_an_outcome_per_item_and_the_service_serves_on(
    nats_server: EmbeddedNats,
    runtime: Plantangenet,
    service: SessionService,
    items: list[Any],
) -> None:
    session = runtime.session("hostile")
    if session.state.status == "new":
        session.start()
    before = runtime.history("hostile")
    reply = raw_batch(
        nats_server.url, "hostile", msgpack.packb({"v": PROTOCOL_VERSION, "commands": items})
    )
    assert reply["ok"] is True and len(reply["outcomes"]) == len(items)
    stored = sum(len(o["events"]) for o in reply["outcomes"] if o["ok"] and not o["duplicate"])
    refused = [o for o in reply["outcomes"] if not o["ok"]]
    assert all(o["error"]["code"] and o["error"]["message"] for o in refused)
    history = runtime.history("hostile")
    recorded = sum(1 for o in refused if o["error"].get("seq"))  # refusals stored for audit
    assert len(history) == len(before) + stored + recorded
    assert runtime.replay("hostile") == session.state


def test_more_commands_than_one_batch_holds_go_as_several(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    service: SessionService,
) -> None:
    runtime.session("s1").start()
    attaches = [("attach", {"agent_id": f"a{i}"}) for i in range(MAX_BATCH_COMMANDS + 44)]
    outcomes = with_client(
        nats_server.url, journal_config, lambda c: c.request_many("s1", attaches)
    )
    assert [o["seq"] for o in replies(outcomes)] == list(range(2, MAX_BATCH_COMMANDS + 46))
    assert service.handled == 2
